package handlers

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

func TestReadAuth(t *testing.T) {
	e := newEnv(t)
	receipt := decodeJSON[webhookResponse](t, e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], bearer("defender"))).Receipt
	for _, path := range []string{"/v1/receipts/" + receipt, "/v1/scans"} {
		t.Run(path, func(t *testing.T) {
			for _, tok := range []string{apiToken, bearerFor("defender"), bearerFor("elastic")} {
				if r := e.get(path, tok); r.status != http.StatusOK {
					t.Errorf("token %.12s…: %d %s", tok, r.status, r.body)
				}
			}
			p := problemBody(t, e.get(path, ""), http.StatusUnauthorized, TypeUnauthorized)
			if !strings.Contains(p.Detail, "missing") {
				t.Errorf("no token: detail %q", p.Detail)
			}
			problemBody(t, e.get(path, "wrong-token-0123456789abcdef"), http.StatusUnauthorized, TypeUnauthorized)
			// The query token and the HMAC secret are webhook-only.
			problemBody(t, e.get(path+"?token="+queryToken, ""), http.StatusUnauthorized, TypeUnauthorized)
			problemBody(t, e.get(path, hmacSecret), http.StatusUnauthorized, TypeUnauthorized)
		})
	}
}

func TestReadRejects(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, path string
		status     int
		typ, field string
	}{
		{"receipt id too short", "/v1/receipts/r_abc", 400, TypeInvalidParameter, "receipt"},
		{"receipt id with bad characters", "/v1/receipts/r_AAAAAAAAAAAAAAAAAAAAAAAAAA", 400, TypeInvalidParameter, "receipt"},
		{"receipt id with 0 and 1", "/v1/receipts/r_0000000000000000000000001a", 400, TypeInvalidParameter, "receipt"},
		{"receipt id path traversal", "/v1/receipts/..%2f..%2fetc", 400, TypeInvalidParameter, "receipt"},
		{"unknown receipt", "/v1/receipts/r_aaaaaaaaaaaaaaaaaaaaaaaaaa", 404, TypeNotFound, ""},
		{"limit zero", "/v1/scans?limit=0", 400, TypeInvalidParameter, "limit"},
		{"limit too large", "/v1/scans?limit=5000", 400, TypeInvalidParameter, "limit"},
		{"limit not a number", "/v1/scans?limit=ten", 400, TypeInvalidParameter, "limit"},
		{"limit negative", "/v1/scans?limit=-1", 400, TypeInvalidParameter, "limit"},
		{"unknown status", "/v1/scans?status=exploded", 400, TypeInvalidParameter, "status"},
		{"bad device", "/v1/scans?device=bad%20host!", 400, TypeInvalidParameter, "device"},
		{"device that is an OData injection", "/v1/scans?device=x'%20or%201%20eq%201", 400, TypeInvalidParameter, "device"},
		{"unknown parameter", "/v1/scans?devce=host1", 400, TypeInvalidParameter, "devce"},
		{"repeated parameter", "/v1/scans?status=queued&status=dead", 400, TypeInvalidParameter, "status"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := problemBody(t, e.get(c.path, apiToken), c.status, c.typ)
			if p.Field != c.field {
				t.Errorf("field = %q, want %q", p.Field, c.field)
			}
		})
	}
}

func TestScansQuery(t *testing.T) {
	e := newEnv(t)
	s := samples(t)
	for _, src := range []string{domain.SourceDefender, domain.SourceGraph, domain.SourceSplunk} {
		if r := e.post("/v1/webhooks/"+src, s[src], bearer(src)); r.status != http.StatusAccepted {
			t.Fatalf("%s: %d %s", src, r.status, r.body)
		}
	}
	list := decodeJSON[scansResponse](t, e.get("/v1/scans", apiToken)).Scans
	if len(list) < 3 {
		t.Fatalf("scans = %d records", len(list))
	}
	for i := 1; i < len(list); i++ {
		if list[i].Time.After(list[i-1].Time) {
			t.Errorf("scans not newest first at %d", i)
		}
	}
	if got := decodeJSON[scansResponse](t, e.get("/v1/scans?limit=1", apiToken)).Scans; len(got) != 1 || got[0].AlertID != list[0].AlertID {
		t.Errorf("limit=1 gave %+v, want the newest", got)
	}
	// Device filters accept either case and a trailing dot.
	got := decodeJSON[scansResponse](t, e.get("/v1/scans?device=111E6DD8C833C8A052EA231EC1B19ADAF497B625", apiToken)).Scans
	if len(got) != 1 || got[0].Source != domain.SourceDefender {
		t.Errorf("device filter gave %+v", got)
	}
	got = decodeJSON[scansResponse](t, e.get("/v1/scans?device=TEMPDNS.&status=QUEUED", apiToken)).Scans
	if len(got) != 1 || got[0].Source != domain.SourceGraph {
		t.Errorf("dns filter gave %+v", got)
	}
	if got := decodeJSON[scansResponse](t, e.get("/v1/scans?status=dead", apiToken)).Scans; len(got) != 0 {
		t.Errorf("status=dead gave %d records", len(got))
	}
}

func TestRoutingProblems(t *testing.T) {
	e := newEnv(t)
	problemBody(t, e.get("/nope", ""), http.StatusNotFound, TypeNotFound)
	problemBody(t, e.get("/v1/nope/deeper", ""), http.StatusNotFound, TypeNotFound)
	// Echo's last path parameter takes the rest of the path; it is then
	// not a source name.
	problemBody(t, e.post("/v1/webhooks/defender/extra", []byte(`{}`), bearer("defender")), http.StatusNotFound, TypeUnknownSource)
	r := e.get("/v1/webhooks/defender", bearerFor("defender"))
	problemBody(t, r, http.StatusMethodNotAllowed, TypeMethodNotAllowed)
	if r.header.Get("Allow") == "" {
		t.Error("405 without Allow")
	}
	req, _ := http.NewRequest(http.MethodDelete, e.srv.URL+"/v1/scans", nil)
	problemBody(t, e.do(req), http.StatusMethodNotAllowed, TypeMethodNotAllowed)
}

func TestHealthAndReady(t *testing.T) {
	e := newEnv(t)
	if r := e.get("/healthz", ""); r.status != http.StatusOK {
		t.Fatalf("healthz %d", r.status)
	}
	r := e.get("/readyz", "")
	if r.status != http.StatusOK {
		t.Fatalf("readyz %d %s", r.status, r.body)
	}
	got := decodeJSON[map[string]any](t, r)
	if got["rules"] != e.rules.Current().Digest() || got["rule_count"] != float64(2) {
		t.Errorf("readyz body %s", r.body)
	}
}

func TestHeadersAndRequestID(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, incoming string
		honoured       bool
	}{
		{"sane id", "req-42.a_b:c", true},
		{"none", "", false},
		{"too long", strings.Repeat("a", 129), false},
		{"bad characters", "abc def", false},
		{"log injection", "a\"}{\"x", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/healthz", nil)
			if c.incoming != "" {
				req.Header["X-Request-Id"] = []string{c.incoming}
			}
			r := e.do(req)
			id := r.header.Get("X-Request-Id")
			if c.honoured && id != c.incoming || !c.honoured && (!validRequestID(id) || id == c.incoming || len(id) != 32) {
				t.Errorf("X-Request-Id = %q for incoming %q", id, c.incoming)
			}
			if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Cache-Control") != "no-store" {
				t.Errorf("security headers missing: %v", r.header)
			}
		})
	}
	// Problems carry them too.
	r := e.get("/nope", "")
	if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("problem without security headers: %v", r.header)
	}
}

// TestAccessLogHasNoSecrets sends every kind of credential and checks the
// log lines: one JSON line per request, the fields present, no secret and
// no body content.
func TestAccessLogHasNoSecrets(t *testing.T) {
	e := newEnv(t)
	s := samples(t)
	sentinel := s[domain.SourceSentinel]
	sig := sign(hmacSecret, e.clock.Now(), sentinel)
	e.post("/v1/webhooks/defender", s[domain.SourceDefender], bearer("defender"))
	e.post("/v1/webhooks/splunk?token="+queryToken+"&x=1", s[domain.SourceSplunk], nil)
	e.post("/v1/webhooks/splunk?token=wrong-guess-0123456789", s[domain.SourceSplunk], nil)
	e.post("/v1/webhooks/sentinel", sentinel, map[string]string{SignatureHeader: sig})
	e.post("/v1/webhooks/defender", []byte(`{"secret-body-marker": `), bearer("defender"))
	e.get("/v1/scans", apiToken)

	logs := e.logs.String()
	for _, secret := range []string{bearerFor("defender"), queryToken, "wrong-guess", sig, sig[strings.Index(sig, "v1=")+3:],
		hmacSecret, apiToken, "secret-body-marker", "da637472900382838869_1364969609", "token="} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains %q", secret)
		}
	}
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	var reqLines []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		if m["msg"] == "http request" {
			reqLines = append(reqLines, m)
		}
	}
	if len(reqLines) != 6 {
		t.Fatalf("%d access log lines, want 6:\n%s", len(reqLines), logs)
	}
	first := reqLines[0]
	for _, k := range []string{"request_id", "method", "path", "route", "status", "duration_ms", "bytes", "remote", "source"} {
		if _, ok := first[k]; !ok {
			t.Errorf("access log line lacks %q: %v", k, first)
		}
	}
	if first["status"] != float64(202) || first["source"] != "defender" || first["path"] != "/v1/webhooks/defender" {
		t.Errorf("first line %v", first)
	}
	if reqLines[1]["path"] != "/v1/webhooks/splunk" {
		t.Errorf("query token line path %v", reqLines[1]["path"])
	}
	if reqLines[4]["status"] != float64(400) || reqLines[4]["field"] != "body" {
		t.Errorf("bad body line %v", reqLines[4])
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	s := samples(t)
	e.post("/v1/webhooks/defender", s[domain.SourceDefender], bearer("defender"))
	e.post("/v1/webhooks/defender", []byte(`{`), bearer("defender"))
	e.post("/v1/webhooks/defender", s[domain.SourceDefender], nil)
	e.post("/v1/webhooks/no-such-source", s[domain.SourceDefender], nil)
	req, _ := http.NewRequest("BREW", e.srv.URL+"/healthz", nil)
	e.do(req)
	r := e.get("/metrics", "")
	if r.status != http.StatusOK {
		t.Fatalf("metrics %d", r.status)
	}
	body := string(r.body)
	for _, want := range []string{
		`scanhook_alerts_received_total{source="defender"} 1`,
		`scanhook_webhook_rejected_total{reason="invalid_body",source="defender"} 1`,
		`scanhook_webhook_rejected_total{reason="unauthorized",source="defender"} 1`,
		`scanhook_webhook_rejected_total{reason="unknown_source",source="unknown"} 1`,
		`scanhook_decisions_total{rule="rest-quick",scan="Quick",status="queued"} 1`,
		`scanhook_http_request_duration_seconds_count{code="202",method="POST",route="/v1/webhooks/:source"} 1`,
		`scanhook_http_request_duration_seconds_count{code="405",method="other",route="/healthz"} 1`,
		`scanhook_http_request_duration_seconds_count{code="404",method="POST",route="/v1/webhooks/:source"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, "no-such-source") || strings.Contains(body, "BREW") {
		t.Error("a client-chosen value became a label")
	}
}

func TestNewRefusesBadDeps(t *testing.T) {
	st := failingStore{}
	rs := &holder{}
	ok := func(d *Deps) {}
	cases := []struct {
		name string
		mod  func(*Deps)
		want string
	}{
		{"unknown source name", func(d *Deps) { d.Sources["nosuch"] = Source{Secrets: config.SourceSecrets{NoAuth: true}} }, "nosuch"},
		{"source without credentials", func(d *Deps) { d.Sources["defender"] = Source{} }, "no credential"},
		{"generic without mapping", func(d *Deps) {
			d.Sources["generic"] = Source{Secrets: config.SourceSecrets{Bearer: []byte(bearerFor("generic"))}}
		}, "mapping"},
		{"generic with an invalid mapping", func(d *Deps) {
			d.Sources["generic"] = Source{Secrets: config.SourceSecrets{Bearer: []byte(bearerFor("generic"))},
				Alert: alert.Options{Generic: &alert.GenericMapping{}}}
		}, "mapping"},
		{"short API token", func(d *Deps) { d.APIToken = []byte("short") }, "APIToken"},
		{"negative body limit", func(d *Deps) { d.MaxBodyBytes = -1 }, "MaxBodyBytes"},
		{"no store", func(d *Deps) { d.Store = nil }, "Store"},
		{"registerer without gatherer", func(d *Deps) { d.Registerer = prometheus.NewRegistry() }, "Gatherer"},
		{"valid", ok, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Deps{Store: st, Rules: rs, Sources: testSources()}
			c.mod(&d)
			_, err := New(d)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestInsecureNoAuthSource(t *testing.T) {
	e := newEnv(t, func(d *Deps) {
		d.Sources[domain.SourceDefender] = Source{Secrets: config.SourceSecrets{NoAuth: true}}
	})
	if r := e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], nil); r.status != http.StatusAccepted {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// It does not open the read endpoints.
	problemBody(t, e.get("/v1/scans", ""), http.StatusUnauthorized, TypeUnauthorized)
}

func TestNewServer(t *testing.T) {
	s := config.Defaults().Server
	srv := NewServer(":0", http.NotFoundHandler(), s)
	if srv.ReadHeaderTimeout != s.ReadHeaderTimeout || srv.ReadTimeout != s.ReadTimeout || srv.WriteTimeout != s.WriteTimeout ||
		srv.IdleTimeout != s.IdleTimeout || srv.MaxHeaderBytes != MaxHeaderBytes || srv.ReadHeaderTimeout == 0 {
		t.Errorf("server %+v", srv)
	}
}

// TestNothingLoggedAtErrorForClientInput: bad input never becomes a 5xx
// (the error-level lines are reserved for them).
func TestNothingLoggedAtErrorForClientInput(t *testing.T) {
	var buf lockedBuffer
	e := newEnv(t, func(d *Deps) { d.Logger = slog.New(slog.NewJSONHandler(&buf, nil)) })
	for _, body := range [][]byte{nil, []byte(`[]`), []byte(`null`), []byte(`"x"`), []byte(`{"value":[1,2]}`), bytes.Repeat([]byte("["), 10000)} {
		for _, src := range domain.Sources() {
			r := e.post("/v1/webhooks/"+src, body, bearer(src))
			if r.status >= 500 {
				t.Errorf("%s %q: %d %s", src, body, r.status, r.body)
			}
		}
	}
	if strings.Contains(buf.String(), `"level":"ERROR"`) {
		t.Errorf("client input logged at error level:\n%s", buf.String())
	}
}

func TestParseScanQuery(t *testing.T) {
	cases := []struct {
		query string
		want  store.ScanQuery
	}{
		{"", store.ScanQuery{}},
		{"device=&status=&limit=", store.ScanQuery{}},
		{"device=Host-1.Corp.Example.&status=Already_Scanning&limit=7", store.ScanQuery{Device: "host-1.corp.example", Status: "already_scanning", Limit: 7}},
		{"device=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&status=InProgress", store.ScanQuery{Device: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Status: "inprogress"}},
		{"limit=1000", store.ScanQuery{Limit: 1000}},
	}
	for _, c := range cases {
		v, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseScanQuery(v)
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.query, got, err, c.want)
		}
	}
}
