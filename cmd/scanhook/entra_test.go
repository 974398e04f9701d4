package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/testutil"
)

// The API registration and Logic App identity of the Entra ID black-box
// test: scanhook's app ID URI, the Logic App's managed identity.
const (
	entraAudience = "api://scanhook-test"
	entraLogicApp = "33333333-3333-4333-8333-333333333333"
	entraLogicOID = "44444444-4444-4444-8444-444444444444"
	entraOther    = "55555555-5555-4555-8555-555555555555"
	entraRole     = "Alerts.Submit"
)

type entraAnswer struct {
	status    int
	challenge string
	retry     string
	detail    string
}

func postEntra(t *testing.T, url, token string, body []byte) entraAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var p struct {
		Detail string `json:"detail"`
	}
	_ = json.Unmarshal(b, &p)
	return entraAnswer{resp.StatusCode, resp.Header.Get("WWW-Authenticate"), resp.Header.Get("Retry-After"), p.Detail}
}

// TestEntraIDSenders runs the built binary with the simulator as the
// Entra ID issuer (defender.authority_host) and a Sentinel source that
// takes only Entra ID tokens: a Logic-App-shaped token is accepted, every
// bad one is refused with 401 naming its check, keys that cannot be
// fetched give 503 with Retry-After, and a rotated key is picked up
// without a restart.
func TestEntraIDSenders(t *testing.T) {
	be := newBinaryEnv(t, 2, "{driver: sqlite, dsn: scanhook.db}", "", fmt.Sprintf(`  sentinel:
    auth:
      entra:
        tenant_ids: [%s]
        audiences: [%s]
        allowed_client_ids: [%s]
        required_roles: [%s]
`, defendersim.DefaultTenantID, entraAudience, entraLogicApp, entraRole), nil)
	sim := be.sim
	body, err := os.ReadFile("../../examples/demo/sentinel-incident.json")
	if err != nil {
		t.Fatal(err)
	}

	// The issuer is down when scanhook starts: deliveries are answered 503
	// with Retry-After until the keys can be fetched.
	sim.SetIssuerDown(true)
	s := startServer(t, be.env, "serve", "--config", be.cfgPath)
	var addr string
	listenRe := regexp.MustCompile(`"msg":"scanhook serving","addr":"([^"]+)"`)
	testutil.WaitFor(t, "serve to listen", func() bool {
		if m := listenRe.FindStringSubmatch(s.stderr.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	url := "http://" + addr + "/v1/webhooks/sentinel"
	mint := func(mod func(*defendersim.SenderToken)) string {
		st := defendersim.SenderToken{Audience: entraAudience, ClientID: entraLogicApp, ObjectID: entraLogicOID, Roles: []string{entraRole}}
		if mod != nil {
			mod(&st)
		}
		tok, err := sim.MintSenderToken(st)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	var tokens []string
	logicApp := mint(nil)
	tokens = append(tokens, logicApp)
	if a := postEntra(t, url, logicApp, body); a.status != http.StatusServiceUnavailable || a.retry == "" {
		t.Fatalf("issuer down: %+v, want 503 with Retry-After", a)
	}
	sim.SetIssuerDown(false)
	testutil.WaitFor(t, "the Logic App token to be accepted once the issuer is back", func() bool {
		return postEntra(t, url, logicApp, body).status == http.StatusAccepted
	})
	v2 := mint(func(s *defendersim.SenderToken) { s.Version = 2 })
	tokens = append(tokens, v2)
	if a := postEntra(t, url, v2, body); a.status != http.StatusAccepted {
		t.Fatalf("v2 token: %+v", a)
	}

	now := time.Now()
	for _, tc := range []struct {
		name, reason string
		mod          func(*defendersim.SenderToken)
	}{
		{"wrong audience", "audience", func(s *defendersim.SenderToken) { s.Audience = "https://management.azure.com" }},
		{"wrong tenant", "tenant", func(s *defendersim.SenderToken) { s.TenantID = "99999999-9999-4999-8999-999999999999" }},
		{"expired", "expired", func(s *defendersim.SenderToken) {
			s.IssuedAt, s.Expires = now.Add(-2*time.Hour), now.Add(-10*time.Minute)
		}},
		{"unknown caller", "caller", func(s *defendersim.SenderToken) { s.ClientID = entraOther }},
		{"missing role", "role", func(s *defendersim.SenderToken) { s.Roles = []string{"Alerts.Read"} }},
		{"alg none", "algorithm", func(s *defendersim.SenderToken) { s.Alg = "none" }},
		{"HS256 with the public key", "algorithm", func(s *defendersim.SenderToken) { s.Alg = "HS256" }},
		{"another issuer", "issuer", func(s *defendersim.SenderToken) {
			s.Issuer = "https://sts.windows.net/99999999-9999-4999-8999-999999999999/"
		}},
		{"a user's delegated token", "app_only", func(s *defendersim.SenderToken) { s.IDType, s.Scope = "user", "user_impersonation" }},
	} {
		tok := mint(tc.mod)
		tokens = append(tokens, tok)
		a := postEntra(t, url, tok, body)
		if a.status != http.StatusUnauthorized || !strings.Contains(a.detail, tc.reason+":") ||
			!strings.HasPrefix(a.challenge, `Bearer error="invalid_token", error_description="`+tc.reason+":") {
			t.Errorf("%s: %+v, want 401 naming %s", tc.name, a, tc.reason)
		}
	}

	// Key rotation, no restart: the new kid makes scanhook refresh the keys.
	if _, err := sim.RotateSenderKey(); err != nil {
		t.Fatal(err)
	}
	rotated := mint(nil)
	tokens = append(tokens, rotated)
	if a := postEntra(t, url, rotated, body); a.status != http.StatusAccepted {
		t.Fatalf("token from the rotated key: %+v", a)
	}
	// A token signed by a key the issuer never published stays out.
	foreign := mint(func(s *defendersim.SenderToken) { s.ForeignKey = true })
	tokens = append(tokens, foreign)
	if a := postEntra(t, url, foreign, body); a.status != http.StatusUnauthorized || !strings.Contains(a.detail, "signature:") {
		t.Errorf("foreign key: %+v", a)
	}

	metrics := getMetrics(t, "http://"+addr+"/metrics")
	for _, r := range []string{"audience", "tenant", "expired", "caller", "role", "issuer", "app_only", "unavailable", "signature"} {
		if !strings.Contains(metrics, `scanhook_entra_token_rejected_total{reason="`+r+`",source="sentinel"}`) {
			t.Errorf("no rejection counted for %s", r)
		}
	}
	if !strings.Contains(metrics, `scanhook_entra_token_rejected_total{reason="algorithm",source="sentinel"} 2`) {
		t.Error("algorithm refusals not counted twice")
	}
	logs := s.stderr.String()
	for _, tok := range tokens {
		if p := strings.Split(tok, "."); strings.Contains(logs, p[1]) || p[2] != "" && strings.Contains(logs, p[2]) {
			t.Fatal("a token reached the log")
		}
	}
}

func getMetrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
