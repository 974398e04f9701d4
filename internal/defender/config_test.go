package defender

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/defendersim/simtest"
)

func TestCloudSettings(t *testing.T) {
	cases := []struct {
		name                  string
		cfg                   Config
		api, authority, scope string
		noDiscovery           bool
	}{
		{"default is commercial", Config{},
			"https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com/", "https://api.securitycenter.microsoft.com/.default", false},
		{"commercial", Config{Cloud: "commercial"},
			"https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com/", "https://api.securitycenter.microsoft.com/.default", false},
		{"gcc", Config{Cloud: "gcc"},
			"https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com/", "https://api-gcc.securitycenter.microsoft.us/.default", false},
		{"gcc-high", Config{Cloud: "gcc-high"},
			"https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us/", "https://api-gov.securitycenter.microsoft.us/.default", false},
		{"dod", Config{Cloud: "DoD"},
			"https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us/", "https://api-gov.securitycenter.microsoft.us/.default", false},
		{"regional api keeps the commercial scope", Config{APIURL: "https://eu.api.security.microsoft.com/"},
			"https://eu.api.security.microsoft.com", "https://login.microsoftonline.com/", "https://api.securitycenter.microsoft.com/.default", false},
		{"scope override", Config{Cloud: "gcc", Scope: "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"},
			"https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com/", "https://securitycenter.onmicrosoft.com/windowsatpservice/.default", false},
		{"foreign authority turns discovery off", Config{AuthorityHost: "https://127.0.0.1:8443", APIURL: "https://127.0.0.1:8443"},
			"https://127.0.0.1:8443", "https://127.0.0.1:8443", "https://api.securitycenter.microsoft.com/.default", true},
		{"Microsoft authority with port and case", Config{AuthorityHost: "https://LOGIN.microsoftonline.us:443/"},
			"https://api.securitycenter.microsoft.com", "https://LOGIN.microsoftonline.us:443/", "https://api.securitycenter.microsoft.com/.default", false},
		{"look-alike authority", Config{AuthorityHost: "https://login.microsoftonline.com.evil.example/"},
			"https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com.evil.example/", "https://api.securitycenter.microsoft.com/.default", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			e := tc.cfg.Effective()
			if e.APIURL != tc.api || e.AuthorityHost != tc.authority || e.Scope != tc.scope {
				t.Errorf("got %s | %s | %s", e.APIURL, e.AuthorityHost, e.Scope)
			}
			if got := tc.cfg.InstanceDiscoveryDisabled(); got != tc.noDiscovery {
				t.Errorf("instance discovery disabled = %v, want %v", got, tc.noDiscovery)
			}
			if e.Credential != CredentialDefault || e.RateLimit != (RateLimit{100, 1500}) || e.Timeout != 30*time.Second {
				t.Errorf("defaults = %s %+v %s", e.Credential, e.RateLimit, e.Timeout)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string // "" means valid
	}{
		{Config{}, ""},
		{Config{Credential: "client-secret", ClientSecretFile: "/run/secrets/x", TenantID: "contoso.onmicrosoft.com", ClientID: defendersim.DefaultClientID}, ""},
		{Config{RateLimit: RateLimit{PerMinute: 10, PerHour: 100}, Timeout: time.Second, DryRun: true}, ""},
		{Config{Cloud: "azure-china"}, "defender.cloud: unknown cloud"},
		{Config{APIURL: "http://api.securitycenter.microsoft.com"}, "defender.api_url"},
		{Config{APIURL: "https://x.example/api?x=1"}, "defender.api_url"},
		{Config{APIURL: "https://user:pw@x.example"}, "defender.api_url"},
		{Config{APIURL: "::"}, "defender.api_url"},
		{Config{AuthorityHost: "login.microsoftonline.com"}, "defender.authority_host"},
		{Config{Scope: "a b"}, "defender.scope"},
		{Config{Credential: "password"}, "defender.credential: unknown credential"},
		{Config{ClientSecretFile: "/x"}, "defender.client_secret_file: is only used with credential client-secret"},
		{Config{Credential: "client-secret", ClientCertificateFile: "/x"}, "defender.client_certificate_file"},
		{Config{TenantID: "a/b"}, "defender.tenant_id"},
		{Config{ClientID: "not-a-guid"}, "defender.client_id"},
		{Config{RateLimit: RateLimit{PerMinute: -1}}, "defender.rate_limit.per_minute: must not be negative"},
		{Config{RateLimit: RateLimit{PerHour: -1}}, "defender.rate_limit.per_hour"},
		{Config{RateLimit: RateLimit{PerMinute: 200, PerHour: 100}}, "defender.rate_limit.per_minute: 200 is more than per_hour 100"},
		{Config{Timeout: -time.Second}, "defender.timeout"},
	}
	for _, tc := range cases {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: err = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	// New refuses what Validate refuses.
	if _, err := New(Config{Cloud: "mars"}, Deps{}); err == nil {
		t.Error("New accepted an invalid config")
	}
}

func TestCredentialFromConfig(t *testing.T) {
	sim := simtest.Start(t, defendersim.Options{})
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(defendersim.DefaultClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	build := func(t *testing.T, mutate func(*Config)) (*Client, error) {
		cfg := simConfig(sim)
		cfg.TenantID, cfg.ClientID = "", ""
		mutate(&cfg)
		deps := simDeps(sim, nil, &syncBuffer{})
		tr := deps.Transport
		t.Cleanup(func() { tr.(interface{ CloseIdleConnections() }).CloseIdleConnections() })
		deps.Getenv = getenv
		return New(cfg, deps)
	}
	call := func(t *testing.T, c *Client) {
		t.Helper()
		if _, err := c.GetMachine(ctxT(t), sim.Machines()[0].ID); err != nil {
			t.Fatalf("call: %v", err)
		}
	}

	t.Run("secret file, ids from the environment", func(t *testing.T) {
		env = map[string]string{envTenantID: defendersim.DefaultTenantID, envClientID: defendersim.DefaultClientID, envClientSecret: "wrong"}
		c, err := build(t, func(c *Config) { c.ClientSecretFile = secretFile })
		if err != nil {
			t.Fatal(err)
		}
		call(t, c) // the file wins over AZURE_CLIENT_SECRET
	})
	t.Run("missing pieces name the key", func(t *testing.T) {
		for _, tc := range []struct {
			env    map[string]string
			mutate func(*Config)
			want   string
		}{
			{map[string]string{envClientID: "x", envClientSecret: "s"}, func(*Config) {}, "defender.tenant_id: not set and AZURE_TENANT_ID is empty"},
			{map[string]string{envTenantID: "x", envClientSecret: "s"}, func(*Config) {}, "defender.client_id: not set and AZURE_CLIENT_ID is empty"},
			{map[string]string{envTenantID: "x", envClientID: "y"}, func(*Config) {}, "defender.client_secret_file: not set and AZURE_CLIENT_SECRET is empty"},
			{map[string]string{envTenantID: "x", envClientID: "y"}, func(c *Config) { c.ClientSecretFile = filepath.Join(dir, "nope") }, "defender.client_secret_file"},
			{map[string]string{envTenantID: "x", envClientID: "y"}, func(c *Config) {
				c.Credential, c.ClientCertificateFile = CredentialClientCertificate, secretFile
			}, "defender.client_certificate_file"},
			{map[string]string{envTenantID: "x", envClientID: "y"}, func(c *Config) { c.Credential = CredentialClientCertificate }, "AZURE_CLIENT_CERTIFICATE_PATH is empty"},
			{map[string]string{envTenantID: "x", envClientID: "y"}, func(c *Config) { c.Credential = CredentialWorkloadIdentity }, "AZURE_FEDERATED_TOKEN_FILE is not set"},
		} {
			env = tc.env
			_, err := build(t, tc.mutate)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), defendersim.DefaultClientSecret) {
				t.Errorf("the secret leaked into %v", err)
			}
		}
		env = map[string]string{envTenantID: "x", envClientID: "y"}
		_, err := build(t, func(c *Config) { c.ClientSecretFile = filepath.Join(dir, "nope") })
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("unreadable file: %v, want to wrap fs.ErrNotExist", err)
		}
	})
	t.Run("managed identity and default build without network", func(t *testing.T) {
		env = map[string]string{envClientID: defendersim.DefaultClientID}
		for _, cred := range []string{CredentialManagedIdentity, CredentialDefault} {
			if _, err := build(t, func(c *Config) { c.Credential = cred }); err != nil {
				t.Errorf("%s: %v", cred, err)
			}
		}
	})
}

func TestClientCertificateCredential(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "scanhook test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pk8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "client.pem")
	pemData := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8})...)
	if err := os.WriteFile(file, pemData, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, viaEnv := range []bool{false, true} {
		e := newEnv(t, defendersim.Options{ClientCertificate: cert}, func(c *Config, d *Deps) {
			c.Credential = CredentialClientCertificate
			if viaEnv {
				d.Getenv = func(k string) string {
					if k == envCertificatePath {
						return file
					}
					return ""
				}
			} else {
				c.ClientCertificateFile = file
			}
		})
		if _, err := e.client.GetMachine(ctxT(t), e.sim.Machines()[0].ID); err != nil {
			t.Fatalf("env %v: %v", viaEnv, err)
		}
		for _, r := range e.sim.Requests() {
			if strings.HasSuffix(r.Path, "/token") && !strings.Contains(string(r.Body), "client_assertion=") {
				t.Errorf("token request without a client assertion: %s", r.Body)
			}
		}
	}
}

func TestWorkloadIdentityCredential(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("eyJhbGciOiJSUzI1NiJ9.e30.sig"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, defendersim.Options{AcceptAnyAssertion: true}, func(c *Config, d *Deps) {
		c.Credential = CredentialWorkloadIdentity
		c.TenantID, c.ClientID = "", ""
		d.Getenv = func(k string) string {
			return map[string]string{
				envTenantID: defendersim.DefaultTenantID, envClientID: defendersim.DefaultClientID,
				envFederatedTokenFile: tokenFile,
			}[k]
		}
	})
	if _, err := e.client.GetMachine(ctxT(t), e.sim.Machines()[0].ID); err != nil {
		t.Fatal(err)
	}
	for _, r := range e.sim.Requests() {
		if strings.HasSuffix(r.Path, "/token") && !strings.Contains(string(r.Body), "client_assertion=eyJhbGciOiJSUzI1NiJ9.e30.sig") {
			t.Errorf("token request does not carry the federated token: %s", r.Body)
		}
	}
}
