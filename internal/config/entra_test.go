package config

import (
	"slices"
	"strings"
	"testing"
)

const entraTenant = "00000000-0000-4000-8000-00000000cafe"

// TestParseEntra loads the sources.<name>.auth.entra contract that the
// deployment scripts rely on, alone and next to another method.
func TestParseEntra(t *testing.T) {
	in := `sources:
  sentinel:
    auth:
      bearer_token_file: /run/secrets/sentinel
      entra:
        tenant_ids: [` + entraTenant + `]
        audiences: [api://scanhook, 22222222-2222-4222-8222-222222222222]
        allowed_client_ids: [33333333-3333-4333-8333-333333333333]
        allowed_object_ids: [44444444-4444-4444-8444-444444444444]
        required_roles: [Alerts.Submit]
  azuremonitor:
    auth:
      entra:
        tenant_ids: [` + entraTenant + `]
        audiences: [api://scanhook]
        required_roles: [Alerts.Submit]
`
	cfg, err := Parse("c.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Sources["sentinel"].Auth.Entra
	if e == nil || !slices.Equal(e.TenantIDs, []string{entraTenant}) || len(e.Audiences) != 2 ||
		e.AllowedClientIDs[0] != "33333333-3333-4333-8333-333333333333" ||
		e.AllowedObjectIDs[0] != "44444444-4444-4444-8444-444444444444" || e.RequiredRoles[0] != "Alerts.Submit" {
		t.Fatalf("entra block: %+v", e)
	}
	sec, err := cfg.Secrets(func(string) string { return "" }, func(string) ([]byte, error) {
		return []byte("0123456789abcdef-bearer"), nil
	})
	if err != nil {
		t.Fatalf("an entra-only source needs no secret: %v", err)
	}
	if sec["azuremonitor"].Bearer != nil || sec["azuremonitor"].NoAuth {
		t.Errorf("azuremonitor secrets: %+v", sec["azuremonitor"])
	}
}

func TestParseEntraErrors(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{"tenant required", "      audiences: [api://x]\n      required_roles: [R]\n", "sources.sentinel.auth.entra.tenant_ids: list the tenant ids"},
		{"tenant is a GUID", "      tenant_ids: [common]\n      audiences: [api://x]\n      required_roles: [R]\n", `c.yaml:5:21: sources.sentinel.auth.entra.tenant_ids: "common" is not a tenant id`},
		{"audience required", "      tenant_ids: [" + entraTenant + "]\n      required_roles: [R]\n", "sources.sentinel.auth.entra.audiences: list"},
		{"caller restriction required", "      tenant_ids: [" + entraTenant + "]\n      audiences: [api://x]\n", "sources.sentinel.auth.entra: set allowed_client_ids, allowed_object_ids or required_roles"},
		{"client id is a GUID", "      tenant_ids: [" + entraTenant + "]\n      audiences: [api://x]\n      allowed_client_ids: [logicapp]\n", `allowed_client_ids: "logicapp" is not a GUID`},
		{"object id is a GUID", "      tenant_ids: [" + entraTenant + "]\n      audiences: [api://x]\n      allowed_object_ids: [\"\"]\n", `allowed_object_ids: "" is not a GUID`},
		{"unknown key", "      tenant_id: [" + entraTenant + "]\n", `c.yaml:5:9: unknown key "tenant_id"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte("sources:\n  sentinel:\n    auth:\n      entra:\n"+indent(tt.in)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	_, err := Parse("c.yaml", []byte("sources:\n  sentinel:\n    insecure_no_auth: true\n    auth:\n      entra: {tenant_ids: ["+entraTenant+"], audiences: [api://x], required_roles: [R]}\n"))
	if err == nil || !strings.Contains(err.Error(), "insecure_no_auth with auth configured") {
		t.Fatalf("insecure_no_auth with entra: %v", err)
	}
}

func indent(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "      ", "        ") + "\n"
}
