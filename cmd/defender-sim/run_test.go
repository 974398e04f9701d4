package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/testutil"
)

type syncBuffer = testutil.SyncBuffer

func TestRunServesAndStops(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	machines := filepath.Join(dir, "machines.json")
	if err := os.WriteFile(machines, []byte(`[{"id":"`+strings.Repeat("ab", 20)+`","computerDnsName":"pc1.contoso.com"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	ready := make(chan *defendersim.Server, 1)
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--ca-file", ca, "--machines", machines,
			"--client-secret-file", secret, "--tenant-id", "t1", "--pending", "1s"}, &out, &errOut,
			func(s *defendersim.Server) { ready <- s })
	}()
	var sim *defendersim.Server
	select {
	case sim = <-ready:
	case code := <-done:
		t.Fatalf("exited %d: %s", code, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	// Trust only the CA file it wrote, as SSL_CERT_FILE would.
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(sim.URL() + "/t1/v2.0/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&cfg)
	resp.Body.Close()
	if resp.StatusCode != 200 || cfg["token_endpoint"] != sim.URL()+"/t1/oauth2/v2.0/token" {
		t.Fatalf("%d %v", resp.StatusCode, cfg)
	}
	// The secret from the file is the one accepted.
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {defendersim.DefaultClientID},
		"client_secret": {"s3cret"}, "scope": {defendersim.DefaultAudience + "/.default"}}
	resp, err = hc.PostForm(cfg["token_endpoint"], form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("token: %d", resp.StatusCode)
	}
	banner := out.String()
	for _, want := range []string{sim.URL(), "t1", secret, ca, "SSL_CERT_FILE=" + ca, "pc1.contoso.com", sim.AdminToken()} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	if strings.Contains(banner, "s3cret") || strings.Contains(errOut.String(), "s3cret") {
		t.Error("the client secret was printed")
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop")
	}
	if _, err := hc.Get(sim.URL() + "/t1/v2.0/.well-known/openid-configuration"); err == nil {
		t.Fatal("still serving after shutdown")
	}
}

func TestRunGeneratesSecretFile(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var out, errOut syncBuffer
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"), "--generate", "3"}, &out, &errOut,
			func(s *defendersim.Server) {
				if len(s.Machines()) != 3 {
					t.Errorf("%d machines", len(s.Machines()))
				}
				cancel()
			})
	}()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "defender-sim-client-secret"))
	if err != nil || len(strings.TrimSpace(string(b))) < 32 {
		t.Fatalf("secret file: %q %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "defender-sim-client-secret")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v", fi.Mode())
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(bad, []byte(`[{"id":"x","computerDnsName":"a","colour":"red"}]`), 0o600)
	short := filepath.Join(dir, "short.json")
	_ = os.WriteFile(short, []byte(`[{"id":"x","computerDnsName":"a"}]`), 0o600)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--bogus"}, 2, "bogus"},
		{[]string{"extra"}, 2, "unexpected argument"},
		{[]string{"--generate", "0"}, 2, "--generate"},
		{[]string{"--rate-per-minute", "0"}, 2, "rate"},
		{[]string{"--addr", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"), "--machines", bad}, 1, "colour"},
		{[]string{"--addr", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"), "--machines", short}, 1, "40 lower-case hex"},
		{[]string{"--addr", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"), "--machines", filepath.Join(dir, "none.json")}, 1, "read machines"},
		{[]string{"--addr", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"), "--final-status", "Done"}, 1, "FinalStatus"},
		{[]string{"--addr", "127.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem"), "--log-level", "loud"}, 1, "log-level"},
		{[]string{"--addr", "256.0.0.1:0", "--ca-file", filepath.Join(dir, "ca.pem")}, 1, "listen"},
	}
	for _, c := range cases {
		var out, errOut syncBuffer
		code := run(context.Background(), c.args, &out, &errOut, nil)
		if code != c.code || !strings.Contains(errOut.String(), c.msg) {
			t.Errorf("%v: exit %d, stderr %q", c.args, code, errOut.String())
		}
	}
}
