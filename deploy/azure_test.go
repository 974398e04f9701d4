package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/config"
)

// armTemplate is the part of an ARM template the tests look at.
type armTemplate struct {
	Schema     string                     `json:"$schema"`
	Parameters map[string]json.RawMessage `json:"parameters"`
	Resources  []armResource              `json:"resources"`
	Outputs    map[string]json.RawMessage `json:"outputs"`
}

type armResource struct {
	Type       string          `json:"type"`
	Name       string          `json:"name"`
	Identity   map[string]any  `json:"identity"`
	Properties json.RawMessage `json:"properties"`
}

func readTemplate(t *testing.T, path string) (armTemplate, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	var tpl armTemplate
	if err := dec.Decode(&tpl); err != nil {
		t.Fatalf("%s is not valid JSON: %v", path, err)
	}
	if !strings.HasPrefix(tpl.Schema, "https://schema.management.azure.com/schemas/") || !strings.Contains(tpl.Schema, "deploymentTemplate.json") {
		t.Fatalf("%s: $schema %q is not an ARM deployment template", path, tpl.Schema)
	}
	return tpl, string(b)
}

// checkParameters: every parameter is used, and every one used is declared.
func checkParameters(t *testing.T, path string, tpl armTemplate, raw string) {
	t.Helper()
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`parameters\('([A-Za-z0-9_]+)'\)`).FindAllStringSubmatch(raw, -1) {
		used[m[1]] = true
	}
	for name := range tpl.Parameters {
		if !used[name] {
			t.Errorf("%s: parameter %s is declared but never used", path, name)
		}
	}
	for name := range used {
		if _, ok := tpl.Parameters[name]; !ok {
			t.Errorf("%s: parameters('%s') is used but not declared", path, name)
		}
	}
}

// TestSentinelLogicAppTemplate checks the Logic App that forwards Sentinel
// incidents: a Sentinel incident trigger, then an HTTP POST of the
// incident to scanhook authenticated by the Logic App's managed identity
// for scanhook's audience.
func TestSentinelLogicAppTemplate(t *testing.T) {
	const path = "azure/sentinel-logic-app.json"
	tpl, raw := readTemplate(t, path)
	checkParameters(t, path, tpl, raw)
	var wf *armResource
	for i, r := range tpl.Resources {
		if r.Type == "Microsoft.Logic/workflows" {
			wf = &tpl.Resources[i]
		}
	}
	if wf == nil {
		t.Fatal("no Microsoft.Logic/workflows resource")
	}
	if wf.Identity["type"] != "SystemAssigned" {
		t.Errorf("the workflow's identity is %v, want SystemAssigned (the managed identity that gets the token)", wf.Identity)
	}
	var props struct {
		Definition struct {
			Triggers map[string]struct {
				Type   string `json:"type"`
				Inputs struct {
					Path string `json:"path"`
					Host struct {
						Connection struct {
							Name string `json:"name"`
						} `json:"connection"`
					} `json:"host"`
				} `json:"inputs"`
			} `json:"triggers"`
			Actions map[string]struct {
				Type   string `json:"type"`
				Inputs struct {
					Method         string            `json:"method"`
					URI            string            `json:"uri"`
					Body           string            `json:"body"`
					Headers        map[string]string `json:"headers"`
					Authentication map[string]string `json:"authentication"`
				} `json:"inputs"`
			} `json:"actions"`
		} `json:"definition"`
		Parameters struct {
			Connections struct {
				Value map[string]struct {
					ConnectionProperties struct {
						Authentication map[string]string `json:"authentication"`
					} `json:"connectionProperties"`
				} `json:"value"`
			} `json:"$connections"`
		} `json:"parameters"`
	}
	if err := json.Unmarshal(wf.Properties, &props); err != nil {
		t.Fatal(err)
	}
	trig, ok := props.Definition.Triggers["Microsoft_Sentinel_incident"]
	if !ok || len(props.Definition.Triggers) != 1 {
		t.Fatalf("triggers %v, want the one Sentinel incident trigger", props.Definition.Triggers)
	}
	if trig.Type != "ApiConnectionWebhook" || trig.Inputs.Path != "/incident-creation" || !strings.Contains(trig.Inputs.Host.Connection.Name, "['azuresentinel']") {
		t.Errorf("trigger %+v is not Sentinel's incident-creation webhook", trig)
	}
	if props.Parameters.Connections.Value["azuresentinel"].ConnectionProperties.Authentication["type"] != "ManagedServiceIdentity" {
		t.Error("the Sentinel connection does not use the managed identity")
	}
	var https []string
	for name, a := range props.Definition.Actions {
		if a.Type != "Http" {
			continue
		}
		https = append(https, name)
		in := a.Inputs
		if in.Method != "POST" || in.URI != "[parameters('scanhookWebhookUrl')]" || in.Body != "@triggerBody()" || in.Headers["Content-Type"] != "application/json" {
			t.Errorf("HTTP action %s: %+v", name, in)
		}
		want := map[string]string{"type": "ManagedServiceIdentity", "audience": "[parameters('scanhookAudience')]"}
		if len(in.Authentication) != len(want) || in.Authentication["type"] != want["type"] || in.Authentication["audience"] != want["audience"] {
			t.Errorf("HTTP action %s authentication %v, want %v", name, in.Authentication, want)
		}
	}
	if len(https) != 1 {
		t.Fatalf("HTTP actions %v, want one", https)
	}
	if _, ok := tpl.Outputs["principalId"]; !ok {
		t.Error("no principalId output: the role assignment needs the identity's object id")
	}
}

// TestActionGroupTemplate checks the secure webhook: Entra ID auth on,
// the common alert schema scanhook decodes, scanhook's app and audience.
func TestActionGroupTemplate(t *testing.T) {
	const path = "azure/action-group.json"
	tpl, raw := readTemplate(t, path)
	checkParameters(t, path, tpl, raw)
	if len(tpl.Resources) != 1 || tpl.Resources[0].Type != "Microsoft.Insights/actionGroups" {
		t.Fatalf("resources %+v", tpl.Resources)
	}
	var props struct {
		WebhookReceivers []map[string]any `json:"webhookReceivers"`
	}
	if err := json.Unmarshal(tpl.Resources[0].Properties, &props); err != nil {
		t.Fatal(err)
	}
	if len(props.WebhookReceivers) != 1 {
		t.Fatalf("webhook receivers %v", props.WebhookReceivers)
	}
	w := props.WebhookReceivers[0]
	for k, v := range map[string]any{
		"useAadAuth": true, "useCommonAlertSchema": true,
		"serviceUri":    "[parameters('scanhookWebhookUrl')]",
		"objectId":      "[parameters('scanhookAppObjectId')]",
		"identifierUri": "[parameters('scanhookAudience')]",
		"tenantId":      "[parameters('tenantId')]",
	} {
		if w[k] != v {
			t.Errorf("webhook receiver %s = %v, want %v", k, w[k], v)
		}
	}
}

// TestAppRegistrationScript: the script parses, grants the app role the
// templates rely on, and prints config that scanhook loads.
func TestAppRegistrationScript(t *testing.T) {
	const path = "azure/app-registration.sh"
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("bash -n %s: %v\n%s", path, err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	script := string(b)
	for _, want := range []string{"--identifier-uris", "allowedMemberTypes: [\"Application\"]", "appRoleAssignmentRequired=true", "/appRoleAssignments", "Alerts.Submit"} {
		if !strings.Contains(script, want) {
			t.Errorf("%s lacks %q", path, want)
		}
	}
	// The printed YAML, with the shell variables filled in, is valid config.
	_, after, ok := strings.Cut(script, "sources:\nYAML")
	if !ok {
		t.Fatalf("%s prints no sources: block", path)
	}
	yaml := "sources:\nYAML" + after
	var blocks []string
	for _, m := range regexp.MustCompile(`(?s)cat <<YAML\n(.*?)\nYAML`).FindAllStringSubmatch(yaml, -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) != 2 {
		t.Fatalf("want the sentinel and azuremonitor blocks, got %d", len(blocks))
	}
	filled := strings.NewReplacer(
		"$tenant_id", "00000000-0000-4000-8000-00000000cafe",
		"$app_id_uri", "api://22222222-2222-4222-8222-222222222222",
		"$app_id", "22222222-2222-4222-8222-222222222222",
		"$logic_app_client_id", "33333333-3333-4333-8333-333333333333",
		"$LOGIC_APP_PRINCIPAL_ID", "44444444-4444-4444-8444-444444444444",
		"$ACTION_GROUPS_APP_ID", "461e8683-5575-4561-ac7f-899cc907d62a",
		"$ROLE", "Alerts.Submit",
	).Replace("sources:\n" + strings.Join(blocks, "\n") + "\n")
	cfg, err := config.Parse("printed.yaml", []byte(filled))
	if err != nil {
		t.Fatalf("the printed config does not load: %v\n%s", err, filled)
	}
	for _, src := range []string{"sentinel", "azuremonitor"} {
		e := cfg.Sources[src].Auth.Entra
		if e == nil || !slices.Contains(e.RequiredRoles, "Alerts.Submit") {
			t.Errorf("%s: %+v", src, e)
		}
	}
}
