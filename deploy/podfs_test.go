package deploy_test

import (
	"io/fs"
	"path"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// podFS is the scanhook container's file system as the kubelet would lay it
// out from the rendered Deployment: ConfigMap and Secret volumes hold the
// keys of the rendered objects (or, for a Secret the chart does not create,
// an invented value for whatever key is asked for), and emptyDir/PVC mounts
// are writable folders. Checking the config against it catches a path in
// config.yaml that names a file the pod does not have.
type podFS struct {
	files    map[string][]byte
	external []externalMount
	writable []string
}

type externalMount struct {
	dir   string
	items map[string]bool // nil: any key
	value string
}

// externalSecretValue stands in for a key of a Secret made outside Helm.
const externalSecretValue = "external-secret-value-0123456789abcdef"

// postgresSecret is the DSN Secret the ci/ values files name, and
// externalDSN the value it stands for.
const (
	postgresSecret = "scanhook-postgres"
	externalDSN    = "postgres://scanhook:secret@db.example.internal:5432/scanhook?sslmode=verify-full"
)

func newPodFS(t *testing.T, r *rendered) *podFS {
	t.Helper()
	spec := r.Deployment.Spec.Template.Spec
	c := spec.Containers[0]
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	p := &podFS{files: map[string][]byte{}}
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" || m.SubPathExpr != "" {
			t.Errorf("volume %s is mounted with subPath: the kubelet never updates such a mount, so hot reload would not see changes", m.Name)
		}
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("volumeMount %s names no volume", m.Name)
		}
		switch {
		case v.ConfigMap != nil:
			if r.ConfigMap.Name != v.ConfigMap.Name {
				t.Fatalf("volume %s mounts ConfigMap %q, the chart renders %q", m.Name, v.ConfigMap.Name, r.ConfigMap.Name)
			}
			for k, val := range r.ConfigMap.Data {
				p.files[path.Join(m.MountPath, k)] = []byte(val)
			}
		case v.Secret != nil:
			items := map[string]string{} // key → file name
			for _, it := range v.Secret.Items {
				items[it.Key] = it.Path
			}
			if r.Secret != nil && r.Secret.Name == v.Secret.SecretName {
				for k, val := range r.Secret.Data {
					name := k
					if len(items) > 0 {
						if name = items[k]; name == "" {
							continue
						}
					}
					p.files[path.Join(m.MountPath, name)] = val
				}
				continue
			}
			em := externalMount{dir: m.MountPath, value: externalSecretValue}
			if len(items) > 0 {
				em.items = map[string]bool{}
				for _, name := range items {
					em.items[name] = true
				}
			}
			if v.Secret.SecretName == postgresSecret {
				em.value = externalDSN
			}
			p.external = append(p.external, em)
		case v.EmptyDir != nil || v.PersistentVolumeClaim != nil:
			if m.ReadOnly {
				t.Errorf("volume %s is writable storage but mounted read-only", m.Name)
			}
			p.writable = append(p.writable, m.MountPath)
		default:
			t.Errorf("volume %s: unexpected source", m.Name)
		}
	}
	return p
}

// ReadFile is what config.Secrets, config.StoreDSN and the loaders get.
func (p *podFS) ReadFile(name string) ([]byte, error) {
	if b, ok := p.files[name]; ok {
		return b, nil
	}
	for _, em := range p.external {
		if path.Dir(name) != em.dir {
			continue
		}
		if em.items == nil || em.items[path.Base(name)] {
			if em.value == externalSecretValue {
				// Each key of a real Secret holds its own value: two sources
				// may not share one (config refuses it).
				return []byte(em.value + "-" + path.Base(name)), nil
			}
			return []byte(em.value), nil
		}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// Writable reports whether dir is on a writable volume.
func (p *podFS) Writable(dir string) bool {
	for _, w := range p.writable {
		if dir == w || strings.HasPrefix(dir, w+"/") {
			return true
		}
	}
	return false
}
