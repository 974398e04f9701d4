package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseParams(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	p, err := parseParams(env(nil))
	if err != nil || p.parallel != 0 || p.serial != 0 || p.groupDelay != 2*time.Millisecond || p.maxGroup != 256 {
		t.Fatalf("defaults: %+v, %v", p, err)
	}
	p, err = parseParams(env(map[string]string{"MODEL_PARALLEL": "50us", "MODEL_SERIAL": "350us", "MODEL_GROUP_DELAY": "4ms", "MODEL_MAX_GROUP": "32"}))
	if err != nil || p.parallel != 50*time.Microsecond || p.serial != 350*time.Microsecond || p.groupDelay != 4*time.Millisecond || p.maxGroup != 32 {
		t.Fatalf("set: %+v, %v", p, err)
	}
	for k, v := range map[string]string{"MODEL_SERIAL": "fast", "MODEL_PARALLEL": "-1ms", "MODEL_MAX_GROUP": "0"} {
		if _, err := parseParams(env(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: err %v, want one naming it", k, v, err)
		}
	}
}

// The serial stage answers every delivery, in groups: with a group delay of
// 50 ms and 20 deliveries at once, the first goes alone and the others,
// queued during its delay, go together.
func TestWebhookGroupsDeliveries(t *testing.T) {
	m := newModel(params{groupDelay: 50 * time.Millisecond, maxGroup: 256}, calibrate())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.serialStage(ctx)
	srv := httptest.NewServer(m.handler())
	defer srv.Close()

	var wg sync.WaitGroup
	receipts := make(chan string, 20)
	for range 20 {
		wg.Go(func() {
			res, err := http.Post(srv.URL+"/v1/webhooks/defender", "application/json", strings.NewReader(`{"id":"x"}`))
			if err != nil {
				t.Error(err)
				return
			}
			defer res.Body.Close()
			var body struct{ Receipt string }
			if res.StatusCode != http.StatusAccepted || json.NewDecoder(res.Body).Decode(&body) != nil {
				t.Errorf("status %d", res.StatusCode)
				return
			}
			receipts <- body.Receipt
		})
	}
	wg.Wait()
	close(receipts)
	seen := map[string]bool{}
	for r := range receipts {
		if seen[r] || !strings.HasPrefix(r, "model-") {
			t.Errorf("receipt %q repeated or malformed", r)
		}
		seen[r] = true
	}
	if len(seen) != 20 {
		t.Fatalf("%d receipts, want 20", len(seen))
	}
	if g := m.groups.Load(); g < 1 || g > 5 {
		t.Errorf("20 deliveries in %d groups: want a few", g)
	}

	res, err := http.Get(srv.URL + "/readyz")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("readyz: %v %v", res, err)
	}
	res.Body.Close()
}

// The work asked of burn is proportional to the duration, from a
// calibration that found some work per microsecond.
func TestBurnWorkScales(t *testing.T) {
	per := calibrate()
	if per <= 0 {
		t.Fatalf("calibrate: %v rounds per µs", per)
	}
	m := newModel(params{}, per)
	if m.rounds(0) != 0 {
		t.Errorf("rounds(0) = %d", m.rounds(0))
	}
	if short, long := m.rounds(5*time.Millisecond), m.rounds(20*time.Millisecond); short == 0 || long < 4*short-4 || long > 4*short+4 {
		t.Errorf("rounds(5ms) %d, rounds(20ms) %d: want 4x", short, long)
	}
	m.burn(time.Millisecond) // runs, returns
}

func TestRunUsage(t *testing.T) {
	err := run(context.Background(), []string{"serve"}, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "usage") {
		t.Fatalf("err %v, want usage", err)
	}
}
