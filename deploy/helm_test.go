package deploy_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chartDir is the chart under test, relative to this package.
const chartDir = "../charts/scanhook"

// kubeVersion is what `helm template` and `helm lint` render for: a helm
// built with `go install` reports Kubernetes 1.20 by default, which the
// chart's kubeVersion constraint refuses.
const kubeVersion = "1.32.0"

// helmBinary finds the helm CLI the way .ci/run installs it. Missing helm
// fails the test under CI (where it must have been installed) and skips it
// elsewhere, saying how to install it.
func helmBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	const msg = "helm not found in PATH or $(go env GOPATH)/bin: go install helm.sh/helm/v3/cmd/helm@v3.22.0"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// helm runs the helm CLI with a private home, so a developer's repositories
// and plugins cannot change the result, and returns stdout and stderr.
func helm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := helmBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "kubeconfig"),
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// writeValues writes an inline values file and returns its path.
func writeValues(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// templateArgs is `helm template` of the chart as release "sh" in namespace
// "secops" with the given values files.
func templateArgs(valuesFiles ...string) []string {
	args := []string{"template", "sh", chartDir, "--namespace", "secops", "--kube-version", kubeVersion}
	for _, f := range valuesFiles {
		args = append(args, "-f", f)
	}
	return args
}
