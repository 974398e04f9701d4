package handlers

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

// TestRejectedMetricLabels checks that a 405 on a webhook route counts as
// method_not_allowed (refused before the handler looks the source up), and
// a 429 from the in-flight limit under its source.
func TestRejectedMetricLabels(t *testing.T) {
	bs := &blockingStore{Store: openStore(t), entered: make(chan struct{}, 4), release: make(chan struct{})}
	e := newEnv(t, withStore(bs), func(d *Deps) { d.MaxInFlight = 1 })
	s := samples(t)

	if r := e.get("/v1/webhooks/elastic", ""); r.status != http.StatusMethodNotAllowed {
		t.Fatalf("GET on a webhook: %d %s", r.status, r.body)
	}

	done := make(chan resp, 1)
	go func() { done <- e.post("/v1/webhooks/defender", s[domain.SourceDefender], bearer("defender")) }()
	<-bs.entered
	r := e.post("/v1/webhooks/sentinel", s[domain.SourceSentinel], bearer("sentinel"))
	problemBody(t, r, http.StatusTooManyRequests, TypeRateLimited)
	close(bs.release)
	if r := <-done; r.status != http.StatusAccepted {
		t.Fatalf("in-flight delivery: %d %s", r.status, r.body)
	}

	body := string(e.get("/metrics", "").body)
	for _, want := range []string{
		`scanhook_webhook_rejected_total{reason="method_not_allowed",source="elastic"} 1`,
		`scanhook_webhook_rejected_total{reason="rate_limited",source="sentinel"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, `source="unknown"`) || strings.Contains(body, `reason="internal"`) {
		t.Errorf("a refusal counted as unknown or internal:\n%s", grepLines(body, "scanhook_webhook_rejected_total"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCompressedBodyRefused checks that a gzip body is refused with 415
// naming the encoding (it is never decompressed, so a zip bomb costs
// nothing), not a 400 calling it invalid JSON, and is counted as such.
func TestCompressedBodyRefused(t *testing.T) {
	e := newEnv(t)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(samples(t)[domain.SourceDefender])
	_ = zw.Close()
	h := bearer("defender")
	h["Content-Encoding"] = "gzip"
	r := e.post("/v1/webhooks/defender", buf.Bytes(), h)
	p := problemBody(t, r, http.StatusUnsupportedMediaType, TypeUnsupportedMedia)
	if !strings.Contains(p.Detail, `Content-Encoding "gzip"`) {
		t.Errorf("detail %q does not name the encoding", p.Detail)
	}
	body := string(e.get("/metrics", "").body)
	if want := `scanhook_webhook_rejected_total{reason="unsupported_media_type",source="defender"} 1`; !strings.Contains(body, want) {
		t.Errorf("metrics lack %s", want)
	}
	// identity is no encoding at all.
	h["Content-Encoding"] = "identity"
	if r := e.post("/v1/webhooks/defender", samples(t)[domain.SourceDefender], h); r.status != http.StatusAccepted {
		t.Errorf("identity: %d %s", r.status, r.body)
	}
}
