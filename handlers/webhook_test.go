package handlers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

// TestWebhookSamples posts each source's sample and checks the 202, then
// that the receipt and the audit trail return what was ingested.
func TestWebhookSamples(t *testing.T) {
	e := newEnv(t)
	for src, body := range samples(t) {
		t.Run(src, func(t *testing.T) {
			r := e.post("/v1/webhooks/"+src, body, bearer(src))
			if r.status != http.StatusAccepted {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
			got := decodeJSON[webhookResponse](t, r)
			if !validReceiptID(got.Receipt) || got.Duplicate || len(got.Decisions) == 0 {
				t.Fatalf("response %s", r.body)
			}
			alerts, err := alert.Decode(src, body, alert.Options{Generic: genericMapping})
			if err != nil {
				t.Fatal(err)
			}
			queued := 0
			for _, d := range got.Decisions {
				if !slices.ContainsFunc(alerts, func(a alert.Alert) bool { return a.ID == d.AlertID }) {
					t.Errorf("decision for unknown alert %q", d.AlertID)
				}
				switch d.Status {
				case domain.StatusQueued:
					queued++
					if d.Device == nil || (d.Scan != "Quick" && d.Scan != "Full") || d.Rule == "" {
						t.Errorf("queued decision %+v", d)
					}
				case domain.StatusSkipped:
					if d.Reason == "" {
						t.Errorf("skipped without a reason: %+v", d)
					}
				default:
					t.Errorf("status %q for a first delivery: %+v", d.Status, d)
				}
			}
			if queued == 0 {
				t.Errorf("no scan queued for %s: %s", src, r.body)
			}

			// The receipt covers the alerts and their decisions.
			rr := e.get("/v1/receipts/"+got.Receipt, apiToken)
			if rr.status != http.StatusOK {
				t.Fatalf("receipt: %d %s", rr.status, rr.body)
			}
			det := decodeJSON[receiptResponse](t, rr)
			if det.Receipt != got.Receipt || det.Source != src || len(det.Alerts) != len(alerts) {
				t.Errorf("receipt detail: receipt %s source %s alerts %d, want %d", det.Receipt, det.Source, len(det.Alerts), len(alerts))
			}
			nDec := 0
			for _, a := range det.Alerts {
				nDec += len(a.Decisions)
			}
			if nDec != len(got.Decisions) || len(det.Jobs) != queued {
				t.Errorf("receipt has %d decisions and %d jobs, want %d and %d", nDec, len(det.Jobs), len(got.Decisions), queued)
			}

			// The audit trail lists each queued device.
			for _, d := range got.Decisions {
				if d.Status != domain.StatusQueued {
					continue
				}
				dev := d.Device.ID
				if dev == "" {
					dev = d.Device.DNSName
				}
				sr := e.get("/v1/scans?device="+dev+"&status=queued&limit=10", bearerFor(src))
				if sr.status != http.StatusOK {
					t.Fatalf("scans: %d %s", sr.status, sr.body)
				}
				list := decodeJSON[scansResponse](t, sr)
				if !slices.ContainsFunc(list.Scans, func(s scanJSON) bool {
					return s.Receipt == got.Receipt && s.AlertID == d.AlertID
				}) {
					t.Errorf("scans for %s do not list receipt %s: %s", dev, got.Receipt, sr.body)
				}
			}
		})
	}
}

func TestRedeliveryIsDuplicate(t *testing.T) {
	e := newEnv(t)
	body := samples(t)[domain.SourceDefender]
	first := decodeJSON[webhookResponse](t, e.post("/v1/webhooks/defender", body, bearer("defender")))
	r := e.post("/v1/webhooks/defender", body, bearer("defender"))
	if r.status != http.StatusAccepted {
		t.Fatalf("redelivery: %d %s", r.status, r.body)
	}
	again := decodeJSON[webhookResponse](t, r)
	if again.Receipt != first.Receipt || !again.Duplicate {
		t.Fatalf("redelivery = %s, want receipt %s and duplicate true", r.body, first.Receipt)
	}
	// The answer repeats the first delivery's decisions.
	if !reflect.DeepEqual(again.Decisions, first.Decisions) {
		t.Errorf("redelivered decisions %+v differ from the first %+v", again.Decisions, first.Decisions)
	}
	// Nothing new was queued.
	list := decodeJSON[scansResponse](t, e.get("/v1/scans?status=queued", apiToken))
	if len(list.Scans) != 1 {
		t.Errorf("queued scans after redelivery = %d, want 1", len(list.Scans))
	}
}

func TestDryRunMarksEveryDecision(t *testing.T) {
	e := newEnv(t, withDryRun())
	r := e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], bearer("defender"))
	got := decodeJSON[webhookResponse](t, r)
	if r.status != http.StatusAccepted || len(got.Decisions) == 0 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for _, d := range got.Decisions {
		if d.Status != domain.StatusDryRun {
			t.Errorf("status %q, want dry_run", d.Status)
		}
	}
}

func TestExplainStoresNothing(t *testing.T) {
	e := newEnv(t)
	r := e.post("/v1/explain/defender", samples(t)[domain.SourceDefender], bearer("defender"))
	if r.status != http.StatusOK {
		t.Fatalf("%d %s", r.status, r.body)
	}
	got := decodeJSON[explainResponse](t, r)
	if got.Source != "defender" || got.Rules != e.rules.Current().Digest() || len(got.Decisions) != 1 {
		t.Fatalf("explain = %s", r.body)
	}
	d := got.Decisions[0]
	if d.Rule != "rest-quick" || d.Scan != "Quick" || d.Device == nil || d.Device.ID != "111e6dd8c833c8a052ea231ec1b19adaf497b625" ||
		!strings.Contains(d.Comment, "da637472900382838869_1364969609") || d.Reason == "" || d.Cooldown != "1h0m0s" {
		t.Errorf("decision = %+v", d)
	}
	list := decodeJSON[scansResponse](t, e.get("/v1/scans", apiToken))
	if len(list.Scans) != 0 {
		t.Errorf("explain stored %d decisions", len(list.Scans))
	}
	// Explain takes the same credentials as the webhook.
	problemBody(t, e.post("/v1/explain/defender", samples(t)[domain.SourceDefender], bearer("graph")), http.StatusUnauthorized, TypeUnauthorized)
	problemBody(t, e.post("/v1/explain/defender", []byte(`{`), bearer("defender")), http.StatusBadRequest, TypeInvalidBody)
}

// TestWebhookRejects is every bad input the webhook may see: each gets the
// right status and a problem+json body.
func TestWebhookRejects(t *testing.T) {
	e := newEnv(t, withMaxBody(4096), withoutSource(domain.SourceGraph))
	now := e.clock.Now()
	sentinel := samples(t)[domain.SourceSentinel]
	big := bytes.Repeat([]byte(" "), 5000)
	big = append([]byte(`{"a":1}`), big...)
	cases := []struct {
		name    string
		path    string
		body    []byte
		headers map[string]string
		status  int
		typ     string
		field   string
		detail  string
	}{
		{name: "no auth", path: "/v1/webhooks/defender", body: []byte(`{}`), status: 401, typ: TypeUnauthorized, detail: "missing"},
		{name: "wrong token", path: "/v1/webhooks/defender", body: []byte(`{}`),
			headers: map[string]string{"Authorization": "Bearer wrong-token-0123456789abcdef"}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "another source's token", path: "/v1/webhooks/defender", body: []byte(`{}`), headers: bearer("sentinel"), status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "not a bearer scheme", path: "/v1/webhooks/defender", body: []byte(`{}`),
			headers: map[string]string{"Authorization": "Basic " + bearerFor("defender")}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "empty bearer", path: "/v1/webhooks/defender", body: []byte(`{}`),
			headers: map[string]string{"Authorization": "Bearer "}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "bad signature", path: "/v1/webhooks/sentinel", body: sentinel,
			headers: map[string]string{SignatureHeader: sign("another-secret-0123456789", now, sentinel)}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "signature of another body", path: "/v1/webhooks/sentinel", body: sentinel,
			headers: map[string]string{SignatureHeader: sign(hmacSecret, now, []byte(`{}`))}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "stale signature", path: "/v1/webhooks/sentinel", body: sentinel,
			headers: map[string]string{SignatureHeader: sign(hmacSecret, now.Add(-6*time.Minute), sentinel)}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "signature from the future", path: "/v1/webhooks/sentinel", body: sentinel,
			headers: map[string]string{SignatureHeader: sign(hmacSecret, now.Add(6*time.Minute), sentinel)}, status: 401, typ: TypeUnauthorized},
		{name: "malformed signature", path: "/v1/webhooks/sentinel", body: sentinel,
			headers: map[string]string{SignatureHeader: "t=abc,v1=00"}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "signature for a source without a secret", path: "/v1/webhooks/defender", body: sentinel,
			headers: map[string]string{SignatureHeader: sign(hmacSecret, now, sentinel)}, status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "wrong query token", path: "/v1/webhooks/splunk?token=wrong-token-0123456789", body: []byte(`{}`), status: 401, typ: TypeUnauthorized, detail: "invalid"},
		{name: "query token where none is configured", path: "/v1/webhooks/defender?token=" + queryToken, body: []byte(`{}`), status: 401, typ: TypeUnauthorized},
		{name: "invalid JSON", path: "/v1/webhooks/defender", body: []byte(`{"id": `), headers: bearer("defender"), status: 400, typ: TypeInvalidBody, field: "body"},
		{name: "field error names the field", path: "/v1/webhooks/azuremonitor", body: []byte(`{"schemaId":"other","data":{}}`),
			headers: bearer("azuremonitor"), status: 400, typ: TypeInvalidBody, field: "schemaId"},
		{name: "wrong content type", path: "/v1/webhooks/defender", body: []byte(`{}`),
			headers: map[string]string{"Authorization": "Bearer " + bearerFor("defender"), "Content-Type": "text/plain"}, status: 415, typ: TypeUnsupportedMedia},
		{name: "missing content type", path: "/v1/webhooks/defender", body: []byte(`{}`),
			headers: map[string]string{"Authorization": "Bearer " + bearerFor("defender"), "Content-Type": ""}, status: 415, typ: TypeUnsupportedMedia},
		{name: "malformed content type", path: "/v1/webhooks/defender", body: []byte(`{}`),
			headers: map[string]string{"Authorization": "Bearer " + bearerFor("defender"), "Content-Type": "application/json; charset"}, status: 415, typ: TypeUnsupportedMedia},
		{name: "empty body", path: "/v1/webhooks/defender", body: nil, headers: bearer("defender"), status: 400, typ: TypeInvalidBody, field: "body"},
		{name: "blank body", path: "/v1/webhooks/defender", body: []byte(" \n"), headers: bearer("defender"), status: 400, typ: TypeInvalidBody, field: "body"},
		{name: "oversized body", path: "/v1/webhooks/defender", body: big, headers: bearer("defender"), status: 413, typ: TypeTooLarge},
		{name: "oversized signed body", path: "/v1/webhooks/sentinel", body: big,
			headers: map[string]string{SignatureHeader: sign(hmacSecret, now, big)}, status: 413, typ: TypeTooLarge},
		{name: "unknown source", path: "/v1/webhooks/nosuch", body: []byte(`{}`), headers: bearer("defender"), status: 404, typ: TypeUnknownSource, field: "source"},
		{name: "unconfigured source", path: "/v1/webhooks/graph", body: []byte(`{}`), headers: bearer("graph"), status: 404, typ: TypeUnknownSource, detail: "not configured"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post(c.path, c.body, c.headers)
			p := problemBody(t, r, c.status, c.typ)
			if c.field != "" && p.Field != c.field {
				t.Errorf("field = %q, want %q", p.Field, c.field)
			}
			if c.detail != "" && !strings.Contains(p.Detail, c.detail) {
				t.Errorf("detail = %q, want it to contain %q", p.Detail, c.detail)
			}
			if c.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if n := len(decodeJSON[scansResponse](t, e.get("/v1/scans", apiToken)).Scans); n != 0 {
		t.Errorf("rejected requests stored %d decisions", n)
	}
}

// TestChunkedOversizedBody sends a body with no Content-Length: the limit
// holds while reading.
func TestChunkedOversizedBody(t *testing.T) {
	e := newEnv(t, withMaxBody(1024))
	pr, pw := io.Pipe()
	go func() {
		// Far more than the limit; the transport closes the pipe once the
		// server has answered.
		_, _ = pw.Write([]byte(`{"value":[`))
		for range 100_000 {
			if _, err := pw.Write([]byte(`{"id":"x"},`)); err != nil {
				return
			}
		}
		_ = pw.CloseWithError(errors.New("the server read the whole body"))
	}()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/webhooks/defender", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+bearerFor("defender"))
	r := e.do(req)
	if req.ContentLength != -1 && req.ContentLength != 0 {
		t.Fatalf("request has a Content-Length (%d); the test needs a chunked body", req.ContentLength)
	}
	problemBody(t, r, http.StatusRequestEntityTooLarge, TypeTooLarge)
}

func TestQueryTokenAndOtherMediaTypes(t *testing.T) {
	e := newEnv(t)
	s := samples(t)
	cases := []struct {
		name, path string
		body       []byte
		headers    map[string]string
	}{
		{"valid query token", "/v1/webhooks/splunk?token=" + queryToken, s[domain.SourceSplunk], nil},
		{"json with charset", "/v1/webhooks/defender", s[domain.SourceDefender],
			map[string]string{"Authorization": "Bearer " + bearerFor("defender"), "Content-Type": "application/json; charset=utf-8"}},
		{"a +json media type and lower-case scheme", "/v1/webhooks/graph", s[domain.SourceGraph],
			map[string]string{"Authorization": "bearer " + bearerFor("graph"), "Content-Type": "application/vnd.acme+json"}},
		{"bearer valid, signature wrong: any valid one suffices", "/v1/webhooks/sentinel", s[domain.SourceSentinel],
			map[string]string{"Authorization": "Bearer " + bearerFor("sentinel"), SignatureHeader: "t=1,v1=00"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.post(c.path, c.body, c.headers)
			if r.status != http.StatusAccepted {
				t.Fatalf("%d %s", r.status, r.body)
			}
		})
	}
}

func TestSignatureAndReplay(t *testing.T) {
	e := newEnv(t)
	body := samples(t)[domain.SourceSentinel]
	sig := sign(hmacSecret, e.clock.Now().Add(-4*time.Minute), body)

	// A request that fails after the signature verified (wrong media type)
	// does not burn the signature: the sender may retry.
	problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig, "Content-Type": "text/plain"}),
		http.StatusUnsupportedMediaType, TypeUnsupportedMedia)

	r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig})
	if r.status != http.StatusAccepted {
		t.Fatalf("signed delivery: %d %s", r.status, r.body)
	}
	p := problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig}), http.StatusUnauthorized, TypeUnauthorized)
	if !strings.Contains(p.Detail, "invalid") {
		t.Errorf("replay detail %q", p.Detail)
	}
	// Several v1 values (secret rotation): one valid is enough.
	sig2 := sign(hmacSecret, e.clock.Now(), body)
	stamp, mac, _ := strings.Cut(sig2, ",")
	rotated := stamp + ",v1=" + strings.Repeat("ab", 32) + "," + mac
	if r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: rotated}); r.status != http.StatusAccepted {
		t.Fatalf("rotated signature: %d %s", r.status, r.body)
	}
	// At the edge of the window: accepted once, and still remembered.
	edge := sign(hmacSecret, e.clock.Now().Add(-signatureSkew), body)
	if r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: edge}); r.status != http.StatusAccepted {
		t.Fatalf("signature at the skew edge: %d %s", r.status, r.body)
	}
	problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: edge}), http.StatusUnauthorized, TypeUnauthorized)
	// Once the window has passed the signature is stale, still refused.
	e.clock.Advance(2 * time.Minute)
	problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig}), http.StatusUnauthorized, TypeUnauthorized)
}

func TestReplayCache(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	rc := newReplayCache(2)
	k := func(b byte) [32]byte { return [32]byte{b} }
	if ok, full := rc.reserve(k(1), now.Add(time.Minute), now); !ok || full {
		t.Fatal("first reserve refused")
	}
	if ok, _ := rc.reserve(k(1), now.Add(time.Minute), now); ok {
		t.Fatal("replay accepted")
	}
	rc.release(k(1))
	if ok, _ := rc.reserve(k(1), now.Add(time.Minute), now); !ok {
		t.Fatal("released key refused")
	}
	if ok, _ := rc.reserve(k(2), now.Add(2*time.Minute), now); !ok {
		t.Fatal("second key refused")
	}
	if ok, full := rc.reserve(k(3), now.Add(time.Minute), now); ok || !full {
		t.Fatalf("third key in a cache of 2: ok %v full %v", ok, full)
	}
	// After key 1 (and its released twin) expire there is room again.
	later := now.Add(time.Minute + time.Second)
	if ok, full := rc.reserve(k(3), later.Add(time.Minute), later); !ok || full {
		t.Fatalf("after expiry: ok %v full %v", ok, full)
	}
	if ok, _ := rc.reserve(k(2), later.Add(time.Minute), later); ok {
		t.Fatal("unexpired key 2 accepted again")
	}
}

func TestIngestLimiter(t *testing.T) {
	// The clock is frozen, so the bucket never refills.
	e := newEnv(t, withLimiter(rate.NewLimiter(0.5, 1)))
	s := samples(t)
	if r := e.post("/v1/webhooks/defender", s[domain.SourceDefender], bearer("defender")); r.status != http.StatusAccepted {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	r := e.post("/v1/webhooks/graph", s[domain.SourceGraph], bearer("graph"))
	problemBody(t, r, http.StatusTooManyRequests, TypeRateLimited)
	if ra := r.header.Get("Retry-After"); ra != "2" {
		t.Errorf("Retry-After = %q, want 2", ra)
	}
	// Unauthenticated requests are refused before the limiter: they cannot
	// use up the budget of real senders.
	problemBody(t, e.post("/v1/webhooks/graph", s[domain.SourceGraph], nil), http.StatusUnauthorized, TypeUnauthorized)
	e.clock.Advance(2 * time.Second)
	if r := e.post("/v1/webhooks/graph", s[domain.SourceGraph], bearer("graph")); r.status != http.StatusAccepted {
		t.Fatalf("after refill: %d %s", r.status, r.body)
	}
}

// failingStore is a Store whose database is down (or whose Ingest panics).
type failingStore struct{ panics bool }

var errDown = errors.New("connection refused")

func (f failingStore) Ingest(context.Context, store.Delivery) (store.IngestResult, error) {
	if f.panics {
		panic("store bug")
	}
	return store.IngestResult{}, errDown
}
func (failingStore) Receipt(context.Context, string) (*store.ReceiptDetail, error) {
	return nil, errDown
}
func (failingStore) ListScans(context.Context, store.ScanQuery) ([]store.ScanRecord, error) {
	return nil, errDown
}
func (failingStore) Ping(context.Context) error { return errDown }

func TestStoreDown(t *testing.T) {
	e := newEnv(t, withStore(failingStore{}))
	r := e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], bearer("defender"))
	problemBody(t, r, http.StatusServiceUnavailable, TypeUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if strings.Contains(string(r.body), errDown.Error()) {
		t.Errorf("the store's error leaked to the client: %s", r.body)
	}
	problemBody(t, e.get("/v1/receipts/r_aaaaaaaaaaaaaaaaaaaaaaaaaa", apiToken), http.StatusServiceUnavailable, TypeUnavailable)
	problemBody(t, e.get("/v1/scans", apiToken), http.StatusServiceUnavailable, TypeUnavailable)
	problemBody(t, e.get("/readyz", ""), http.StatusServiceUnavailable, TypeUnavailable)
	if !strings.Contains(e.logs.String(), errDown.Error()) {
		t.Error("the store's error is not in the log")
	}
}

func TestClosedStoreIs503(t *testing.T) {
	e := newEnv(t)
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	problemBody(t, e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], bearer("defender")), http.StatusServiceUnavailable, TypeUnavailable)
	problemBody(t, e.get("/readyz", ""), http.StatusServiceUnavailable, TypeUnavailable)
}

func TestPanicIsRecovered(t *testing.T) {
	e := newEnv(t, withStore(failingStore{panics: true}))
	p := problemBody(t, e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], bearer("defender")), http.StatusInternalServerError, TypeInternal)
	if strings.Contains(p.Detail, "store bug") {
		t.Errorf("panic value leaked: %q", p.Detail)
	}
	if !strings.Contains(e.logs.String(), "store bug") {
		t.Error("panic not logged")
	}
	// The server still serves.
	if r := e.get("/healthz", ""); r.status != http.StatusOK {
		t.Fatalf("healthz after panic: %d", r.status)
	}
}

func TestNoRulesLoaded(t *testing.T) {
	e := newEnv(t)
	e.rules.rs.Store(nil)
	problemBody(t, e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], bearer("defender")), http.StatusServiceUnavailable, TypeUnavailable)
	p := problemBody(t, e.get("/readyz", ""), http.StatusServiceUnavailable, TypeUnavailable)
	if !strings.Contains(p.Detail, "rules") {
		t.Errorf("readyz detail %q does not say why", p.Detail)
	}
}

// TestEmptyAlertList: a body with no alerts (an empty Graph page) is
// accepted with no decisions, not an error.
func TestEmptyAlertList(t *testing.T) {
	e := newEnv(t)
	r := e.post("/v1/webhooks/graph", []byte(`{"value":[]}`), bearer("graph"))
	if r.status != http.StatusAccepted {
		t.Fatalf("%d %s", r.status, r.body)
	}
	got := decodeJSON[webhookResponse](t, r)
	if !validReceiptID(got.Receipt) || got.Decisions == nil || len(got.Decisions) != 0 || !strings.Contains(string(r.body), `"decisions":[]`) {
		t.Errorf("response %s", r.body)
	}
}

// blockingStore holds every Ingest until released, keeping deliveries in
// flight.
type blockingStore struct {
	Store
	entered chan struct{}
	release chan struct{}
}

func (b *blockingStore) Ingest(ctx context.Context, d store.Delivery) (store.IngestResult, error) {
	b.entered <- struct{}{}
	<-b.release
	return b.Store.Ingest(ctx, d)
}

func TestMaxInFlight(t *testing.T) {
	bs := &blockingStore{Store: openStore(t), entered: make(chan struct{}, 4), release: make(chan struct{})}
	e := newEnv(t, withStore(bs), func(d *Deps) { d.MaxInFlight = 2 })
	s := samples(t)
	results := make(chan resp, 2)
	for _, src := range []string{domain.SourceDefender, domain.SourceGraph} {
		go func() { results <- e.post("/v1/webhooks/"+src, s[src], bearer(src)) }()
	}
	<-bs.entered
	<-bs.entered
	// Both slots are taken: a third delivery is refused before its body is
	// read, with a Retry-After, instead of queueing in memory.
	r := e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], bearer("sentinel"))
	problemBody(t, r, http.StatusTooManyRequests, TypeRateLimited)
	if r.header.Get("Retry-After") == "" {
		t.Error("no Retry-After on the 429")
	}
	close(bs.release)
	for range 2 {
		if r := <-results; r.status != http.StatusAccepted {
			t.Fatalf("an in-flight delivery got %d %s", r.status, r.body)
		}
	}
	// The slots are free again.
	if r := e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], bearer("sentinel")); r.status != http.StatusAccepted {
		t.Fatalf("after release: %d %s", r.status, r.body)
	}
}
