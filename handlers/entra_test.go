package handlers

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/entraauth"
)

// fakeEntra accepts goodJWT and refuses every other token with the reason
// a test put in the token's middle segment ("x.<reason>.y").
type fakeEntra struct{}

const goodJWT = "eyJhbGciOiJSUzI1NiJ9.good-entra-claims.signature-part"

func (fakeEntra) Verify(_ context.Context, tok string) (entraauth.Caller, error) {
	if tok == goodJWT {
		return entraauth.Caller{ClientID: "logic-app"}, nil
	}
	p := strings.Split(tok, ".")
	if len(p) != 3 {
		return entraauth.Caller{}, &entraauth.Error{Reason: entraauth.ReasonMalformed, Description: "the bearer token is not a JWT"}
	}
	if p[1] == "boom" {
		return entraauth.Caller{}, errors.New("not an entraauth error")
	}
	return entraauth.Caller{}, &entraauth.Error{Reason: p[1], Description: "check " + p[1] + " failed",
		Err: errors.New("fetch https://login.example/keys: connection refused")}
}

// withEntra makes sentinel take Entra ID tokens besides its bearer token
// and signature, and azuremonitor take only Entra ID tokens.
func withEntra() envOption {
	return func(d *Deps) {
		s := d.Sources[domain.SourceSentinel]
		s.Entra = fakeEntra{}
		d.Sources[domain.SourceSentinel] = s
		am := d.Sources[domain.SourceAzureMonitor]
		am.Secrets = config.SourceSecrets{}
		am.Entra = fakeEntra{}
		d.Sources[domain.SourceAzureMonitor] = am
	}
}

func TestEntraAccepted(t *testing.T) {
	e := newEnv(t, withEntra())
	s := samples(t)
	for _, src := range []string{domain.SourceSentinel, domain.SourceAzureMonitor} {
		r := e.post("/v1/webhooks/"+src, s[src], map[string]string{"Authorization": "Bearer " + goodJWT})
		if r.status != http.StatusAccepted {
			t.Fatalf("%s with a good Entra ID token: %d %s", src, r.status, r.body)
		}
	}
	// During a migration the other methods keep working on the same source.
	if r := e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], bearer("sentinel")); r.status != http.StatusAccepted {
		t.Fatalf("static bearer next to entra: %d %s", r.status, r.body)
	}
	sig := sign(hmacSecret, e.clock.Now(), s[domain.SourceSentinel])
	if r := e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], map[string]string{SignatureHeader: sig}); r.status != http.StatusAccepted {
		t.Fatalf("signature next to entra: %d %s", r.status, r.body)
	}
	// An Entra ID token does not open the read endpoints.
	if r := e.get("/v1/scans", goodJWT); r.status != http.StatusUnauthorized {
		t.Fatalf("reads with an Entra ID token: %d", r.status)
	}
}

// TestEntraRefused: 401 with an RFC 6750 challenge and a problem naming
// the failed check, counted by reason, and the token in no log line.
func TestEntraRefused(t *testing.T) {
	e := newEnv(t, withEntra())
	s := samples(t)
	for _, reason := range []string{entraauth.ReasonAudience, entraauth.ReasonIssuer, entraauth.ReasonExpired, entraauth.ReasonRole, entraauth.ReasonCaller} {
		tok := "eyJhbGciOiJSUzI1NiJ9." + reason + ".secret-signature-" + reason
		for _, src := range []string{domain.SourceSentinel, domain.SourceAzureMonitor} {
			r := e.post("/v1/webhooks/"+src, s[src], map[string]string{"Authorization": "Bearer " + tok})
			p := problemBody(t, r, http.StatusUnauthorized, TypeUnauthorized)
			if !strings.HasPrefix(p.Detail, "Entra ID token refused: "+reason+": ") {
				t.Errorf("%s %s: detail %q does not name the check", src, reason, p.Detail)
			}
			want := `Bearer error="invalid_token", error_description="` + reason + `: check ` + reason + ` failed"`
			if got := r.header.Get("WWW-Authenticate"); got != want {
				t.Errorf("WWW-Authenticate %q, want %q", got, want)
			}
			if strings.Contains(string(r.body), "secret-signature") {
				t.Error("the response echoes the token")
			}
		}
	}
	// A token that is not a JWT on a source with a static bearer token is
	// just a wrong bearer token; on an entra-only source it is malformed.
	r := e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], map[string]string{"Authorization": "Bearer not-a-jwt-0123456789"})
	if p := problemBody(t, r, http.StatusUnauthorized, TypeUnauthorized); p.Detail != "the credentials are invalid" {
		t.Errorf("opaque token on sentinel: %q", p.Detail)
	}
	r = e.post("/v1/webhooks/azuremonitor", s[domain.SourceAzureMonitor], map[string]string{"Authorization": "Bearer not-a-jwt-0123456789"})
	if p := problemBody(t, r, http.StatusUnauthorized, TypeUnauthorized); !strings.Contains(p.Detail, "malformed") {
		t.Errorf("opaque token on azuremonitor: %q", p.Detail)
	}
	// A bad signature next to a refused token: the Entra ID verdict wins.
	r = e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], map[string]string{
		"Authorization": "Bearer x.audience.y", SignatureHeader: sign("wrong-secret-0123456789", e.clock.Now(), s[domain.SourceSentinel])})
	if p := problemBody(t, r, http.StatusUnauthorized, TypeUnauthorized); !strings.Contains(p.Detail, "audience") {
		t.Errorf("entra + bad signature: %q", p.Detail)
	}

	m := string(e.get("/metrics", "").body)
	for _, want := range []string{
		`scanhook_entra_token_rejected_total{reason="audience",source="sentinel"} 2`,
		`scanhook_entra_token_rejected_total{reason="audience",source="azuremonitor"} 1`,
		`scanhook_entra_token_rejected_total{reason="role",source="sentinel"} 1`,
		`scanhook_entra_token_rejected_total{reason="malformed",source="azuremonitor"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(e.logs.String(), "secret-signature") || strings.Contains(e.logs.String(), "eyJhbGciOiJSUzI1NiJ9") {
		t.Error("a token reached the log")
	}
}

// TestEntraUnavailable: keys that cannot be fetched are a 503 with
// Retry-After (the sender retries), not a 401.
func TestEntraUnavailable(t *testing.T) {
	e := newEnv(t, withEntra())
	s := samples(t)
	for _, tok := range []string{"eyJhbGciOiJSUzI1NiJ9.unavailable.secret-signature-u", "eyJhbGciOiJSUzI1NiJ9.boom.secret-signature-b"} {
		r := e.post("/v1/webhooks/azuremonitor", s[domain.SourceAzureMonitor], map[string]string{"Authorization": "Bearer " + tok})
		problemBody(t, r, http.StatusServiceUnavailable, TypeUnavailable)
		if ra := r.header.Get("Retry-After"); ra != "10" {
			t.Errorf("Retry-After %q", ra)
		}
	}
	if strings.Contains(e.logs.String(), "secret-signature") {
		t.Error("a token reached the log")
	}
	if !strings.Contains(e.logs.String(), "connection refused") {
		t.Error("the cause of a 503 should be logged")
	}
	if m := string(e.get("/metrics", "").body); !strings.Contains(m, `scanhook_entra_token_rejected_total{reason="unavailable",source="azuremonitor"} 2`) {
		t.Error("unavailable not counted")
	}
}
