package entraauth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
)

const (
	tenantID  = defendersim.DefaultTenantID
	otherTen  = "99999999-9999-4999-8999-999999999999"
	audience  = "api://scanhook"
	apiClient = "22222222-2222-4222-8222-222222222222"
	logicApp  = "33333333-3333-4333-8333-333333333333" // the managed identity's client (app) id
	logicOID  = "44444444-4444-4444-8444-444444444444" // and its object id
	otherApp  = "55555555-5555-4555-8555-555555555555"
	role      = "Alerts.Submit"
)

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time               { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Set(t time.Time)              { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) Add(d time.Duration)          { c.ns.Add(int64(d)) }
func newFakeClock() *fakeClock                    { c := &fakeClock{}; c.Set(time.Now().Truncate(time.Second)); return c }
func (c *fakeClock) at(d time.Duration) time.Time { return c.Now().Add(d) }

type fixture struct {
	sim   *defendersim.Server
	clock *fakeClock
	prov  *Provider
	v     *Verifier
}

func newFixture(t testing.TB, mod func(*ProviderOptions), pol ...Policy) *fixture {
	t.Helper()
	clock := newFakeClock()
	sim, err := defendersim.New(defendersim.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	o := ProviderOptions{Authority: sim.URL() + "/", HTTPClient: sim.Client(), Now: clock.Now, RetryInterval: time.Nanosecond}
	if mod != nil {
		mod(&o)
	}
	prov, err := NewProvider(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{TenantIDs: []string{tenantID}, Audiences: []string{audience, apiClient},
		AllowedClientIDs: []string{logicApp}, RequiredRoles: []string{role}}
	if len(pol) > 0 {
		p = pol[0]
	}
	v, err := prov.Verifier(p)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{sim: sim, clock: clock, prov: prov, v: v}
}

// logicAppToken is what a Logic App's HTTP action with its managed
// identity sends: a v1 app-only token for scanhook's app ID URI.
func logicAppToken() defendersim.SenderToken {
	return defendersim.SenderToken{Audience: audience, ClientID: logicApp, ObjectID: logicOID, Roles: []string{role}}
}

func (f *fixture) mint(t testing.TB, st defendersim.SenderToken) string {
	t.Helper()
	tok, err := f.sim.MintSenderToken(st)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func reasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return "not an *Error: " + err.Error()
}

func TestVerifyAccepts(t *testing.T) {
	f := newFixture(t, nil)
	for _, ver := range []int{1, 2} {
		st := logicAppToken()
		st.Version = ver
		if ver == 2 {
			st.Audience = apiClient // v2 tokens carry the client id as aud
		}
		c, err := f.v.Verify(context.Background(), f.mint(t, st))
		if err != nil {
			t.Fatalf("v%d: %v", ver, err)
		}
		if c.ClientID != logicApp || c.ObjectID != logicOID || c.TenantID != tenantID || c.Roles[0] != role {
			t.Fatalf("v%d caller %+v", ver, c)
		}
	}
	// An allowed object id suffices without an allowed client id.
	g := newFixture(t, nil, Policy{TenantIDs: []string{tenantID}, Audiences: []string{audience}, AllowedObjectIDs: []string{strings.ToUpper(logicOID)}})
	st := logicAppToken()
	st.ClientID, st.Roles = otherApp, nil
	if _, err := g.v.Verify(context.Background(), g.mint(t, st)); err != nil {
		t.Fatalf("allowed object id: %v", err)
	}
}

// TestVerifyRefuses is one case per check of the issue, each with the
// reason it must be refused for.
func TestVerifyRefuses(t *testing.T) {
	f := newFixture(t, nil)
	valid := f.mint(t, logicAppToken())
	with := func(mod func(*defendersim.SenderToken)) func() string {
		return func() string {
			st := logicAppToken()
			mod(&st)
			return f.mint(t, st)
		}
	}
	swapHeader := func(hdr string) func() string {
		return func() string {
			p := strings.Split(valid, ".")
			return base64.RawURLEncoding.EncodeToString([]byte(hdr)) + "." + p[1] + "." + p[2]
		}
	}
	tamper := func() string {
		p := strings.Split(valid, ".")
		st := logicAppToken()
		st.Roles = []string{role, "Admin"}
		q := strings.Split(f.mint(t, st), ".")
		return p[0] + "." + q[1] + "." + p[2]
	}
	kid, _ := f.sim.SenderKeyID()
	for _, tc := range []struct {
		name, reason string
		tok          func() string
	}{
		{"not a JWT", ReasonMalformed, func() string { return "opaque-token-0123456789" }},
		{"garbage JWT", ReasonMalformed, func() string { return "a.b.c" }},
		{"alg none", ReasonAlgorithm, with(func(s *defendersim.SenderToken) { s.Alg = "none" })},
		{"HS256 keyed by the public key", ReasonAlgorithm, with(func(s *defendersim.SenderToken) { s.Alg = "HS256" })},
		{"RS512 header", ReasonAlgorithm, swapHeader(`{"typ":"JWT","alg":"RS512","kid":"` + kid + `"}`)},
		{"PS256 header", ReasonAlgorithm, swapHeader(`{"typ":"JWT","alg":"PS256","kid":"` + kid + `"}`)},
		{"ES256 header", ReasonAlgorithm, swapHeader(`{"typ":"JWT","alg":"ES256","kid":"` + kid + `"}`)},
		{"unknown alg", ReasonAlgorithm, swapHeader(`{"typ":"JWT","alg":"XX1","kid":"` + kid + `"}`)},
		{"signed by an unpublished key", ReasonSignature, with(func(s *defendersim.SenderToken) { s.ForeignKey = true })},
		{"claims changed after signing", ReasonSignature, tamper},
		{"wrong tenant", ReasonTenant, with(func(s *defendersim.SenderToken) { s.TenantID = otherTen })},
		{"wrong audience", ReasonAudience, with(func(s *defendersim.SenderToken) { s.Audience = "https://management.azure.com" })},
		{"expired beyond leeway", ReasonExpired, with(func(s *defendersim.SenderToken) {
			s.IssuedAt, s.Expires = f.clock.at(-2*time.Hour), f.clock.at(-5*time.Minute-time.Second)
		})},
		{"not yet valid beyond leeway", ReasonNotYetValid, with(func(s *defendersim.SenderToken) { s.NotBefore = f.clock.at(5*time.Minute + time.Second) })},
		{"issued in the future", ReasonNotYetValid, with(func(s *defendersim.SenderToken) {
			s.IssuedAt, s.NotBefore = f.clock.at(10*time.Minute), f.clock.Now()
		})},
		{"another issuer", ReasonIssuer, with(func(s *defendersim.SenderToken) { s.Issuer = "https://sts.windows.net/" + otherTen + "/" })},
		{"v1 token with the v2 issuer", ReasonIssuer, with(func(s *defendersim.SenderToken) { s.Issuer = f.sim.IssuerV2(tenantID) })},
		{"v2 token with the v1 issuer", ReasonIssuer, with(func(s *defendersim.SenderToken) {
			s.Version, s.Issuer = 2, defendersim.IssuerV1(tenantID)
		})},
		{"user token (idtyp)", ReasonAppOnly, with(func(s *defendersim.SenderToken) { s.IDType = "user" })},
		{"delegated token (scp)", ReasonAppOnly, with(func(s *defendersim.SenderToken) { s.Scope = "user_impersonation" })},
		{"no idtyp and oid != sub", ReasonAppOnly, with(func(s *defendersim.SenderToken) { s.IDType, s.ObjectID = "-", "" })},
		{"unknown caller", ReasonCaller, with(func(s *defendersim.SenderToken) { s.ClientID = otherApp })},
		{"missing role", ReasonRole, with(func(s *defendersim.SenderToken) { s.Roles = []string{"Alerts.Read"} })},
		{"no roles", ReasonRole, with(func(s *defendersim.SenderToken) { s.Roles = nil })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.tok()
			_, err := f.v.Verify(context.Background(), tok)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := reasonOf(err); got != tc.reason {
				t.Fatalf("reason %q, want %q (%v)", got, tc.reason, err)
			}
			if p := strings.Split(tok, "."); strings.Contains(err.Error(), tok) || len(p) == 3 && len(p[1]) > 8 && strings.Contains(err.Error(), p[1]) {
				t.Fatal("the error echoes the token")
			}
		})
	}
	// Leeway: up to five minutes either way is tolerated.
	st := logicAppToken()
	st.IssuedAt, st.Expires = f.clock.at(-2*time.Hour), f.clock.at(-4*time.Minute)
	if _, err := f.v.Verify(context.Background(), f.mint(t, st)); err != nil {
		t.Errorf("expired 4 minutes ago (within leeway): %v", err)
	}
	st = logicAppToken()
	st.NotBefore = f.clock.at(4 * time.Minute)
	if _, err := f.v.Verify(context.Background(), f.mint(t, st)); err != nil {
		t.Errorf("nbf 4 minutes ahead (within leeway): %v", err)
	}
	// And the fake clock decides: a valid token expires when it moves on.
	f.clock.Add(time.Hour + 5*time.Minute + time.Second)
	if _, err := f.v.Verify(context.Background(), valid); reasonOf(err) != ReasonExpired {
		t.Errorf("after the clock passed exp: %v", err)
	}
}

// TestKeyRotation: a token signed by a new key is accepted after one
// refresh of the key set, and unknown kids refresh at most once a minute.
func TestKeyRotation(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); err != nil {
		t.Fatal(err)
	}
	fetches := f.sim.JWKSFetches()
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); err != nil {
		t.Fatal(err)
	}
	if f.sim.JWKSFetches() != fetches {
		t.Fatal("a cached key was fetched again")
	}
	if _, err := f.sim.RotateSenderKey(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); err != nil {
		t.Fatalf("token from the rotated key: %v", err)
	}
	if got := f.sim.JWKSFetches(); got == fetches {
		t.Fatal("the unknown kid did not refresh the key set")
	}
	fetches = f.sim.JWKSFetches()
	// A second new key within the minute is not fetched: the sender gets
	// 401 (signature) and the issuer is not hammered.
	if _, err := f.sim.RotateSenderKey(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); reasonOf(err) != ReasonSignature {
			t.Fatalf("unknown kid within the minute: %v", err)
		}
	}
	st := logicAppToken()
	st.ForeignKey = true
	if _, err := f.v.Verify(ctx, f.mint(t, st)); reasonOf(err) != ReasonSignature {
		t.Fatalf("foreign key: %v", err)
	}
	if got := f.sim.JWKSFetches(); got != fetches {
		t.Fatalf("unknown kids fetched the key set %d more times within a minute", got-fetches)
	}
}

// TestBackgroundRefresh: the key set is refreshed without any request, so
// a rotated key is known before a token signed with it arrives.
func TestBackgroundRefresh(t *testing.T) {
	f := newFixture(t, func(o *ProviderOptions) { o.RefreshInterval = 20 * time.Millisecond })
	ctx := context.Background()
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); err != nil {
		t.Fatal(err)
	}
	if _, err := f.sim.RotateSenderKey(); err != nil {
		t.Fatal(err)
	}
	after := f.sim.JWKSFetches()
	deadline := time.Now().Add(10 * time.Second)
	for f.sim.JWKSFetches() < after+1 {
		if time.Now().After(deadline) {
			t.Fatal("no background refresh")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The kid is now cached: verifying needs no fetch of its own.
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); err != nil {
		t.Fatalf("rotated key after a background refresh: %v", err)
	}
}

// TestUnavailable: when the metadata or keys cannot be fetched, the
// verdict is "retry" (unavailable), never a refusal of a good token.
func TestUnavailable(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	f.sim.SetIssuerDown(true)
	_, err := f.v.Verify(ctx, f.mint(t, logicAppToken()))
	var e *Error
	if !errors.As(err, &e) || !e.Unavailable() {
		t.Fatalf("issuer down before the first load: %v", err)
	}
	f.sim.SetIssuerDown(false)
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); err != nil {
		t.Fatalf("issuer back: %v", err)
	}
	// Loaded, then down: a new kid cannot be fetched, which is a 503 too.
	f.sim.SetIssuerDown(true)
	if _, err := f.sim.RotateSenderKey(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.v.Verify(ctx, f.mint(t, logicAppToken())); reasonOf(err) != ReasonUnavailable {
		t.Fatalf("unknown kid while the issuer is down: %v", err)
	}
	// A wrong tenant needs no keys and is refused all the same.
	st := logicAppToken()
	st.TenantID = otherTen
	if _, err := f.v.Verify(ctx, f.mint(t, st)); reasonOf(err) != ReasonTenant {
		t.Fatalf("wrong tenant while down: %v", err)
	}
}

// TestIssuerForms: on Microsoft's hosts the metadata issuers must be Entra
// ID's own forms; the simulator's v2 issuer (its own host) is not one.
func TestIssuerForms(t *testing.T) {
	f := newFixture(t, func(o *ProviderOptions) { o.MicrosoftHost = true })
	// The simulator's v1 issuer is sts.windows.net (fine), its v2 issuer is
	// on its own host, which is the authority: fine too.
	if _, err := f.v.Verify(context.Background(), f.mint(t, logicAppToken())); err != nil {
		t.Fatalf("simulator as a Microsoft-shaped host: %v", err)
	}
	ten := f.v.tenants[tenantID]
	for _, tc := range []struct {
		iss string
		v2  bool
		ok  bool
	}{
		{"https://sts.windows.net/" + tenantID + "/", false, true},
		{"https://sts.windows.net/" + otherTen + "/", false, false},
		{"https://evil.example/" + tenantID + "/", false, false},
		{"http://sts.windows.net/" + tenantID + "/", false, false},
		{"https://sts.windows.net/" + tenantID + "/v2.0", true, false},
		{f.sim.URL() + "/" + tenantID + "/v2.0", true, true},
		{f.sim.URL() + "/" + tenantID + "/", false, true},
	} {
		if err := ten.checkIssuer(tc.iss, tc.v2); (err == nil) != tc.ok {
			t.Errorf("issuer %q v2=%v: %v, want ok=%v", tc.iss, tc.v2, err, tc.ok)
		}
	}
}

// BenchmarkVerify is a Logic App token checked with a cached key (the
// figure in docs/entra-id.md).
func BenchmarkVerify(b *testing.B) {
	f := newFixture(b, nil)
	tok := f.mint(b, logicAppToken())
	ctx := context.Background()
	if _, err := f.v.Verify(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRSABaseline is the bare RS256 signature check of the same kind
// of token with the standard library: the floor under BenchmarkVerify on
// the machine at hand, so the verifier's own overhead can be read off.
func BenchmarkRSABaseline(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("header.payload"))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		d := sha256.Sum256([]byte("header.payload"))
		if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, d[:], sig); err != nil {
			b.Fatal(err)
		}
	}
}
