package deploy_test

import (
	"bytes"
	"encoding/json"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"

	yaml "go.yaml.in/yaml/v3"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
)

// docs/sources.md holds the sender examples and docs/deploy.md the deploy
// walk-through; the tests read them there so what users copy is what is
// tested.
const (
	connectDoc = "../docs/sources.md"
	deployDoc  = "../docs/deploy.md"
)

var exampleMarker = regexp.MustCompile(`<!-- example:([a-z0-9-]+):begin -->`)

// docExamples returns the fenced code blocks between
// <!-- example:NAME:begin --> and <!-- example:NAME:end --> markers.
func docExamples(t *testing.T, file string) map[string]string {
	t.Helper()
	doc := readText(t, file)
	out := map[string]string{}
	for _, m := range exampleMarker.FindAllStringSubmatch(doc, -1) {
		name := m[1]
		out[name] = fenced(t, file, doc, "<!-- example:"+name+":begin -->", "<!-- example:"+name+":end -->")
	}
	return out
}

// fenced returns the code block between two markers.
func fenced(t *testing.T, file, doc, begin, end string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, begin)
	if !ok {
		t.Fatalf("%s: marker %s not found", file, begin)
	}
	block, _, ok := strings.Cut(rest, end)
	if !ok {
		t.Fatalf("%s: marker %s not found", file, end)
	}
	block = strings.TrimSpace(block)
	first, body, ok := strings.Cut(block, "\n")
	if !ok || !strings.HasPrefix(first, "```") || !strings.HasSuffix(body, "```") {
		t.Fatalf("%s: %s must hold exactly one fenced code block", file, begin)
	}
	return strings.TrimSuffix(body, "```")
}

func readText(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// webhookSource checks a sender's URL and returns the source it posts to.
func webhookSource(t *testing.T, raw string) (string, url.Values) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("URL %q: %v", raw, err)
	}
	dir, src := path.Split(u.Path)
	if dir != "/v1/webhooks/" || !slices.Contains(domain.Sources(), src) {
		t.Fatalf("URL %q does not post to /v1/webhooks/{source}", raw)
	}
	return src, u.Query()
}

// decode runs a body through the real decoder and checks every alert is
// usable: an id, and a device unless the alert is marked skip.
func decode(t *testing.T, source string, body []byte, opts alert.Options) []alert.Alert {
	t.Helper()
	alerts, err := alert.Decode(source, body, opts)
	if err != nil {
		t.Fatalf("%s decoder refuses the documented body: %v\n%s", source, err, body)
	}
	if len(alerts) == 0 {
		t.Fatalf("%s: the documented body holds no alert", source)
	}
	for _, a := range alerts {
		if a.ID == "" || (len(a.Devices) == 0 && a.Skip == "") {
			t.Errorf("%s alert %q: no device to scan (dropped %v)", source, a.ID, a.Dropped)
		}
	}
	return alerts
}

func wantDevice(t *testing.T, a alert.Alert, want alert.Device) {
	t.Helper()
	if !slices.Contains(a.Devices, want) {
		t.Errorf("alert %s: devices %+v, want %+v among them", a.ID, a.Devices, want)
	}
}

// logicAppHTTP is the part of a Logic App HTTP action the examples set.
type logicAppHTTP struct {
	Type   string `json:"type"`
	Inputs struct {
		Method  string            `json:"method"`
		URI     string            `json:"uri"`
		Headers map[string]string `json:"headers"`
		Body    string            `json:"body"`
	} `json:"inputs"`
	RuntimeConfiguration struct {
		SecureData struct {
			Properties []string `json:"properties"`
		} `json:"secureData"`
	} `json:"runtimeConfiguration"`
}

var bearerParam = regexp.MustCompile(`^Bearer @\{parameters\('[A-Za-z]+'\)\}$`)

// forwardAction checks a Logic App action that posts to scanhook and
// returns its source and its body expression.
func forwardAction(t *testing.T, raw json.RawMessage) (source, body string) {
	t.Helper()
	var a logicAppHTTP
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatal(err)
	}
	if a.Type != "Http" || a.Inputs.Method != "POST" {
		t.Errorf("action %s %s, want an Http POST", a.Type, a.Inputs.Method)
	}
	if !bearerParam.MatchString(a.Inputs.Headers["Authorization"]) || a.Inputs.Headers["Content-Type"] != "application/json" {
		t.Errorf("headers %v, want a bearer token from a parameter and JSON", a.Inputs.Headers)
	}
	if !slices.Contains(a.RuntimeConfiguration.SecureData.Properties, "inputs") {
		t.Error("the token would show in the run history: secureData must cover inputs")
	}
	source, _ = webhookSource(t, a.Inputs.URI)
	return source, a.Inputs.Body
}

// logicAppEval evaluates the one Logic App expression the forwarding
// actions use as their body: the whole value of a trigger or action output.
func logicAppEval(t *testing.T, expr string, values map[string][]byte) []byte {
	t.Helper()
	v, ok := values[expr]
	if !ok {
		t.Fatalf("body expression %q is not one the test knows; the doc changed", expr)
	}
	return v
}

func TestConnectSourcesExamples(t *testing.T) {
	ex := docExamples(t, connectDoc)
	tested := map[string]bool{}
	get := func(name string) string {
		t.Helper()
		tested[name] = true
		s, ok := ex[name]
		if !ok {
			t.Fatalf("%s: example %q is gone", connectDoc, name)
		}
		return s
	}

	t.Run("sources config", func(t *testing.T) {
		var v struct {
			Config yaml.Node `yaml:"config"`
		}
		if err := yaml.Unmarshal([]byte(get("sources-config")), &v); err != nil {
			t.Fatal(err)
		}
		data, err := yaml.Marshal(&v.Config)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Parse("docs/sources.md", data)
		if err != nil {
			t.Fatalf("the documented config.sources is refused: %v", err)
		}
		if len(cfg.Sources) != 7 {
			t.Errorf("%d sources, want every example's", len(cfg.Sources))
		}
	})

	t.Run("sentinel logic app", func(t *testing.T) {
		var actions map[string]json.RawMessage
		if err := json.Unmarshal([]byte(get("sentinel-logic-app")), &actions); err != nil {
			t.Fatal(err)
		}
		src, expr := forwardAction(t, actions["Send_to_scanhook"])
		if src != "sentinel" {
			t.Errorf("posts to %s", src)
		}
		incident := decode(t, src, logicAppEval(t, expr, map[string][]byte{"@triggerBody()": []byte(get("sentinel-incident-body"))}), alert.Options{})
		if len(incident) != 1 || incident[0].Severity != domain.SeverityHigh {
			t.Fatalf("incident: %+v", incident)
		}
		wantDevice(t, incident[0], alert.Device{ID: "95ffd3240bde37ef347cf836db74b13f85cbf185", DNSName: "ws-0142.corp.example.com"})
		alerts := decode(t, src, logicAppEval(t, expr, map[string][]byte{"@triggerBody()": []byte(get("sentinel-alert-body"))}), alert.Options{})
		if len(alerts) != 1 || alerts[0].Severity != domain.SeverityMedium {
			t.Fatalf("alert trigger: %+v", alerts)
		}
		wantDevice(t, alerts[0], alert.Device{ID: "cccccccccccccccccccccccccccccccccccccccc", DNSName: "laptop-7.corp.example.com"})
	})

	forwarder := func(t *testing.T, actions map[string]json.RawMessage, wantSource, wantAPI, sample string) []alert.Alert {
		t.Helper()
		var list logicAppHTTP
		if err := json.Unmarshal(actions["List_new_alerts"], &list); err != nil {
			t.Fatal(err)
		}
		if list.Inputs.Method != "GET" || !strings.HasPrefix(list.Inputs.URI, wantAPI) {
			t.Errorf("List_new_alerts: %s %s, want GET %s", list.Inputs.Method, list.Inputs.URI, wantAPI)
		}
		src, expr := forwardAction(t, actions["Forward_to_scanhook"])
		if src != wantSource {
			t.Errorf("posts to %s, want %s", src, wantSource)
		}
		// What the GET returns: the API's list response.
		listBody := readSample(t, sample)
		if !bytes.Contains(listBody, []byte(`"value"`)) {
			var b bytes.Buffer
			b.WriteString(`{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2","value":[`)
			b.Write(listBody)
			b.WriteString(`]}`)
			listBody = b.Bytes()
		}
		return decode(t, src, logicAppEval(t, expr, map[string][]byte{"@body('List_new_alerts')": listBody}), alert.Options{})
	}

	t.Run("graph logic app", func(t *testing.T) {
		var wf struct {
			Definition struct {
				Triggers map[string]json.RawMessage `json:"triggers"`
				Actions  map[string]json.RawMessage `json:"actions"`
			} `json:"definition"`
		}
		if err := json.Unmarshal([]byte(get("graph-logic-app")), &wf); err != nil {
			t.Fatal(err)
		}
		if len(wf.Definition.Triggers) != 1 {
			t.Errorf("triggers %v", wf.Definition.Triggers)
		}
		got := forwarder(t, wf.Definition.Actions, "graph", "https://graph.microsoft.com/v1.0/security/alerts_v2", "graph-alert-v2.json")
		wantDevice(t, got[0], alert.Device{ID: "73e7e2de709dff64ef64b1d0c30e67fab63279db", DNSName: "tempdns"})
	})

	t.Run("defender logic app", func(t *testing.T) {
		var actions map[string]json.RawMessage
		if err := json.Unmarshal([]byte(get("defender-logic-app")), &actions); err != nil {
			t.Fatal(err)
		}
		got := forwarder(t, actions, "defender", "https://api.securitycenter.microsoft.com/api/alerts", "mde-alerts-list.json")
		wantDevice(t, got[0], alert.Device{ID: "12ee6dd8c833c8a052ea231ec1b19adaf497b625", DNSName: "temp123.middleeast.corp.microsoft.com"})
	})

	t.Run("splunk", func(t *testing.T) {
		var hookURL string
		for line := range strings.Lines(get("splunk-savedsearch")) {
			if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == "action.webhook.param.url" {
				hookURL = strings.TrimSpace(v)
			}
		}
		src, q := webhookSource(t, hookURL)
		if src != "splunk" || q.Get("token") == "" {
			t.Errorf("Splunk URL %q: want /v1/webhooks/splunk with ?token=", hookURL)
		}
		got := decode(t, src, []byte(get("splunk-body")), alert.Options{})
		if got[0].Severity != domain.SeverityHigh || got[0].Title != "EDR - Malware on endpoint" {
			t.Errorf("splunk alert %+v", got[0])
		}
		wantDevice(t, got[0], alert.Device{ID: "95ffd3240bde37ef347cf836db74b13f85cbf185", DNSName: "ws-0142.corp.example.com"})
	})

	t.Run("kibana", func(t *testing.T) {
		var kb struct {
			XPack map[string]struct {
				Name         string `yaml:"name"`
				ActionTypeID string `yaml:"actionTypeId"`
				Config       struct {
					URL     string            `yaml:"url"`
					Method  string            `yaml:"method"`
					Headers map[string]string `yaml:"headers"`
				} `yaml:"config"`
			} `yaml:"xpack.actions.preconfigured"`
		}
		dec := yaml.NewDecoder(strings.NewReader(get("kibana-connector")))
		dec.KnownFields(true)
		if err := dec.Decode(&kb); err != nil {
			t.Fatal(err)
		}
		c := kb.XPack["scanhook"]
		if c.ActionTypeID != ".webhook" || c.Config.Method != "post" || !strings.HasPrefix(c.Config.Headers["Authorization"], "Bearer ") {
			t.Errorf("connector %+v", c)
		}
		if src, _ := webhookSource(t, c.Config.URL); src != "elastic" {
			t.Errorf("posts to %s", src)
		}
		// The body template the page publishes, which the alert package's
		// own test (TestElasticTemplateInDoc) renders too.
		tmpl := fenced(t, connectDoc, readText(t, connectDoc), "<!-- elastic-template:begin -->", "<!-- elastic-template:end -->")
		body := testutil.RenderKibana(t, tmpl, readFile(t, "../internal/alert/testdata/elastic-context.json"))
		got := decode(t, "elastic", body, alert.Options{})
		if len(got) != 2 {
			t.Fatalf("%d alerts from the two-alert context", len(got))
		}
		wantDevice(t, got[0], alert.Device{DNSName: "ws-20.corp.example.com"})
	})

	t.Run("alertmanager", func(t *testing.T) {
		var am struct {
			Route     map[string]any `yaml:"route"`
			Receivers []struct {
				Name           string `yaml:"name"`
				WebhookConfigs []struct {
					URL          string `yaml:"url"`
					SendResolved bool   `yaml:"send_resolved"`
					MaxAlerts    int    `yaml:"max_alerts"`
					HTTPConfig   struct {
						Authorization struct {
							Type            string `yaml:"type"`
							CredentialsFile string `yaml:"credentials_file"`
						} `yaml:"authorization"`
					} `yaml:"http_config"`
				} `yaml:"webhook_configs"`
			} `yaml:"receivers"`
		}
		dec := yaml.NewDecoder(strings.NewReader(get("alertmanager-config")))
		dec.KnownFields(true)
		if err := dec.Decode(&am); err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, r := range am.Receivers {
			for _, w := range r.WebhookConfigs {
				found = true
				if src, _ := webhookSource(t, w.URL); src != "alertmanager" {
					t.Errorf("posts to %s", src)
				}
				if a := w.HTTPConfig.Authorization; a.Type != "Bearer" || a.CredentialsFile == "" {
					t.Errorf("authorization %+v, want a Bearer credentials_file", a)
				}
			}
		}
		if !found {
			t.Fatal("no webhook_configs")
		}
		got := decode(t, "alertmanager", []byte(get("alertmanager-body")), alert.Options{})
		if got[0].Severity != domain.SeverityCritical {
			t.Errorf("severity %s", got[0].Severity)
		}
		wantDevice(t, got[0], alert.Device{ID: "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567", DNSName: "build-07.corp.example.com"})
	})

	t.Run("azure monitor", func(t *testing.T) {
		var ag struct {
			Name                 string `json:"name"`
			ServiceURI           string `json:"serviceUri"`
			UseCommonAlertSchema bool   `json:"useCommonAlertSchema"`
		}
		dec := json.NewDecoder(strings.NewReader(get("azuremonitor-webhook")))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ag); err != nil {
			t.Fatal(err)
		}
		src, q := webhookSource(t, ag.ServiceURI)
		if src != "azuremonitor" || q.Get("token") == "" || !ag.UseCommonAlertSchema {
			t.Errorf("action group webhook %+v", ag)
		}
		got := decode(t, src, []byte(get("azuremonitor-body")), alert.Options{})
		if got[0].Severity != domain.SeverityHigh || got[0].Skip != "" {
			t.Errorf("azure monitor alert %+v", got[0])
		}
		// The custom property, from alertContext.properties, names the
		// only device: the Computer dimension is not a second one.
		wantDevice(t, got[0], alert.Device{ID: "5b6a7d8e9f0112233445566778899aabbccddeef"})
		if len(got[0].Devices) != 1 {
			t.Errorf("devices %+v, want the custom property's only", got[0].Devices)
		}
	})

	for name := range ex {
		if !tested[name] {
			t.Errorf("%s: example %q has no check in this test", connectDoc, name)
		}
	}
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readSample(t *testing.T, name string) []byte {
	t.Helper()
	return readFile(t, filepath.Join("..", "testdata", "samples", name))
}

// TestDeployDocValues renders each values file docs/deploy.md shows with the
// real chart, so the documented install is one the chart accepts and whose
// config scanhook loads.
func TestDeployDocValues(t *testing.T) {
	t.Parallel()
	const file = deployDoc
	doc := readText(t, file)
	for _, c := range []struct {
		name  string
		check func(t *testing.T, r *rendered, cfg *config.Config)
	}{
		{"aks", func(t *testing.T, r *rendered, cfg *config.Config) {
			if r.Ingress == nil || r.NetworkPolicy == nil || r.ServiceAccount.Annotations["azure.workload.identity/client-id"] == "" {
				t.Errorf("the AKS values lost the Ingress, the NetworkPolicy or the workload identity: %v", r.Kinds)
			}
			if !cfg.Defender.DryRun || cfg.Defender.Credential != "workload-identity" {
				t.Errorf("defender %+v, want a dry run with workload identity", cfg.Defender)
			}
		}},
		{"postgres", func(t *testing.T, r *rendered, cfg *config.Config) {
			if *r.Deployment.Spec.Replicas != 3 || cfg.Store.Driver != "postgres" || r.PDB == nil {
				t.Errorf("replicas %d, store %s, PDB %v", *r.Deployment.Spec.Replicas, cfg.Store.Driver, r.PDB != nil)
			}
		}},
		{"client-secret", func(t *testing.T, r *rendered, cfg *config.Config) {
			if cfg.Defender.Credential != "client-secret" || cfg.Defender.ClientSecretFile == "" {
				t.Errorf("defender %+v", cfg.Defender)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			values := fenced(t, file, doc, "<!-- values:"+c.name+":begin -->", "<!-- values:"+c.name+":end -->")
			r := render(t, writeValues(t, values))
			checkCommon(t, r)
			c.check(t, r, checkConfigLoads(t, r))
		})
	}
}
