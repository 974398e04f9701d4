package deploy_test

import (
	"bytes"
	"regexp"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor the
// chart writes. Decoding it strictly catches a misspelt field just as the
// k8s.io/api types do for the built-in kinds, without importing the operator.
type serviceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// rendered is one `helm template` output, decoded.
type rendered struct {
	ServiceAccount *corev1.ServiceAccount
	Secret         *corev1.Secret
	ConfigMap      *corev1.ConfigMap
	PVC            *corev1.PersistentVolumeClaim
	Service        *corev1.Service
	Deployment     *appsv1.Deployment
	PDB            *policyv1.PodDisruptionBudget
	HPA            *autoscalingv2.HorizontalPodAutoscaler
	NetworkPolicy  *networkingv1.NetworkPolicy
	Ingress        *networkingv1.Ingress
	ServiceMonitor *serviceMonitor
	// Kinds lists the kinds in output order.
	Kinds []string
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeManifests decodes every document strictly: an unknown or misplaced
// field, a wrong type or a duplicate key is an error, as the API server's
// strict field validation would report it. A kind the chart should not make,
// or the same kind twice, is an error too.
func decodeManifests(t *testing.T, out string) *rendered {
	t.Helper()
	r := &rendered{}
	for _, doc := range docSeparator.Split(out, -1) {
		if isEmptyDoc(doc) {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		var target any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ServiceAccount":
			target = set(t, &r.ServiceAccount)
		case "v1 Secret":
			target = set(t, &r.Secret)
		case "v1 ConfigMap":
			target = set(t, &r.ConfigMap)
		case "v1 PersistentVolumeClaim":
			target = set(t, &r.PVC)
		case "v1 Service":
			target = set(t, &r.Service)
		case "apps/v1 Deployment":
			target = set(t, &r.Deployment)
		case "policy/v1 PodDisruptionBudget":
			target = set(t, &r.PDB)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			target = set(t, &r.HPA)
		case "networking.k8s.io/v1 NetworkPolicy":
			target = set(t, &r.NetworkPolicy)
		case "networking.k8s.io/v1 Ingress":
			target = set(t, &r.Ingress)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			target = set(t, &r.ServiceMonitor)
		default:
			t.Fatalf("unexpected document %s %s:\n%s", tm.APIVersion, tm.Kind, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
			t.Fatalf("%s does not decode strictly into its API type: %v\n%s", tm.Kind, err, doc)
		}
		r.Kinds = append(r.Kinds, tm.Kind)
	}
	if r.Deployment == nil || r.ConfigMap == nil || r.Service == nil {
		t.Fatalf("a Deployment, a ConfigMap and a Service are always rendered; got %v", r.Kinds)
	}
	return r
}

// set allocates *p, failing on a second document of the same kind.
func set[T any](t *testing.T, p **T) *T {
	t.Helper()
	if *p != nil {
		t.Fatalf("two %T documents", *p)
	}
	*p = new(T)
	return *p
}

func isEmptyDoc(doc string) bool {
	for line := range bytes.Lines([]byte(doc)) {
		l := bytes.TrimSpace(line)
		if len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}
