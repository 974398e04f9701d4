package deploy_test

import (
	"strings"
	"testing"
)

// TestTemplateRefuses: values that would deploy something broken or unsafe
// fail `helm template` (and so `helm install`) with a message that says what
// to change.
func TestTemplateRefuses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		values string
		want   []string // all must appear in helm's error
	}{
		{"replicas on sqlite", `replicaCount: 3`,
			[]string{"replicaCount is 3 but store.driver is sqlite", "store.driver=postgres"}},
		{"autoscaling on sqlite", `autoscaling: {enabled: true}`,
			[]string{"autoscaling.enabled needs store.driver=postgres"}},
		{"wrong type", `replicaCount: "three"`,
			[]string{"replicaCount", "string", "integer"}},
		{"wrong type nested", `persistence: {enabled: "yes"}`,
			[]string{"persistence", "enabled", "boolean"}},
		{"unknown top-level key", `replicas: 3`,
			[]string{"replicas"}},
		{"unknown nested key", `serviceAccount: {annotation: {a: b}}`,
			[]string{"serviceAccount", "annotation"}},
		{"unknown config key", "config:\n  sources:\n    sentinel:\n      auth: {token_file: /run/secrets/scanhook/x}\n",
			[]string{"token_file"}},
		{"unknown source", "config:\n  sources:\n    sentinal:\n      auth: {bearer_token_file: /run/secrets/scanhook/x}\n",
			[]string{"sentinal"}},
		{"bad rule scan", "rules:\n  rules:\n    - {name: a, scan: Fast}\n",
			[]string{"/rules/rules/0/scan", "Quick"}},
		{"writable root file system", `securityContext: {readOnlyRootFilesystem: false}`,
			[]string{"readOnlyRootFilesystem"}},
		{"postgres without its secret", `store: {driver: postgres}`,
			[]string{"store.postgres.existingSecret"}},
		{"workload identity without client id", `workloadIdentity: {enabled: true}`,
			[]string{"workloadIdentity.clientId"}},
		{"workload identity with another credential",
			"workloadIdentity: {enabled: true, clientId: 3f2b8c1e-5a4d-4e8f-9b6a-0c1d2e3f4a5b}\nconfig: {defender: {credential: client-secret}}\n",
			[]string{`config.defender.credential is "client-secret"`}},
		{"ingress without TLS", `ingress: {enabled: true}`,
			[]string{"ingress.tls"}},
		{"network policy open to nobody", `networkPolicy: {enabled: true}`,
			[]string{"networkPolicy.ingress.namespaces"}},
		{"network policy without the database",
			"networkPolicy: {enabled: true, ingress: {namespaces: [ingress-nginx]}}\nstore: {driver: postgres, postgres: {existingSecret: pg}}\n",
			[]string{"networkPolicy.egress.postgres"}},
		{"token file with no secret",
			"config:\n  sources:\n    sentinel:\n      auth: {bearer_token_file: /run/secrets/scanhook/sentinel-token}\n",
			[]string{"config.sources.sentinel.auth.bearer_token_file", "secrets.sentinel-token"}},
		{"token file outside the secret mount",
			"config:\n  sources:\n    sentinel:\n      auth: {bearer_token_file: /run/secrets/sentinel-token}\nsecrets: {sentinel-token: 0123456789abcdef0123}\n",
			[]string{"config.sources.sentinel.auth.bearer_token_file", "/run/secrets/scanhook/<key>"}},
		{"store in config", "config: {store: {driver: postgres}}\n",
			[]string{"config.store is set by the chart"}},
		{"both PDB bounds", `podDisruptionBudget: {enabled: true, minAvailable: 1, maxUnavailable: 1}`,
			[]string{"minAvailable or maxUnavailable, not both"}},
		{"secrets and existingSecret", "existingSecret: x\nsecrets: {a: b}\n",
			[]string{"secrets or existingSecret, not both"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, err := helm(t, templateArgs(writeValues(t, c.values))...)
			if err == nil {
				t.Fatalf("accepted:\n%s", c.values)
			}
			if out != "" {
				t.Errorf("printed manifests although it failed")
			}
			for _, w := range c.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("error does not mention %q:\n%s", w, errOut)
				}
			}
		})
	}
}
