package deploy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/dispatch"
	"github.com/scanhook/scanhook/rules"
)

// ciValues is a values file under charts/scanhook/ci/.
func ciValues(name string) string { return filepath.Join(chartDir, "ci", name+"-values.yaml") }

// ciValueFiles lists every values file the chart ships for CI.
func ciValueFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no values files in %s/ci: %v", chartDir, err)
	}
	return files
}

func TestHelmLintStrict(t *testing.T) {
	t.Parallel()
	runs := [][]string{{"lint", "--strict", "--kube-version", kubeVersion, chartDir}}
	for _, f := range ciValueFiles(t) {
		runs = append(runs, []string{"lint", "--strict", "--kube-version", kubeVersion, chartDir, "-f", f})
	}
	for _, args := range runs {
		out, errOut, err := helm(t, args...)
		if err != nil || !strings.Contains(out, "0 chart(s) failed") {
			t.Errorf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
	}
}

// render runs helm template with the values files and decodes the result.
func render(t *testing.T, valuesFiles ...string) *rendered {
	t.Helper()
	out, errOut, err := helm(t, templateArgs(valuesFiles...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", valuesFiles, err, errOut)
	}
	return decodeManifests(t, out)
}

func TestTemplate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		files []string
		check func(t *testing.T, r *rendered, cfg *config.Config)
	}{
		{"defaults", nil, checkDefaults},
		{"workload-identity", []string{ciValues("workload-identity")}, checkWorkloadIdentity},
		{"client-secret", []string{ciValues("client-secret")}, checkClientSecret},
		{"postgres-3-replicas", []string{ciValues("postgres")}, checkPostgres},
		{"autoscaling", []string{ciValues("autoscaling")}, checkAutoscaling},
		{"ingress", []string{ciValues("ingress")}, checkIngress},
		{"network-policy", []string{ciValues("network-policy")}, checkNetworkPolicy},
	}
	// Every shipped values file has a case with its own assertions.
	covered := map[string]bool{}
	for _, c := range cases {
		for _, f := range c.files {
			covered[f] = true
		}
	}
	for _, f := range ciValueFiles(t) {
		if !covered[f] {
			t.Errorf("%s has no case in TestTemplate", f)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := render(t, c.files...)
			checkCommon(t, r)
			cfg := checkConfigLoads(t, r)
			c.check(t, r, cfg)
		})
	}
}

// checkCommon holds for every values file: the hardened pod, the probes,
// the wiring between Service, Deployment and ConfigMap.
func checkCommon(t *testing.T, r *rendered) {
	t.Helper()
	d := r.Deployment
	sel := d.Spec.Selector.MatchLabels
	pod := d.Spec.Template
	for k, v := range sel {
		if pod.Labels[k] != v {
			t.Errorf("pod labels %v do not carry selector label %s=%s", pod.Labels, k, v)
		}
	}
	if !mapsEqual(r.Service.Spec.Selector, sel) {
		t.Errorf("Service selects %v, Deployment pods are %v", r.Service.Spec.Selector, sel)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want 1 container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 8080 {
		t.Errorf("container ports %+v, want http 8080 (the config's listen)", c.Ports)
	}
	if len(r.Service.Spec.Ports) != 1 || r.Service.Spec.Ports[0].TargetPort.StrVal != "http" {
		t.Errorf("Service ports %+v, want one targeting http", r.Service.Spec.Ports)
	}

	// Hardening: non-root, read-only root, no capabilities, seccomp.
	psc, sc := pod.Spec.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatal("pod and container securityContext must both be set")
	}
	if !isTrue(psc.RunAsNonRoot) || !isTrue(sc.RunAsNonRoot) {
		t.Error("runAsNonRoot must be true")
	}
	if psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Error("runAsUser must be a non-zero uid")
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged must be false")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}
	for _, s := range []*corev1.SeccompProfile{psc.SeccompProfile, sc.SeccompProfile} {
		if s == nil || s.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("seccompProfile %+v, want RuntimeDefault", s)
		}
	}
	if !isFalse(pod.Spec.AutomountServiceAccountToken) {
		t.Error("the pod must not mount a Kubernetes API token (automountServiceAccountToken: false)")
	}

	// Probes on the service's own endpoints.
	probe := func(name string, p *corev1.Probe, want string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.StrVal != "http" {
			t.Errorf("%s probe %+v, want GET %s on port http", name, p, want)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("startup", c.StartupProbe, "/healthz")

	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[res]; !ok {
			t.Errorf("no %s request", res)
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Error("no memory limit")
	}
	if len(pod.Spec.TopologySpreadConstraints) == 0 {
		t.Error("no topologySpreadConstraints")
	}
	for _, tsc := range pod.Spec.TopologySpreadConstraints {
		if tsc.LabelSelector == nil || !mapsEqual(tsc.LabelSelector.MatchLabels, sel) {
			t.Errorf("topology spread %s selects %v, want the pods' %v", tsc.TopologyKey, tsc.LabelSelector, sel)
		}
	}

	// The config is mounted as a folder and the pod rolls when it changes.
	want := sha256.Sum256([]byte(strings.TrimSuffix(r.ConfigMap.Data["config.yaml"], "\n")))
	if got := pod.Annotations["checksum/config"]; got != hex.EncodeToString(want[:]) {
		t.Errorf("checksum/config is %q, want the sha256 of the rendered config.yaml", got)
	}
	if (r.Secret != nil) != (pod.Annotations["checksum/secret"] != "") {
		t.Errorf("checksum/secret must be set exactly when the chart renders the Secret")
	}
	if r.ServiceAccount != nil && !isFalse(r.ServiceAccount.AutomountServiceAccountToken) {
		t.Error("ServiceAccount must set automountServiceAccountToken: false")
	}
	if r.ServiceAccount != nil && r.ServiceAccount.Name != pod.Spec.ServiceAccountName {
		t.Errorf("pod runs as %q, chart creates ServiceAccount %q", pod.Spec.ServiceAccountName, r.ServiceAccount.Name)
	}
}

// checkConfigLoads runs the rendered config.yaml and rules.yaml through
// scanhook's own loaders, with every file read from where the pod mounts
// it, and returns the loaded config.
func checkConfigLoads(t *testing.T, r *rendered) *config.Config {
	t.Helper()
	pfs := newPodFS(t, r)
	c := r.Deployment.Spec.Template.Spec.Containers[0]
	if len(c.Args) != 3 || c.Args[0] != "serve" || c.Args[1] != "--config" {
		t.Fatalf("container args %q, want serve --config FILE", c.Args)
	}
	cfgFile := c.Args[2]
	data, err := pfs.ReadFile(cfgFile)
	if err != nil {
		t.Fatalf("--config %s is not in the pod: %v", cfgFile, err)
	}
	cfg, err := config.Parse(cfgFile, data)
	if err != nil {
		t.Fatalf("rendered config.yaml is refused by config.Parse:\n%v\n%s", err, data)
	}
	if cfg.Listen != ":8080" {
		t.Errorf("listen %q, want :8080 (the container port)", cfg.Listen)
	}
	ruleData, err := pfs.ReadFile(cfg.Rules)
	if err != nil {
		t.Fatalf("config rules: %s is not in the pod: %v", cfg.Rules, err)
	}
	if _, err := rules.Load(cfg.Rules, ruleData, rules.Options{}); err != nil {
		t.Fatalf("rendered rules.yaml is refused by rules.Load:\n%v\n%s", err, ruleData)
	}
	noEnv := func(string) string { return "" }
	secrets, err := cfg.Secrets(noEnv, pfs.ReadFile)
	if err != nil {
		t.Fatalf("source credentials as the pod would read them: %v", err)
	}
	if len(secrets) != len(cfg.Sources) {
		t.Errorf("%d sources, %d with credentials", len(cfg.Sources), len(secrets))
	}
	dsn, err := cfg.StoreDSN(noEnv, pfs.ReadFile)
	if err != nil {
		t.Fatalf("store DSN as the pod would read it: %v", err)
	}
	if cfg.Store.Driver == "sqlite" && !pfs.Writable(filepath.Dir(dsn)) {
		t.Errorf("the SQLite file %s is not on a writable volume", dsn)
	}
	if f := cfg.Defender.ClientSecretFile; f != "" {
		if _, err := pfs.ReadFile(f); err != nil {
			t.Errorf("defender.client_secret_file: %v", err)
		}
	}
	return cfg
}

func checkDefaults(t *testing.T, r *rendered, cfg *config.Config) {
	d := r.Deployment
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas %v, want 1", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %q, want Recreate: two pods must never hold the SQLite file at once", d.Spec.Strategy.Type)
	}
	if cfg.Store.Driver != "sqlite" {
		t.Errorf("store driver %q", cfg.Store.Driver)
	}
	if r.PVC == nil {
		t.Fatal("no PersistentVolumeClaim for the SQLite file")
	}
	if got := r.PVC.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "1Gi" {
		t.Errorf("PVC size %s, want 1Gi", got.String())
	}
	if !slices.Equal(r.PVC.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
		t.Errorf("PVC access modes %v", r.PVC.Spec.AccessModes)
	}
	claim := volume(t, d, "data").PersistentVolumeClaim
	if claim == nil || claim.ClaimName != r.PVC.Name {
		t.Errorf("data volume %+v does not use the PVC %s", claim, r.PVC.Name)
	}
	for name, doc := range map[string]bool{"PodDisruptionBudget": r.PDB != nil, "HorizontalPodAutoscaler": r.HPA != nil,
		"NetworkPolicy": r.NetworkPolicy != nil, "Ingress": r.Ingress != nil, "ServiceMonitor": r.ServiceMonitor != nil} {
		if doc {
			t.Errorf("%s rendered by default", name)
		}
	}
	if _, ok := d.Spec.Template.Labels["azure.workload.identity/use"]; ok {
		t.Error("workload identity label without workloadIdentity.enabled")
	}
	if cfg.Defender.Credential != defender.CredentialDefault {
		t.Errorf("credential %q, want default", cfg.Defender.Credential)
	}
	if r.Service.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service type %s, want ClusterIP", r.Service.Spec.Type)
	}
}

func checkWorkloadIdentity(t *testing.T, r *rendered, cfg *config.Config) {
	if got := r.ServiceAccount.Annotations["azure.workload.identity/client-id"]; got != "3f2b8c1e-5a4d-4e8f-9b6a-0c1d2e3f4a5b" {
		t.Errorf("ServiceAccount client-id annotation %q", got)
	}
	if got := r.ServiceAccount.Annotations["azure.workload.identity/tenant-id"]; got != "72f988bf-86f1-41af-91ab-2d7cd011db47" {
		t.Errorf("ServiceAccount tenant-id annotation %q", got)
	}
	if got := r.Deployment.Spec.Template.Labels["azure.workload.identity/use"]; got != "true" {
		t.Errorf(`pod label azure.workload.identity/use is %q, want "true"`, got)
	}
	if cfg.Defender.Credential != defender.CredentialWorkloadIdentity {
		t.Errorf("credential %q, want workload-identity", cfg.Defender.Credential)
	}
	if r.Secret != nil {
		t.Error("a Secret is rendered although existingSecret is set")
	}
	if s := volume(t, r.Deployment, "secrets").Secret; s == nil || s.SecretName != "scanhook-tokens" {
		t.Errorf("secrets volume %+v, want existingSecret scanhook-tokens", s)
	}
	if got := slices.Sorted(maps.Keys(cfg.Sources)); !slices.Equal(got, []string{"alertmanager", "elastic", "sentinel", "splunk"}) {
		t.Errorf("sources %v", got)
	}
	if cfg.Sources["splunk"].Auth.QueryTokenFile == "" || cfg.Sources["elastic"].Auth.HMACSecretFile == "" {
		t.Error("splunk query token or elastic HMAC secret lost in rendering")
	}
	if l := cfg.Sources["alertmanager"].Labels; l == nil || !slices.Equal(l.DNSNameLabels, []string{"instance", "host"}) {
		t.Errorf("alertmanager labels %+v", l)
	}
}

func checkClientSecret(t *testing.T, r *rendered, cfg *config.Config) {
	if cfg.Defender.Credential != defender.CredentialClientSecret || cfg.Defender.TenantID == "" || cfg.Defender.ClientID == "" {
		t.Errorf("defender %+v, want client-secret with tenant and client ids", cfg.Defender)
	}
	if r.Secret == nil {
		t.Fatal("no Secret rendered for `secrets`")
	}
	if got := string(r.Secret.Data["azure-client-secret"]); got != "abc8Q~not-a-real-client-secret-000000" {
		t.Errorf("Secret azure-client-secret = %q", got)
	}
	if cfg.Defender.ClientSecretFile != "/run/secrets/scanhook/azure-client-secret" {
		t.Errorf("client_secret_file %q", cfg.Defender.ClientSecretFile)
	}
	if _, ok := r.Deployment.Spec.Template.Labels["azure.workload.identity/use"]; ok {
		t.Error("workload identity label without workloadIdentity.enabled")
	}
	if v := volume(t, r.Deployment, "secrets").Secret; v == nil || v.SecretName != r.Secret.Name {
		t.Errorf("secrets volume %+v does not mount Secret %s", v, r.Secret.Name)
	}
}

func checkPostgres(t *testing.T, r *rendered, cfg *config.Config) {
	d := r.Deployment
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate == nil ||
		d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("strategy %+v, want a rolling update that keeps every replica up", d.Spec.Strategy)
	}
	if r.PVC != nil {
		t.Error("a PVC is rendered for PostgreSQL")
	}
	if cfg.Store.Driver != "postgres" || cfg.Store.DSN != "" || cfg.Store.DSNFile == "" {
		t.Errorf("store %+v, want postgres with dsn_file", cfg.Store)
	}
	dsn := volume(t, d, "store-dsn").Secret
	if dsn == nil || dsn.SecretName != postgresSecret || len(dsn.Items) != 1 || dsn.Items[0].Key != "dsn" {
		t.Errorf("store-dsn volume %+v, want key dsn of %s", dsn, postgresSecret)
	}
	if r.PDB == nil {
		t.Fatal("no PodDisruptionBudget")
	}
	if r.PDB.Spec.MinAvailable == nil || r.PDB.Spec.MinAvailable.IntValue() != 2 || r.PDB.Spec.MaxUnavailable != nil {
		t.Errorf("PDB %+v, want minAvailable 2 only", r.PDB.Spec)
	}
	if !mapsEqual(r.PDB.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("PDB selects %v", r.PDB.Spec.Selector.MatchLabels)
	}
}

func checkAutoscaling(t *testing.T, r *rendered, _ *config.Config) {
	if r.Deployment.Spec.Replicas != nil {
		t.Errorf("replicas %d set although the HPA owns the count", *r.Deployment.Spec.Replicas)
	}
	h := r.HPA
	if h == nil {
		t.Fatal("no HorizontalPodAutoscaler")
	}
	if h.Spec.ScaleTargetRef.Kind != "Deployment" || h.Spec.ScaleTargetRef.Name != r.Deployment.Name {
		t.Errorf("HPA targets %+v", h.Spec.ScaleTargetRef)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas != 2 || h.Spec.MaxReplicas != 5 {
		t.Errorf("HPA bounds %v..%d, want 2..5", h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	got := map[corev1.ResourceName]int32{}
	for _, m := range h.Spec.Metrics {
		got[m.Resource.Name] = *m.Resource.Target.AverageUtilization
	}
	if got[corev1.ResourceCPU] != 70 || got[corev1.ResourceMemory] != 80 || len(got) != 2 {
		t.Errorf("HPA metrics %v, want cpu 70%% and memory 80%%", got)
	}
	if r.PDB == nil || r.PDB.Spec.MaxUnavailable == nil || r.PDB.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB %+v, want the default maxUnavailable 1", r.PDB)
	}
	sm := r.ServiceMonitor
	if sm == nil {
		t.Fatal("no ServiceMonitor")
	}
	if sm.Metadata.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v lack serviceMonitor.labels", sm.Metadata.Labels)
	}
	if !mapsEqual(sm.Spec.Selector.MatchLabels, r.Service.Spec.Selector) || len(sm.Spec.Endpoints) != 1 ||
		sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor spec %+v, want /metrics on port http of the Service", sm.Spec)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{"secops"}) {
		t.Errorf("ServiceMonitor namespaces %v", sm.Spec.NamespaceSelector.MatchNames)
	}
	// Labels of the Service must carry the selector the ServiceMonitor uses.
	for k, v := range sm.Spec.Selector.MatchLabels {
		if r.Service.Labels[k] != v {
			t.Errorf("Service lacks label %s=%s the ServiceMonitor selects", k, v)
		}
	}
}

func checkIngress(t *testing.T, r *rendered, _ *config.Config) {
	in := r.Ingress
	if in == nil {
		t.Fatal("no Ingress")
	}
	if in.Spec.IngressClassName == nil || *in.Spec.IngressClassName != "nginx" {
		t.Errorf("ingressClassName %v", in.Spec.IngressClassName)
	}
	if len(in.Spec.TLS) != 1 || in.Spec.TLS[0].SecretName != "scanhook-tls" || !slices.Equal(in.Spec.TLS[0].Hosts, []string{"scanhook.example.com"}) {
		t.Errorf("TLS %+v", in.Spec.TLS)
	}
	if len(in.Spec.Rules) != 1 || in.Spec.Rules[0].Host != "scanhook.example.com" {
		t.Fatalf("rules %+v", in.Spec.Rules)
	}
	paths := in.Spec.Rules[0].HTTP.Paths
	if len(paths) != 1 || paths[0].Path != "/v1/webhooks" || paths[0].PathType == nil || *paths[0].PathType != networkingv1.PathTypePrefix {
		t.Errorf("paths %+v, want only the webhooks published", paths)
	}
	b := paths[0].Backend.Service
	if b == nil || b.Name != r.Service.Name || b.Port.Number != r.Service.Spec.Ports[0].Port {
		t.Errorf("backend %+v, want Service %s port %d", b, r.Service.Name, r.Service.Spec.Ports[0].Port)
	}
	if in.Annotations["cert-manager.io/cluster-issuer"] != "letsencrypt" {
		t.Errorf("annotations %v", in.Annotations)
	}
}

func checkNetworkPolicy(t *testing.T, r *rendered, _ *config.Config) {
	np := r.NetworkPolicy
	if np == nil {
		t.Fatal("no NetworkPolicy")
	}
	if !mapsEqual(np.Spec.PodSelector.MatchLabels, r.Deployment.Spec.Selector.MatchLabels) {
		t.Errorf("NetworkPolicy selects %v", np.Spec.PodSelector.MatchLabels)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("policyTypes %v, want both (so egress is denied by default)", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) != 1 {
		t.Fatalf("ingress rules %+v", np.Spec.Ingress)
	}
	var from []string
	for _, peer := range np.Spec.Ingress[0].From {
		if peer.NamespaceSelector == nil || peer.PodSelector != nil || peer.IPBlock != nil {
			t.Errorf("ingress peer %+v, want a namespace", peer)
			continue
		}
		from = append(from, peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"])
	}
	if !slices.Equal(from, []string{"ingress-nginx", "monitoring"}) {
		t.Errorf("ingress from %v, want exactly the configured namespaces", from)
	}
	if ports := np.Spec.Ingress[0].Ports; len(ports) != 1 || ports[0].Port.StrVal != "http" {
		t.Errorf("ingress ports %+v", ports)
	}
	// Egress: DNS to kube-dns and HTTPS to public addresses; nothing else.
	if len(np.Spec.Egress) != 2 {
		t.Fatalf("egress rules %+v, want DNS and HTTPS", np.Spec.Egress)
	}
	dns, https := np.Spec.Egress[0], np.Spec.Egress[1]
	if len(dns.To) != 1 || dns.To[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "kube-system" ||
		dns.To[0].PodSelector == nil || dns.To[0].PodSelector.MatchLabels["k8s-app"] != "kube-dns" {
		t.Errorf("DNS egress to %+v, want kube-dns in kube-system", dns.To)
	}
	var dnsPorts []string
	for _, p := range dns.Ports {
		dnsPorts = append(dnsPorts, string(*p.Protocol)+"/"+p.Port.String())
	}
	if !slices.Equal(dnsPorts, []string{"UDP/53", "TCP/53"}) {
		t.Errorf("DNS ports %v", dnsPorts)
	}
	if len(https.Ports) != 1 || https.Ports[0].Port.IntValue() != 443 {
		t.Errorf("HTTPS egress ports %+v, want 443 only", https.Ports)
	}
	if len(https.To) != 1 || https.To[0].IPBlock == nil || https.To[0].IPBlock.CIDR != "0.0.0.0/0" {
		t.Fatalf("HTTPS egress to %+v", https.To)
	}
	for _, private := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} {
		if !slices.Contains(https.To[0].IPBlock.Except, private) {
			t.Errorf("HTTPS egress does not exclude %s", private)
		}
	}
	// Prometheus can scrape it: the ServiceMonitor comes with this file.
	if r.ServiceMonitor == nil {
		t.Error("no ServiceMonitor")
	}
}

func volume(t *testing.T, d *appsv1.Deployment, name string) corev1.Volume {
	t.Helper()
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %q", name)
	return corev1.Volume{}
}

func isTrue(b *bool) bool  { return b != nil && *b }
func isFalse(b *bool) bool { return b != nil && !*b }

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestNotes renders NOTES.txt (which `helm template` leaves out) through a
// copy of the chart that includes it in a ConfigMap, and checks that it says
// how to send a first alert to each configured source.
func TestNotes(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "scanhook")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	const wrapper = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  NOTES.txt: |\n    {{- include \"scanhook/templates/NOTES.txt\" . | nindent 4 }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "zz-notes.yaml"), []byte(wrapper), 0o644); err != nil {
		t.Fatal(err)
	}
	notes := func(t *testing.T, values ...string) string {
		args := []string{"template", "sh", dir, "--namespace", "secops", "--kube-version", kubeVersion, "--show-only", "templates/zz-notes.yaml"}
		for _, v := range values {
			args = append(args, "-f", v)
		}
		out, errOut, err := helm(t, args...)
		if err != nil {
			t.Fatalf("NOTES.txt: %v\n%s", err, errOut)
		}
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict([]byte(out), &cm); err != nil {
			t.Fatal(err)
		}
		return cm.Data["NOTES.txt"]
	}
	cases := []struct {
		name   string
		values []string
		want   []string
		not    []string
	}{
		{"no sources", nil,
			[]string{"port-forward svc/sh-scanhook 8080:8080", "/readyz", "No alert source is configured yet"},
			[]string{"/v1/webhooks/"}},
		{"every kind of credential", []string{ciValues("workload-identity")},
			[]string{
				`-H "Authorization: Bearer $TOKEN"`, "http://127.0.0.1:8080/v1/webhooks/sentinel",
				`"http://127.0.0.1:8080/v1/webhooks/splunk?token=$TOKEN"`,
				"X-Scanhook-Signature: t=<unix time>,v1=<hex>",
				"get secret scanhook-tokens -o jsonpath='{.data.sentinel-token}'",
			},
			[]string{"No alert source", `"severity":"Informational"`}},
		{"defender sample", []string{ciValues("client-secret")},
			[]string{`"severity":"Informational"`, "/v1/webhooks/defender"}, nil},
		{"ingress", []string{ciValues("ingress")},
			[]string{"https://scanhook.example.com/v1/webhooks/<source>"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got := notes(t, c.values...)
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("NOTES.txt lacks %q:\n%s", w, got)
				}
			}
			for _, w := range c.not {
				if strings.Contains(got, w) {
					t.Errorf("NOTES.txt has %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestTerminationGracePeriod: Kubernetes must not kill a pod before it has
// stopped cleanly, which takes, one after the other, the preStop sleep,
// the HTTP drain (server.shutdown_timeout) and the dispatcher's stop
// (dispatch.MaxStopTime: attempts in flight, cancelled ones, handing jobs
// back). The expected value is worked out from the config the pod loads,
// not from the chart's values.
func TestTerminationGracePeriod(t *testing.T) {
	t.Parallel()
	const spare = 5 * time.Second
	dispatcherStop := dispatch.MaxStopTime
	cases := []struct {
		name   string
		values string
		want   int64 // 0: the derived sum
	}{
		{"defaults", "", 0},
		{"longer drain and no preStop", "preStopSleepSeconds: 0\nconfig: {server: {shutdown_timeout: 1m30.5s}}\n", 0},
		{"sub-second drain", "preStopSleepSeconds: 12\nconfig: {server: {shutdown_timeout: 1500ms}}\n", 0},
		{"set above the sum", "terminationGracePeriodSeconds: 120\n", 120},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := render(t, writeValues(t, c.values))
			cfg := checkConfigLoads(t, r)
			pod := r.Deployment.Spec.Template.Spec
			var preStop time.Duration
			if l := pod.Containers[0].Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
				preStop = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
			}
			need := preStop + cfg.Server.ShutdownTimeout + dispatcherStop + spare
			needSeconds := int64((need + time.Second - 1) / time.Second)
			want := c.want
			if want == 0 {
				want = needSeconds
			}
			got := pod.TerminationGracePeriodSeconds
			if got == nil || *got != want {
				t.Fatalf("terminationGracePeriodSeconds %v, want %d (preStop %s + shutdown_timeout %s + dispatcher %s + %s)",
					got, want, preStop, cfg.Server.ShutdownTimeout, dispatcherStop, spare)
			}
			if *got < needSeconds {
				t.Errorf("terminationGracePeriodSeconds %d is below the %d s a pod needs to stop", *got, needSeconds)
			}
		})
	}
	if got := render(t).Deployment.Spec.Template.Spec.TerminationGracePeriodSeconds; got == nil || *got != 55 {
		t.Errorf("default terminationGracePeriodSeconds %v, want 55 as values.yaml says", got)
	}

	refused := []struct{ name, values, want string }{
		{"set below the sum", "terminationGracePeriodSeconds: 40\n",
			"terminationGracePeriodSeconds is 40 but a pod needs 55 to stop cleanly"},
		{"below a longer drain", "terminationGracePeriodSeconds: 60\nconfig: {server: {shutdown_timeout: 1m}}\n",
			"terminationGracePeriodSeconds is 60 but a pod needs 95 to stop cleanly"},
		{"not a Go duration", "config: {server: {shutdown_timeout: 1d}}\n",
			`"1d" is not a Go duration`},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, errOut, err := helm(t, templateArgs(writeValues(t, c.values))...)
			if err == nil || !strings.Contains(errOut, c.want) {
				t.Errorf("helm template: err %v, want an error with %q:\n%s", err, c.want, errOut)
			}
		})
	}
}
