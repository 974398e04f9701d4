package handlers

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/internal/testutil"
)

// replayRun drives a replay cache the way decodeRequest does (reserve, then
// the ingest limiter, release when the limiter refuses) with senders
// offering more than the limit: one delivery every 1/rate, and every
// fourth tick one more that the limiter refuses. Timestamps are signed
// ahead of the clock by ahead (0: senders in step). The clock is fake: the
// run is as fast as the machine.
type replayRun struct {
	t     *testing.T
	rc    *replayCache
	lim   *rate.Limiter
	clock *testutil.Clock
	ahead time.Duration
	start time.Time

	seq      uint64
	admitted int
	refused  int
	// admittedUntil counts the admitted keys by expiry second, from the
	// first one's, to check what the cache holds.
	admittedUntil []int
	firstUntil    int64
	peak          int
	last          [][32]byte
}

func newReplayRun(t *testing.T, perSecond float64, burst, maxInFlight int, ahead time.Duration) *replayRun {
	lim := rate.NewLimiter(rate.Limit(perSecond), burst)
	return &replayRun{
		t: t, lim: lim, clock: testutil.NewClock(), ahead: ahead,
		rc: newReplayCache(replayCapacity(lim, maxInFlight)),
	}
}

// offer sends one signed delivery at the clock's time and reports whether
// the limiter admitted it. A delivery refused for room in the replay cache
// fails the test: the limiter would have admitted it.
func (r *replayRun) offer() bool {
	r.t.Helper()
	now := r.clock.Now()
	r.seq++
	var mac [8]byte
	binary.BigEndian.PutUint64(mac[:], r.seq)
	until := now.Truncate(time.Second).Add(r.ahead + signatureSkew + time.Second)
	key := replayKeyFor(domain.SourceSentinel, mac[:], until)
	ok, full := r.rc.reserve(key, until, now)
	if full {
		r.t.Fatalf("delivery %d at +%s refused for room (503) after %d admitted: the cache holds %d of %d",
			r.seq, now.Sub(r.start), r.admitted, r.rc.n, r.rc.max)
	}
	if !ok {
		r.t.Fatalf("delivery %d: a new signature taken for a replay", r.seq)
	}
	if !r.lim.AllowN(now, 1) {
		r.rc.release(key)
		r.refused++
		return false
	}
	r.admitted++
	if r.admittedUntil == nil {
		r.firstUntil = until.Unix()
	}
	for i := until.Unix() - r.firstUntil; int64(len(r.admittedUntil)) <= i; {
		r.admittedUntil = append(r.admittedUntil, 0)
	}
	r.admittedUntil[until.Unix()-r.firstUntil]++
	r.peak = max(r.peak, r.rc.n)
	if len(r.last) == 64 {
		r.last = r.last[1:]
	}
	r.last = append(r.last, key)
	return true
}

// run offers deliveries at the limit for d: the burst at once, then one
// every 1/rate with an extra refused one every fourth tick.
func (r *replayRun) run(d time.Duration) {
	r.t.Helper()
	r.start = r.clock.Now()
	for range r.lim.Burst() {
		if !r.offer() {
			r.t.Fatal("the burst was refused")
		}
	}
	step := time.Duration(float64(time.Second) / float64(r.lim.Limit()))
	for i := 0; time.Duration(i)*step < d; i++ {
		r.clock.Advance(step)
		if !r.offer() {
			r.t.Fatalf("a delivery at the limit was refused by the limiter at +%s", r.clock.Now().Sub(r.start))
		}
		if i%4 == 0 && r.offer() {
			r.t.Fatalf("a delivery above the limit was admitted at +%s", r.clock.Now().Sub(r.start))
		}
	}
}

// held is how many admitted keys the cache must still hold: those whose
// expiry second has not passed.
func (r *replayRun) held() int {
	n := 0
	for i, c := range r.admittedUntil {
		if r.firstUntil+int64(i) >= r.clock.Now().Unix() {
			n += c
		}
	}
	return n
}

// checkReplaysRefused checks the last admitted signatures are refused.
func (r *replayRun) checkReplaysRefused() {
	r.t.Helper()
	for _, k := range r.last {
		until := time.Unix(int64(binary.BigEndian.Uint64(k[24:])), 0)
		if ok, full := r.rc.reserve(k, until, r.clock.Now()); ok || full {
			r.t.Fatalf("replay of an admitted signature: ok %v full %v", ok, full)
		}
	}
}

// TestReplayAtIngestLimit sends signed deliveries at the default ingest
// limit (5,000/s, burst 5,000) for two minutes, more than 2^19 of them,
// with senders also offering a quarter more that the limiter refuses. None
// may be refused for room in the replay cache. The cache used to hold at
// most 2^19 keys, counting those of deliveries the limiter had refused:
// this run filled it after 83 s, and every signed delivery after that got
// a 503 until keys expired. (TestReplayAtIngestLimitSignedAhead runs past
// the expiry.)
func TestReplayAtIngestLimit(t *testing.T) {
	srv := config.Defaults().Server
	r := newReplayRun(t, srv.IngestPerSecond, srv.IngestBurst, srv.MaxInFlight, 0)
	r.run(2 * time.Minute)
	if r.admitted <= 1<<19 {
		t.Fatalf("only %d admitted; the test must exceed the old bound of 2^19", r.admitted)
	}
	if r.refused == 0 {
		t.Fatal("no delivery above the limit was offered")
	}
	r.checkReplaysRefused()
	// The cache holds exactly the admitted keys not yet expired: refused
	// deliveries were released and expired seconds dropped whole.
	if held := r.held(); r.rc.n != held {
		t.Errorf("cache holds %d keys, want the %d admitted and unexpired", r.rc.n, held)
	}
	t.Logf("%d admitted, %d refused by the limiter, %d held at the end (peak %d, capacity %d)",
		r.admitted, r.refused, r.rc.n, r.peak, r.rc.max)
}

// TestReplayAtIngestLimitSignedAhead is the worst case for the cache:
// every sender signs the full skew ahead, so each key lives twice the skew.
// It runs for twice that, so keys expire and the cache reaches its steady
// state. A lower limit keeps the run short; the capacity scales with it.
func TestReplayAtIngestLimitSignedAhead(t *testing.T) {
	r := newReplayRun(t, 200, 400, 8, signatureSkew)
	r.run(2 * replayRetention)
	r.checkReplaysRefused()
	if held := r.held(); r.rc.n != held {
		t.Errorf("cache holds %d keys, want the %d admitted and unexpired", r.rc.n, held)
	}
	if most := int(replayRetention/time.Second) + 1; len(r.rc.bySecond) > most {
		t.Errorf("cache has %d seconds' sets, want at most %d: expired ones were not dropped", len(r.rc.bySecond), most)
	}
	// The capacity is the bound, and a tight one: the run comes near it.
	if limit := 400 + 200*int(2*signatureSkew/time.Second); r.peak < limit {
		t.Errorf("peak %d below burst + rate × twice the skew = %d: the run did not reach the worst case", r.peak, limit)
	}
	t.Logf("%d admitted, peak %d of capacity %d", r.admitted, r.peak, r.rc.max)
}

func TestReplayCapacity(t *testing.T) {
	srv := config.Defaults().Server
	def := rate.NewLimiter(rate.Limit(srv.IngestPerSecond), srv.IngestBurst)
	cases := []struct {
		name string
		lim  *rate.Limiter
		want int
	}{
		{"no limiter: unbounded", nil, 0},
		{"infinite rate: unbounded", rate.NewLimiter(rate.Inf, 0), 0},
		{"default limit", def, srv.IngestBurst + int(srv.IngestPerSecond)*602 + srv.MaxInFlight + 1},
		{"a low limit gets the floor", rate.NewLimiter(0.5, 1), minReplayEntries},
	}
	for _, c := range cases {
		if got := replayCapacity(c.lim, srv.MaxInFlight); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// TestReplayRelease: a released key frees its room at once, whether its
// second is named in the key (replayKeyFor) or not.
func TestReplayRelease(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	rc := newReplayCache(1)
	until := now.Add(signatureSkew + time.Second)
	k := replayKeyFor("sentinel", []byte("mac"), until)
	if ok, full := rc.reserve(k, until, now); !ok || full {
		t.Fatalf("reserve: ok %v full %v", ok, full)
	}
	rc.release(k)
	if rc.n != 0 || len(rc.bySecond[until.Unix()]) != 0 {
		t.Fatalf("after release: %d held", rc.n)
	}
	other := [32]byte{1}
	if ok, full := rc.reserve(other, until, now); !ok || full {
		t.Fatalf("reserve after release: ok %v full %v", ok, full)
	}
	rc.release(other)
	if rc.n != 0 {
		t.Fatalf("a key without its second: %d held after release", rc.n)
	}
	// The room is free again, and the released signature may be retried.
	if ok, full := rc.reserve(k, until, now); !ok || full {
		t.Fatalf("retry after release: ok %v full %v", ok, full)
	}
}

// TestSignedDeliveryRefusedByLimiterMayRetry: a signed delivery the ingest
// limiter refuses (429) does not burn its signature; the sender's retry
// is accepted, and a replay after that is refused.
func TestSignedDeliveryRefusedByLimiterMayRetry(t *testing.T) {
	e := newEnv(t, withLimiter(rate.NewLimiter(1, 1)))
	body := samples(t)[domain.SourceSentinel]
	first := sign(hmacSecret, e.clock.Now(), body)
	if r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: first}); r.status != http.StatusAccepted {
		t.Fatalf("first: %d %s", r.status, r.body)
	}
	e.clock.Advance(100 * time.Millisecond)
	sig := sign(hmacSecret, e.clock.Now().Add(time.Second), body)
	problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig}), http.StatusTooManyRequests, TypeRateLimited)
	e.clock.Advance(time.Second)
	if r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig}); r.status != http.StatusAccepted {
		t.Fatalf("retry after 429: %d %s", r.status, r.body)
	}
	problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sig}), http.StatusUnauthorized, TypeUnauthorized)
	problemBody(t, e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: first}), http.StatusUnauthorized, TypeUnauthorized)
}

// nopStore accepts every delivery at once, so that a benchmark measures
// the HTTP layer.
type nopStore struct{}

func (nopStore) Ingest(context.Context, store.Delivery) (store.IngestResult, error) {
	return store.IngestResult{Receipt: "r", Decisions: []store.DecisionOutcome{}}, nil
}
func (nopStore) Receipt(context.Context, string) (*store.ReceiptDetail, error) {
	return nil, store.ErrNotFound
}
func (nopStore) ListScans(context.Context, store.ScanQuery) ([]store.ScanRecord, error) {
	return nil, nil
}
func (nopStore) Ping(context.Context) error { return nil }

// BenchmarkHMACReplayAtIngestLimit sends signed generic deliveries through
// the handler at exactly the default ingest limit (5,000/s after a burst of
// 5,000) on a fake clock, over a store that accepts at once. Before timing
// it runs the replay window and ten seconds more (about 1.5 million
// deliveries, past the old bound of 2^19), so that the timed deliveries
// find the replay cache at its steady state. Every delivery must get 202:
// one 503 (no room in the replay cache) or 429 fails the benchmark.
func BenchmarkHMACReplayAtIngestLimit(b *testing.B) {
	const secret = "bench-hmac-secret-0123456789abcdef"
	srv := config.Defaults().Server
	clock := testutil.NewClock()
	rs := &holder{}
	rs.rs.Store(loadRules(b))
	h, err := New(Deps{
		Logger: slog.New(slog.DiscardHandler),
		Store:  nopStore{},
		Rules:  rs,
		Sources: map[string]Source{domain.SourceGeneric: {
			Secrets: config.SourceSecrets{HMAC: []byte(secret)},
			Alert:   alert.Options{Generic: genericMapping},
		}},
		IngestLimiter: rate.NewLimiter(rate.Limit(srv.IngestPerSecond), srv.IngestBurst),
		MaxInFlight:   srv.MaxInFlight,
		Now:           clock.Now,
	})
	if err != nil {
		b.Fatal(err)
	}
	step := time.Duration(float64(time.Second) / srv.IngestPerSecond)
	var n int
	deliver := func() error {
		n++
		body := []byte(`{"id":"bench-` + strconv.Itoa(n) + `","sev":"low","title":"t","host":"h.example.com"}`)
		req := httptest.NewRequest(http.MethodPost, "/v1/webhooks/generic", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(SignatureHeader, sign(secret, clock.Now(), body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			return fmt.Errorf("delivery %d at +%s: %d %s", n, time.Duration(n)*step, w.Code, w.Body)
		}
		return nil
	}
	for range srv.IngestBurst {
		if err := deliver(); err != nil {
			b.Fatal(err)
		}
	}
	warm := int((signatureSkew + 10*time.Second) / step)
	for range warm {
		clock.Advance(step)
		if err := deliver(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clock.Advance(step)
		if err := deliver(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(srv.IngestBurst+warm), "warmup-202s")
}
