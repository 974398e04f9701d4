package defendersim

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func clientOptions(s *Server) azcore.ClientOptions {
	return azcore.ClientOptions{
		Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: s.URL() + "/"},
		Transport: &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: s.CertPool(), MinVersion: tls.VersionTLS12},
		}},
		Retry: policy.RetryOptions{MaxRetries: -1},
	}
}

// TestAzidentityClientSecret drives the real azidentity credential against
// the simulator over TLS and uses its token on the API.
func TestAzidentityClientSecret(t *testing.T) {
	s := startTest(t, Options{})
	cred, err := azidentity.NewClientSecretCredential(DefaultTenantID, DefaultClientID, DefaultClientSecret,
		&azidentity.ClientSecretCredentialOptions{ClientOptions: clientOptions(s), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{DefaultAudience + "/.default"}})
	if err != nil {
		t.Fatalf("GetToken: %v", err)
	}
	if tok.Token == "" || time.Until(tok.ExpiresOn) < 50*time.Minute {
		t.Fatalf("token %q expires %v", tok.Token, tok.ExpiresOn)
	}
	m := s.Machines()[0]
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/api/machines/"+m.ID, nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct{ ID, ComputerDNSName string }
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 || got.ID != m.ID {
		t.Fatalf("GET machine: %d %+v %v", resp.StatusCode, got, err)
	}
	// The legacy scope is the same API.
	if _, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{LegacyScope}}); err != nil {
		t.Fatalf("legacy scope: %v", err)
	}
	// Every Entra call went to the same listener: openid config then token.
	var paths []string
	for _, r := range s.Requests() {
		paths = append(paths, r.Method+" "+r.Path)
	}
	joined := strings.Join(paths, "\n")
	for _, want := range []string{"GET /" + DefaultTenantID + "/v2.0/.well-known/openid-configuration", "POST /" + DefaultTenantID + "/oauth2/v2.0/token"} {
		if !strings.Contains(joined, want) {
			t.Errorf("requests lack %q:\n%s", want, joined)
		}
	}
}

func TestAzidentityRejections(t *testing.T) {
	s := startTest(t, Options{})
	cases := []struct {
		name, tenant, client, secret, scope, wantErr string
	}{
		{"wrong secret", DefaultTenantID, DefaultClientID, "nope", DefaultAudience + "/.default", "AADSTS7000215"},
		{"unknown client", DefaultTenantID, "22222222-2222-4222-8222-222222222222", DefaultClientSecret, DefaultAudience + "/.default", "AADSTS700016"},
		{"wrong tenant", "33333333-3333-4333-8333-333333333333", DefaultClientID, DefaultClientSecret, DefaultAudience + "/.default", "AADSTS90002"},
		{"wrong scope", DefaultTenantID, DefaultClientID, DefaultClientSecret, "https://graph.microsoft.com/.default", "AADSTS1002012"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cred, err := azidentity.NewClientSecretCredential(c.tenant, c.client, c.secret,
				&azidentity.ClientSecretCredentialOptions{ClientOptions: clientOptions(s), DisableInstanceDiscovery: true})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{c.scope}})
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("want %s, got %v", c.wantErr, err)
			}
		})
	}
}

func selfSignedRSA(t *testing.T) (*x509.Certificate, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "scanhook-app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestAzidentityClientCertificate(t *testing.T) {
	cert, key := selfSignedRSA(t)
	other, otherKey := selfSignedRSA(t)
	s := startTest(t, Options{ClientCertificate: cert})
	for _, c := range []struct {
		name string
		cert *x509.Certificate
		key  *rsa.PrivateKey
		ok   bool
	}{{"registered cert", cert, key, true}, {"other cert", other, otherKey, false}} {
		t.Run(c.name, func(t *testing.T) {
			cred, err := azidentity.NewClientCertificateCredential(DefaultTenantID, DefaultClientID, []*x509.Certificate{c.cert}, c.key,
				&azidentity.ClientCertificateCredentialOptions{ClientOptions: clientOptions(s), DisableInstanceDiscovery: true})
			if err != nil {
				t.Fatal(err)
			}
			_, err = cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{DefaultAudience + "/.default"}})
			if c.ok != (err == nil) {
				t.Fatalf("ok=%v, err=%v", c.ok, err)
			}
			if !c.ok && !strings.Contains(err.Error(), "AADSTS700027") {
				t.Fatalf("want AADSTS700027, got %v", err)
			}
		})
	}
}

func TestOpenIDConfigIssuerOnSameHost(t *testing.T) {
	s := startTest(t, Options{})
	resp, err := s.Client().Get(s.URL() + "/" + DefaultTenantID + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"issuer", "authorization_endpoint", "token_endpoint"} {
		v, _ := cfg[k].(string)
		u, err := url.Parse(v)
		if err != nil || "https://"+u.Host != s.URL() {
			t.Errorf("%s = %q, want host of %s", k, v, s.URL())
		}
	}
	resp2, err := s.Client().Get(s.URL() + "/not-my-tenant/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != 400 || !strings.Contains(string(b), "AADSTS90002") {
		t.Fatalf("unknown tenant: %d %s", resp2.StatusCode, b)
	}
}

func TestAzidentityWorkloadIdentity(t *testing.T) {
	tokenFile := t.TempDir() + "/token"
	if err := os.WriteFile(tokenFile, []byte("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, accept := range []bool{true, false} {
		s := startTest(t, Options{AcceptAnyAssertion: accept})
		cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: clientOptions(s), DisableInstanceDiscovery: true,
			TenantID: DefaultTenantID, ClientID: DefaultClientID, TokenFilePath: tokenFile,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{DefaultAudience + "/.default"}})
		if accept != (err == nil) {
			t.Fatalf("AcceptAnyAssertion=%v: %v", accept, err)
		}
		// The federated token travelled as the client assertion.
		found := false
		for _, r := range s.Requests() {
			if strings.HasSuffix(r.Path, "/token") && strings.Contains(string(r.Body), "client_assertion=eyJhbGciOiJSUzI1NiJ9") {
				found = true
			}
		}
		if !found {
			t.Fatal("no token request carried the federated token")
		}
	}
}

// TestLogsCarryNoSecrets: debug logging of every request names method, path
// and status, never the client secret or a bearer token.
func TestLogsCarryNoSecrets(t *testing.T) {
	var buf syncBuf
	p := newPlain(t, Options{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	m := p.s.Machines()[0]
	p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick"))
	p.raw("POST", "/"+DefaultTenantID+"/oauth2/v2.0/token", map[string]string{"Content-Type": "application/x-www-form-urlencoded"},
		"grant_type=client_credentials&client_id="+DefaultClientID+"&client_secret=wrong-secret&scope=x")
	out := buf.String()
	if !strings.Contains(out, "runAntiVirusScan") {
		t.Fatalf("no request log: %s", out)
	}
	for _, secret := range []string{DefaultClientSecret, "wrong-secret", p.token, strings.Split(p.token, ".")[2]} {
		if strings.Contains(out, secret) {
			t.Fatalf("log carries a secret: %s", out)
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
