package handlers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/rules"
)

type lockedBuffer = testutil.SyncBuffer

const testRules = `
defaults:
  cooldown: 1h
rules:
  - name: high-full
    match: {severity: {gte: high}}
    scan: Full
  - name: rest-quick
    scan: Quick
`

// Test secrets, one per source and kind (config requires 16+ characters).
func bearerFor(src string) string { return "bearer-" + src + "-0123456789abcdef" }

const (
	hmacSecret = "hmac-secret-0123456789abcdef"
	queryToken = "query-token-0123456789abcdef"
	apiToken   = "api-token-0123456789abcdef"
)

// genericMapping is the mapping used for the generic source in tests.
var genericMapping = &alert.GenericMapping{ID: "id", Severity: "sev", Title: "title", DNSName: "host"}

// testSources configures every source with a bearer token; sentinel also
// takes signatures and splunk a query token.
func testSources() map[string]Source {
	out := map[string]Source{}
	opts := alert.Options{Generic: genericMapping}
	for _, name := range domain.Sources() {
		sec := config.SourceSecrets{Bearer: []byte(bearerFor(name))}
		switch name {
		case domain.SourceSentinel:
			sec.HMAC = []byte(hmacSecret)
		case domain.SourceSplunk:
			sec.Query = []byte(queryToken)
		}
		out[name] = Source{Secrets: sec, Alert: opts}
	}
	return out
}

// holder is a Rules whose ruleset a test may swap.
type holder struct{ rs atomic.Pointer[rules.Ruleset] }

func (h *holder) Current() *rules.Ruleset { return h.rs.Load() }

type env struct {
	t     testing.TB
	srv   *httptest.Server
	store store.Store
	logs  *lockedBuffer
	reg   *prometheus.Registry
	clock *testutil.Clock // whole seconds, as signature timestamps are
	rules *holder
}

type envOption func(*Deps)

func loadRules(t testing.TB) *rules.Ruleset {
	t.Helper()
	rs, err := rules.Load("test-rules.yaml", []byte(testRules), rules.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// openStore opens a real SQLite store in a temp folder.
func openStore(t testing.TB) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), "sqlite", filepath.Join(t.TempDir(), "db"), store.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newEnv serves the handlers on a real listener over a real SQLite store
// (unless an option replaces the store).
func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, logs: &lockedBuffer{}, reg: prometheus.NewRegistry(), clock: testutil.NewClock(), rules: &holder{}}
	e.rules.rs.Store(loadRules(t))
	deps := Deps{
		Logger:     slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: e.reg,
		Gatherer:   e.reg,
		Rules:      e.rules,
		Sources:    testSources(),
		APIToken:   []byte(apiToken),
		Now:        e.clock.Now,
	}
	for _, o := range opts {
		o(&deps)
	}
	if deps.Store == nil {
		e.store = openStore(t)
		deps.Store = e.store
	}
	h, err := New(deps)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	return e
}

func withStore(s Store) envOption { return func(d *Deps) { d.Store = s } }

func withLimiter(l *rate.Limiter) envOption { return func(d *Deps) { d.IngestLimiter = l } }

func withMaxBody(n int64) envOption { return func(d *Deps) { d.MaxBodyBytes = n } }

func withoutSource(name string) envOption { return func(d *Deps) { delete(d.Sources, name) } }

func withDryRun() envOption { return func(d *Deps) { d.DryRun = true } }

// resp is a response read whole.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(req *http.Request) resp {
	e.t.Helper()
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

// post sends body to path with the given headers ("Content-Type" defaults
// to application/json).
func (e *env) post(path string, body []byte, headers map[string]string) resp {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	return e.do(req)
}

func (e *env) get(path, token string) resp {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return e.do(req)
}

func bearer(src string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + bearerFor(src)}
}

func sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// problemBody checks r is a problem+json response with status and type
// and returns it.
func problemBody(t testing.TB, r resp, status int, typ string) problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json", ct)
	}
	var p problem
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("problem body %s: %v", r.body, err)
	}
	if p.Status != status || p.Type != typ || p.Title == "" || p.RequestID == "" || p.Instance == "" {
		t.Fatalf("problem = %+v, want status %d type %s with title, instance and request_id", p, status, typ)
	}
	if p.RequestID != r.header.Get("X-Request-Id") {
		t.Errorf("request_id %q differs from X-Request-Id %q", p.RequestID, r.header.Get("X-Request-Id"))
	}
	return p
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// samples are one real body per source.
func samples(t testing.TB) map[string][]byte {
	return map[string][]byte{
		domain.SourceDefender:     readFile(t, "../testdata/samples/mde-alert.json"),
		domain.SourceGraph:        readFile(t, "../testdata/samples/graph-alert-v2.json"),
		domain.SourceSentinel:     readFile(t, "../internal/alert/testdata/sentinel-incident-hosts.json"),
		domain.SourceAzureMonitor: readFile(t, "../internal/alert/testdata/azuremonitor-fired-custom.json"),
		domain.SourceSplunk:       readFile(t, "../internal/alert/testdata/splunk-device.json"),
		domain.SourceElastic:      readFile(t, "../internal/alert/testdata/elastic-two-alerts.json"),
		domain.SourceAlertmanager: readFile(t, "../internal/alert/testdata/alertmanager-firing-resolved.json"),
		domain.SourceGeneric:      []byte(`{"id":"g-1","sev":"high","title":"Generic alert","host":"srv-9.corp.example.com"}`),
	}
}

func decodeJSON[T any](t testing.TB, r resp) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return v
}
