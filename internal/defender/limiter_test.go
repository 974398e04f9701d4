package defender

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
)

// newWindowLimiter is a SlidingWindowLimiter on a fake clock set to epoch;
// margin as SlidingWindowOptions.Margin (0: the default, -1: none).
func newWindowLimiter(t *testing.T, margin time.Duration, windows ...Window) (*SlidingWindowLimiter, *fakeClock) {
	t.Helper()
	clock := newClockAt(epoch)
	l, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: windows, Margin: margin, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l, clock
}

func (l *SlidingWindowLimiter) try(f Family) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.admit(&l.families[f])
}

// A token bucket with burst equal to the per-minute limit lets twice the
// limit through in one sliding minute; the sliding window does not. This is
// the reason the default limiter is not golang.org/x/time/rate.
func TestSlidingWindowVersusTokenBucket(t *testing.T) {
	const limit = 100
	start := epoch

	bucket := rate.NewLimiter(rate.Every(time.Minute/limit), limit)
	admitted := 0
	for ms := 0; ms < 60_000; ms += 100 {
		for bucket.AllowN(start.Add(time.Duration(ms)*time.Millisecond), 1) {
			admitted++
		}
	}
	if admitted < 2*limit-1 {
		t.Fatalf("token bucket admitted %d in one minute; the premise is wrong", admitted)
	}

	l, clock := newWindowLimiter(t, 0, Window{Limit: limit, Length: time.Minute}, Window{Limit: 1500, Length: time.Hour})
	admitted = 0
	for ms := 0; ms < 60_000; ms += 100 {
		clock.Set(epoch.Add(time.Duration(ms) * time.Millisecond))
		for {
			if _, ok := l.try(ScanActions); !ok {
				break
			}
			l.Done(ScanActions)
			admitted++
		}
	}
	if admitted != limit {
		t.Fatalf("sliding window admitted %d in one minute, want %d", admitted, limit)
	}
	// Only after the first calls have been out for a minute plus the 1%
	// margin does a new one go.
	clock.Set(epoch.Add(time.Minute + 500*time.Millisecond))
	if wait, ok := l.try(ScanActions); ok || wait != 100*time.Millisecond {
		t.Fatalf("at 60.5s: ok %v wait %s, want a 100ms wait", ok, wait)
	}
	clock.Set(epoch.Add(time.Minute + 600*time.Millisecond))
	if _, ok := l.try(ScanActions); !ok {
		t.Fatal("at 60.6s the oldest call has left the window")
	}
	// Families are independent.
	if _, ok := l.try(MachineReads); !ok {
		t.Fatal("machine reads blocked by scans")
	}
}

func TestSlidingWindowCountsInFlightCalls(t *testing.T) {
	l, clock := newWindowLimiter(t, -1, Window{Limit: 2, Length: time.Second})
	for range 2 {
		if _, ok := l.try(ActionReads); !ok {
			t.Fatal("first two calls blocked")
		}
	}
	// Both in flight: only a completion can free a slot, however long ago
	// they were admitted, and the completion then counts for a whole
	// window: the predicted wait is at least the window.
	clock.Set(epoch.Add(time.Hour))
	if wait, ok := l.try(ActionReads); ok || wait != time.Second {
		t.Fatalf("with 2 in flight: ok %v wait %s", ok, wait)
	}
	// One completes at 1h: it counts from its completion, not admission.
	l.Done(ActionReads)
	clock.Set(epoch.Add(time.Hour + 400*time.Millisecond))
	if wait, ok := l.try(ActionReads); ok || wait != 600*time.Millisecond {
		t.Fatalf("after a completion: ok %v wait %s, want 600ms", ok, wait)
	}
	clock.Set(epoch.Add(time.Hour + time.Second))
	if _, ok := l.try(ActionReads); !ok {
		t.Fatal("slot not freed a window after completion")
	}
}

func TestSlidingWindowHourLimit(t *testing.T) {
	l, clock := newWindowLimiter(t, -1, Window{Limit: 100, Length: time.Minute}, Window{Limit: 150, Length: time.Hour})
	admitted := 0
	for m := 0; m < 60; m++ {
		clock.Set(epoch.Add(time.Duration(m) * time.Minute))
		for {
			if _, ok := l.try(ScanActions); !ok {
				break
			}
			l.Done(ScanActions)
			admitted++
		}
	}
	if admitted != 150 {
		t.Fatalf("admitted %d in an hour, want 150", admitted)
	}
	clock.Set(epoch.Add(59 * time.Minute))
	wait, ok := l.try(ScanActions)
	if ok || wait != time.Minute {
		t.Fatalf("ok %v wait %s, want 1m (the first 100 leave at 60m)", ok, wait)
	}
}

func TestSlidingWindowWaitRespectsContext(t *testing.T) {
	l, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{{Limit: 1, Length: time.Hour}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(context.Background(), ScanActions); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Wait(ctx, ScanActions) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want canceled", err)
	}
	if err := l.Wait(context.Background(), Family(99)); err == nil {
		t.Fatal("unknown family accepted")
	}
	for _, bad := range []Window{{0, time.Second}, {1, 0}, {-1, time.Second}} {
		if _, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{bad}}); err == nil {
			t.Errorf("window %+v accepted", bad)
		}
	}
}

// A wait longer than the context's deadline is refused at once with the
// predicted wait; one within the deadline is waited out. Delay predicts
// without taking a slot.
func TestSlidingWindowWaitPastDeadline(t *testing.T) {
	l, clock := newWindowLimiter(t, -1, Window{Limit: 2, Length: time.Minute}, Window{Limit: 3, Length: time.Hour})
	if d := l.Delay(ScanActions); d != 0 {
		t.Fatalf("Delay on an empty limiter = %s", d)
	}
	for range 2 {
		if err := l.Wait(context.Background(), ScanActions); err != nil {
			t.Fatal(err)
		}
	}
	// Two in flight fill the minute: at least a minute from now.
	if d := l.Delay(ScanActions); d != time.Minute {
		t.Fatalf("Delay with the minute full of calls in flight = %s, want 1m", d)
	}
	l.Done(ScanActions)
	l.Done(ScanActions)
	clock.Set(epoch.Add(20 * time.Second))
	cases := []struct {
		name    string
		timeout time.Duration
		want    time.Duration
	}{
		{"minute window", 30 * time.Second, 40 * time.Second},
		{"deadline already past", -time.Second, 40 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			err := l.Wait(ctx, ScanActions)
			var le *LimitError
			if !errors.As(err, &le) || le.Wait != tc.want || le.Family != ScanActions {
				t.Fatalf("Wait = %v, want a LimitError of %s", err, tc.want)
			}
		})
	}
	if d := l.Delay(ScanActions); d != 40*time.Second {
		t.Fatalf("Delay = %s after refused waits, want 40s (nothing taken)", d)
	}
	// The minute passes; the hour window (3) then allows one more call,
	// and after it the wait is until the first call (done at 0) leaves it.
	clock.Set(epoch.Add(time.Minute))
	if err := l.Wait(ctxT(t), ScanActions); err != nil {
		t.Fatalf("Wait after the minute: %v", err)
	}
	l.Done(ScanActions)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var le *LimitError
	if err := l.Wait(ctx, ScanActions); !errors.As(err, &le) || le.Wait != 59*time.Minute {
		t.Fatalf("Wait = %v, want a LimitError of 59m", err)
	}
}

// Real goroutines and timers: admissions never crowd a window, and a
// waiting call is released by a completion.
func TestSlidingWindowConcurrent(t *testing.T) {
	const limit, length = 5, 40 * time.Millisecond
	l, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{{Limit: limit, Length: length}}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var admits []time.Time
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			if err := l.Wait(context.Background(), MachineReads); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			admits = append(admits, time.Now())
			mu.Unlock()
			time.Sleep(time.Millisecond)
			l.Done(MachineReads)
		})
	}
	wg.Wait()
	sort.Slice(admits, func(i, j int) bool { return admits[i].Before(admits[j]) })
	for i := range admits {
		n := 0
		for j := i; j < len(admits) && admits[j].Sub(admits[i]) < length; j++ {
			n++
		}
		if n > limit {
			t.Fatalf("%d admissions within %s from #%d", n, length, i)
		}
	}
}

// 500 concurrent calls across the four families against the simulator's
// own sliding windows: the short windows fill up (so the limiter, not the
// load, is what holds the rate) and not one call is throttled.
// TestThrottledRetryAfter shows the simulator does throttle without it.
func TestRateLimitHoldsUnder500ConcurrentCalls(t *testing.T) {
	rl := defendersim.RateLimit{PerMinute: 20, PerHour: 80, Minute: 400 * time.Millisecond, Hour: 1600 * time.Millisecond}
	lim, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{
		{Limit: rl.PerMinute, Length: rl.Minute}, {Limit: rl.PerHour, Length: rl.Hour},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, defendersim.Options{GenerateMachines: 200, RateLimit: rl, PendingFor: time.Hour},
		func(c *Config, d *Deps) {
			d.Limiter = lim
			c.Timeout = 20 * time.Second // a loaded, race-instrumented machine is slow
		})
	throttled, failed := storm(t, e, 500)
	st := e.sim.Stats()
	if st.Throttled != 0 || throttled != 0 || failed != 0 {
		t.Errorf("simulator answered %d calls 429; client saw %d throttled, %d other failures", st.Throttled, throttled, failed)
	}
	if len(st.Families) != 4 {
		t.Errorf("families = %+v", st.Families)
	}
	for fam, fs := range st.Families {
		if fs.MaxPerMinute > rl.PerMinute || fs.MaxPerHour > rl.PerHour {
			t.Errorf("%s: %d per short window, %d per long window", fam, fs.MaxPerMinute, fs.MaxPerHour)
		}
		if fs.MaxPerMinute != rl.PerMinute {
			t.Errorf("%s: the short window never filled (%d): the test proves nothing", fam, fs.MaxPerMinute)
		}
	}
	if testutil.CollectAndCount(e.client.m.limiterWait) != 4 {
		t.Error("limiter wait not observed for the four families")
	}
	t.Logf("simulator families: %+v", st.Families)
}

// storm sends n concurrent calls spread over the four families.
func storm(t *testing.T, e *env, n int) (throttled, failed int) {
	ctx := ctxT(t)
	machines := e.sim.Machines()
	first, err := e.client.RunAntiVirusScan(ctx, machines[0].ID, domain.ScanQuick, "seed")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := machines[i%len(machines)]
			var err error
			switch i % 4 {
			case 0:
				_, err = e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "storm")
				if KindOf(err) == AlreadyScanning {
					err = nil
				}
			case 1:
				_, err = e.client.GetMachine(ctx, m.ID)
			case 2:
				_, err = e.client.GetAction(ctx, first.ID)
			case 3:
				_, err = e.client.FindMachinesByIP(ctx, m.LastIPAddress, time.Now().Add(-time.Minute))
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case KindOf(err) == Throttled:
				throttled++
			case err != nil:
				failed++
				t.Logf("call failed: %v", err)
			}
		})
	}
	wg.Wait()
	return throttled, failed
}

// Room counts what every window still admits, calls in flight included,
// takes nothing, and when there is none says how long until there is.
func TestSlidingWindowRoom(t *testing.T) {
	l, clock := newWindowLimiter(t, -1, Window{Limit: 3, Length: time.Minute}, Window{Limit: 5, Length: time.Hour})
	ctx := context.Background()
	for _, step := range []struct {
		name      string
		at        time.Duration
		admit     int // calls admitted before looking
		done      int // of those, completed at the time
		wantCalls int
		wantWait  time.Duration
	}{
		{"empty: the minute's limit", 0, 0, 0, 3, 0},
		{"two in flight", 0, 2, 0, 1, 0},
		{"three completed fill the minute", 0, 1, 3, 0, time.Minute},
		{"the minute passes: the hour's two left", time.Minute, 0, 0, 2, 0},
		{"two more completed fill the hour", time.Minute, 2, 2, 0, 59 * time.Minute},
		{"the first three leave the hour", time.Hour, 0, 0, 3, 0},
	} {
		clock.Set(epoch.Add(step.at))
		for range step.admit {
			if err := l.Wait(ctx, ScanActions); err != nil {
				t.Fatalf("%s: Wait: %v", step.name, err)
			}
		}
		for range step.done {
			l.Done(ScanActions)
		}
		for range 2 { // looking twice: Room takes nothing
			calls, wait, err := l.Room(ctx, ScanActions)
			if err != nil || calls != step.wantCalls || wait != step.wantWait {
				t.Fatalf("%s: Room = %d, %s, %v; want %d, %s", step.name, calls, wait, err, step.wantCalls, step.wantWait)
			}
		}
	}
	if calls, _, err := l.Room(ctx, MachineReads); err != nil || calls != 3 {
		t.Errorf("another family's Room = %d, %v; want 3", calls, err)
	}
	if _, _, err := l.Room(ctx, Family(99)); err == nil {
		t.Error("Room of an unknown family: no error")
	}
}
