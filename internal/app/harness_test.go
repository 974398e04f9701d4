package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"

	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/defendersim"
)

type syncWriter = testutil.SyncBuffer

// testService is the whole service (the same runService as `serve`) running
// in-process against a simulator, on a real listener.
type testService struct {
	base, token string
	logs        *syncWriter
	stopOnce    sync.Once
	cancel      context.CancelFunc
	served      chan error
}

const testToken = "test-token-0123456789abcdef"

// startTestService writes a config for sim (every source but generic
// authenticated with testToken, plus extra YAML) and runs the service.
func startTestService(t *testing.T, sim *defendersim.Server, limiter defender.Limiter, rulesYAML, extra string) *testService {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"secret":     defendersim.DefaultClientSecret,
		"rules.yaml": rulesYAML,
	}
	for _, src := range domain.Sources() {
		files[sourceTokenFile(src)] = sourceToken(src)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	text := fmt.Sprintf(`listen: 127.0.0.1:0
rules: rules.yaml
store: {driver: sqlite, dsn: scanhook.db}
defender:
  api_url: %[1]s
  authority_host: %[1]s/
  credential: client-secret
  tenant_id: %[2]s
  client_id: %[3]s
  client_secret_file: secret
log:
  level: info
%[4]s`, sim.URL(), defendersim.DefaultTenantID, defendersim.DefaultClientID, extra)
	if !bytes.Contains([]byte(extra), []byte("sources:")) {
		text += "sources:\n"
		for _, s := range []string{"defender", "graph", "sentinel", "azuremonitor", "splunk", "elastic", "alertmanager"} {
			text += "  " + s + ":\n    auth: {bearer_token_file: " + sourceTokenFile(s) + "}\n"
		}
	}
	cfg, err := config.Parse(cfgPath, []byte(text))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: sim.CertPool()}
	addrCh := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	svc := &testService{token: testToken, logs: &syncWriter{}, cancel: cancel, served: make(chan error, 1)}
	go func() {
		svc.served <- Run(ctx, cfg, Env{Stdout: io.Discard, Stderr: svc.logs}, Hooks{
			Transport: transport,
			Limiter:   limiter,
			Listening: func(a net.Addr) { addrCh <- a },
		})
	}()
	select {
	case a := <-addrCh:
		svc.base = "http://" + a.String()
	case err := <-svc.served:
		t.Fatalf("serve: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not start")
	}
	t.Cleanup(func() {
		svc.stop(t)
		if t.Failed() {
			t.Logf("service log (tail):\n%s", svc.logs.Tail(6000))
		}
	})
	return svc
}

func (s *testService) stop(t *testing.T) {
	s.stopOnce.Do(func() {
		s.cancel()
		if err := <-s.served; err != nil {
			t.Errorf("serve returned: %v", err)
		}
	})
}

// sourceToken is source's webhook token (no two sources may share one);
// the defender source's is testToken, which also reads.
func sourceToken(source string) string {
	if source == domain.SourceDefender {
		return testToken
	}
	return testToken + "-" + source
}

// sourceTokenFile is the file, in the config's folder, holding sourceToken.
func sourceTokenFile(source string) string {
	if source == domain.SourceDefender {
		return "token"
	}
	return "token-" + source
}

// do sends one request with the test token (the source's own on a webhook
// or explain route) and decodes a JSON answer.
func (s *testService) do(t *testing.T, method, path, contentType string, body []byte, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	token := s.token
	for _, prefix := range []string{"/v1/webhooks/", "/v1/explain/"} {
		if src, ok := strings.CutPrefix(path, prefix); ok {
			src, _, _ = strings.Cut(src, "?")
			token = sourceToken(src)
		}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %v: %s", method, path, resp.StatusCode, err, b)
		}
	}
	return resp.StatusCode
}

// waitSettled waits, up to d, until every job of the receipts is settled.
// A job that a decision upgraded belongs to the receipt of the alert that
// queued it, which must be among receipts.
func (s *testService) waitSettled(t *testing.T, d time.Duration, receipts []string) {
	t.Helper()
	testutil.WaitReceiptsSettled(t, d, receipts, func(receipt string) []string {
		var r receiptAnswer
		if code := s.do(t, http.MethodGet, "/v1/receipts/"+receipt, "", nil, &r); code != http.StatusOK {
			t.Fatalf("receipt %s: %d", receipt, code)
		}
		states := make([]string, len(r.Jobs))
		for i, j := range r.Jobs {
			states[i] = j.State
		}
		return states
	})
}
