package dispatch

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
)

// TestPollTurnGatesPolling checks that with several replicas only the one
// holding the poll turn polls, that a lost turn is given up and asked for
// again, and that a held turn is released when the dispatcher stops.
func TestPollTurnGatesPolling(t *testing.T) {
	e := newEnv(t, envOpts{sim: defendersim.Options{PendingFor: 50 * time.Millisecond, InProgressFor: time.Hour}})
	var (
		allowed  atomic.Bool
		asked    atomic.Int64
		released atomic.Int64
		mu       sync.Mutex
		lost     chan struct{}
	)
	e.turn = func(ctx context.Context) (<-chan struct{}, func(), bool, error) {
		asked.Add(1)
		if !allowed.Load() {
			return nil, nil, false, nil
		}
		mu.Lock()
		defer mu.Unlock()
		lost = make(chan struct{})
		var once sync.Once
		return lost, func() { once.Do(func() { released.Add(1) }) }, true, nil
	}
	var receipts []string
	for i := range 3 {
		r, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
		receipts = append(receipts, r)
	}
	stop := start(t, e.dispatcher(t, Options{PollInterval: 20 * time.Millisecond}))
	for _, r := range receipts {
		e.waitJob(t, r, domain.JobSubmitted)
	}
	polls := func() int { return len(apiRequests(e.sim, http.MethodGet, "/api/machineactions")) }

	// Two ticks refused the turn: the first tick's poll, had it polled
	// anyway, ended before the second asked.
	n := asked.Load()
	testutil.WaitFor(t, "the dispatcher to ask for the turn twice", func() bool { return asked.Load() >= n+2 })
	if n := polls(); n != 0 {
		t.Fatalf("%d polls without the turn, want 0", n)
	}

	allowed.Store(true)
	testutil.WaitFor(t, "a poll once the turn is granted", func() bool { return polls() > 0 })

	// The turn is lost (the replica's database session died): the
	// dispatcher must release it and ask again before polling on.
	askedBefore := asked.Load()
	mu.Lock()
	close(lost)
	mu.Unlock()
	testutil.WaitFor(t, "the lost turn to be released and asked for again", func() bool {
		return released.Load() == 1 && asked.Load() > askedBefore
	})

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if released.Load() != 2 {
		t.Errorf("released %d turns, want 2 (the lost one and the one held at stop)", released.Load())
	}
}
