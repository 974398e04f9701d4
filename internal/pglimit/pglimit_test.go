package pglimit

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/scanhook/scanhook/internal/defender"
)

func TestNewRejectsBadOptions(t *testing.T) {
	// A pool that never connects: options are checked before any query.
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ok := []defender.Window{{Limit: 1, Length: time.Second}}
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no windows", Options{}, "options.windows"},
		{"zero limit", Options{Windows: []defender.Window{{Limit: 0, Length: time.Second}}}, "options.windows[0]"},
		{"zero length", Options{Windows: []defender.Window{ok[0], {Limit: 5, Length: 0}}}, "options.windows[1]"},
		{"negative stale", Options{Windows: ok, StaleAfter: -time.Second}, "options.stale_after"},
		{"negative poll", Options{Windows: ok, PollInterval: -time.Second}, "options.poll_interval"},
		{"negative timeout", Options{Windows: ok, QueryTimeout: -time.Second}, "options.query_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), pool, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %s", err, tc.want)
			}
		})
	}
	if _, err := New(context.Background(), nil, Options{Windows: ok}); err == nil {
		t.Fatal("New with a nil pool: no error")
	}
}

func TestOpenRejectsBadDSN(t *testing.T) {
	_, err := Open(context.Background(), "postgres://u:secret@[::1", Options{Windows: []defender.Window{{Limit: 1, Length: time.Second}}})
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

func TestReplicasMigrateTogether(t *testing.T) {
	db := newTestDB(t)
	opts := Options{Windows: []defender.Window{{Limit: 5, Length: time.Second}}}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			l, err := Open(context.Background(), db.dsn, opts)
			if err != nil {
				errs <- err
				return
			}
			errs <- l.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
	}
	// And again on an existing table.
	l := db.open(t, opts)
	if err := l.Wait(ctxT(t, 5*time.Second), scan); err != nil {
		t.Fatal(err)
	}
	l.Done(scan)
}

// The windows' edges as the strict reading puts them: a completed call
// frees its slot exactly one window after its completion; calls in flight
// hold theirs; families are counted apart.
func TestAdmissionFollowsTheWindow(t *testing.T) {
	db := newTestDB(t)
	const length = 600 * time.Millisecond
	l := db.open(t, Options{Windows: []defender.Window{{Limit: 3, Length: length}}, Margin: -1})
	ctx := ctxT(t, 20*time.Second)

	for i := range 3 {
		// Calls in flight take room as completed ones do.
		if n, d, err := l.Room(ctx, scan); err != nil || n != 3-i || d != 0 {
			t.Fatalf("Room with %d in flight = %d, %s, %v; want %d, 0", i, n, d, err, 3-i)
		}
		if err := l.Wait(ctx, scan); err != nil {
			t.Fatal(err)
		}
	}
	// Three in flight: the window is full for at least a whole length.
	if d, err := l.Delay(ctx, scan); err != nil || d != length {
		t.Fatalf("Delay with 3 in flight = %s, %v; want %s (a lower bound)", d, err, length)
	}
	if n, d, err := l.Room(ctx, scan); err != nil || n != 0 || d != length {
		t.Fatalf("Room with 3 in flight = %d, %s, %v; want 0, %s", n, d, err, length)
	}
	if n, d, err := l.Room(ctx, defender.MachineReads); err != nil || n != 3 || d != 0 {
		t.Fatalf("Room of machine reads = %d, %s, %v; want 3, 0", n, d, err)
	}
	// Another family is not affected.
	if d, err := l.Delay(ctx, defender.MachineReads); err != nil || d != 0 {
		t.Fatalf("Delay of machine reads = %s, %v; want 0", d, err)
	}
	if err := l.Wait(ctx, defender.MachineReads); err != nil {
		t.Fatal(err)
	}
	l.Done(defender.MachineReads)
	// A deadline before the predicted wait: refused at once, nothing taken.
	short, cancel := context.WithTimeout(ctx, length/2)
	err := l.Wait(short, scan)
	cancel()
	var le *defender.LimitError
	if !errors.As(err, &le) || le.Family != scan || le.Wait < length/2 || le.Err != nil {
		t.Fatalf("Wait with a short deadline = %v; want a LimitError for %s, at once (no ctx error), predicting about %s", err, scan, length)
	}

	for range 3 {
		l.Done(scan)
	}
	calls := db.calls(t)
	var scans []call
	for _, c := range calls {
		if c.family == scan.String() {
			scans = append(scans, c)
		}
		if c.done == nil {
			t.Fatalf("call %d still in flight after Done", c.id)
		}
	}
	if len(scans) != 3 {
		t.Fatalf("%d scan calls recorded, want 3 (a refused Wait takes nothing)", len(scans))
	}
	d, err := l.Delay(ctx, scan)
	if err != nil || d <= 0 || d > length {
		t.Fatalf("Delay with 3 completed = %s, %v; want in (0, %s]", d, err, length)
	}
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	defer l.Done(scan)
	calls = db.calls(t)
	fourth := calls[len(calls)-1]
	var firstDone time.Time
	for _, c := range scans {
		if firstDone.IsZero() || c.done.Before(firstDone) {
			firstDone = *c.done
		}
	}
	if fourth.admitted.Before(firstDone.Add(length)) {
		t.Fatalf("4th call admitted at %s, before the first completion %s + %s", fourth.admitted, firstDone, length)
	}
}

// Three replicas, 300 goroutines, two windows: no window ever holds more
// than its limit, read from the table on PostgreSQL's clock and from the
// callers' own clocks; and each window is filled to its limit, so the
// limiter is not merely slow.
func TestReplicasNeverExceedTheLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~10s")
	}
	db := newTestDB(t)
	windows := []defender.Window{{Limit: 20, Length: 500 * time.Millisecond}, {Limit: 50, Length: 2 * time.Second}}
	var ls []*Limiter
	for range 3 {
		ls = append(ls, db.open(t, Options{Windows: windows}))
	}
	ctx := ctxT(t, 60*time.Second)
	const callers = 300
	starts := make([]time.Time, callers)
	ends := make([]time.Time, callers)
	errs := make([]error, callers)
	begin := time.Now()
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			l := ls[i%len(ls)]
			if err := l.Wait(ctx, scan); err != nil {
				errs[i] = err
				return
			}
			starts[i] = time.Now()
			time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond) // the call
			ends[i] = time.Now()
			l.Done(scan)
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	calls := db.calls(t)
	if len(calls) != callers {
		t.Fatalf("%d calls recorded, want %d", len(calls), callers)
	}
	owners := map[string]int{}
	for _, c := range calls {
		if c.done == nil {
			t.Fatalf("call %d never completed", c.id)
		}
		owners[c.owner]++
	}
	if len(owners) != 3 {
		t.Fatalf("calls came from %d owners, want 3: %v", len(owners), owners)
	}
	for _, w := range windows {
		length := w.Length + w.Length/100 // the default margin
		got := maxOccupancy(calls, length)
		if got+1 > w.Limit {
			t.Errorf("window %d per %s: an admission saw %d calls already counted (table)", w.Limit, w.Length, got)
		}
		if got+1 < w.Limit {
			t.Errorf("window %d per %s: the fullest admission saw only %d calls: the limit was never reached", w.Limit, w.Length, got)
		}
		// Wherever Defender counts a call between its admission and its
		// completion, no window of Length holds more than Limit.
		if n := maxInWindow(starts, w.Length); n > w.Limit {
			t.Errorf("window %d per %s: %d calls started within one window", w.Limit, w.Length, n)
		}
		if n := maxInWindow(ends, w.Length); n > w.Limit {
			t.Errorf("window %d per %s: %d calls ended within one window", w.Limit, w.Length, n)
		}
	}
	// The floor: 300 calls at 50 per 2.02s need 5 full long windows, and
	// the last 50 go out as 20, 20, 10 one short window apart.
	t.Logf("%d calls through 3 replicas in %s (at least %s by the limits)", callers, elapsed.Round(time.Millisecond), 5*2020*time.Millisecond+2*505*time.Millisecond)
}

func TestWaitEndsWithItsContext(t *testing.T) {
	db := newTestDB(t)
	l := db.open(t, Options{Windows: []defender.Window{{Limit: 1, Length: 10 * time.Second}}})
	other := db.open(t, Options{Windows: []defender.Window{{Limit: 1, Length: 10 * time.Second}}})
	ctx := ctxT(t, 20*time.Second)
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	defer l.Done(scan)

	// Cancelled while waiting, on the replica that polls and on one whose
	// waiter queues behind it.
	for _, lim := range []*Limiter{other, l} {
		cctx, cancel := context.WithCancel(ctx)
		res := make(chan error, 2)
		for range 2 {
			go func() { res <- lim.Wait(cctx, scan) }()
		}
		time.AfterFunc(100*time.Millisecond, cancel)
		for range 2 {
			err := <-res
			var le *defender.LimitError
			if !errors.Is(err, context.Canceled) || errors.As(err, &le) {
				t.Fatalf("Wait cancelled: err = %v, want one wrapping context.Canceled", err)
			}
		}
	}
	// Already cancelled: no query at all.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := other.Wait(done, scan); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a cancelled context: %v", err)
	}
	// A deadline that passes while queued behind the polling waiter is a
	// local throttle, not a failure.
	dctx, dcancel := context.WithTimeout(ctx, 11*time.Second)
	defer dcancel()
	first := make(chan error, 1)
	go func() { first <- other.Wait(dctx, scan) }() // polls: 10s < 11s
	time.Sleep(100 * time.Millisecond)
	sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := other.Wait(sctx, scan)
	scancel()
	var le *defender.LimitError
	if !errors.As(err, &le) || le.Wait <= 0 {
		t.Fatalf("queued Wait with a short deadline = %v; want a LimitError", err)
	}
	dcancel()
	<-first
	if n := len(db.calls(t)); n != 1 {
		t.Fatalf("%d calls recorded, want only the first", n)
	}
}

// A replica that dies between Wait and Done leaves its calls in flight;
// after StaleAfter they count as completed then, and the family moves on.
func TestCrashedCallsExpire(t *testing.T) {
	db := newTestDB(t)
	const (
		stale  = time.Second // long enough that Delay below runs before it
		length = 400 * time.Millisecond
	)
	opts := Options{Windows: []defender.Window{{Limit: 2, Length: length}}, Margin: -1, StaleAfter: stale, PollInterval: 50 * time.Millisecond}
	ctx := ctxT(t, 20*time.Second)

	pool, err := pgxpool.New(ctx, db.dsn)
	if err != nil {
		t.Fatal(err)
	}
	crashed, err := New(ctx, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := crashed.Wait(ctx, scan); err != nil {
			t.Fatal(err)
		}
	}
	pool.Close() // dies: no Done, no Close

	l := db.open(t, opts)
	if d, err := l.Delay(ctx, scan); err != nil || d != length {
		t.Fatalf("Delay behind 2 calls in flight = %s, %v; want the lower bound %s", d, err, length)
	}
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	l.Done(scan)
	calls := db.calls(t)
	if len(calls) != 3 || calls[0].done != nil || calls[1].done != nil {
		t.Fatalf("calls = %+v; want the 2 crashed ones still without done_at, then ours", calls)
	}
	if free := calls[0].admitted.Add(stale + length); calls[2].admitted.Before(free) {
		t.Fatalf("admitted at %s, before the crashed call's expiry %s", calls[2].admitted, free)
	}
}

func TestDoneAndClose(t *testing.T) {
	db := newTestDB(t)
	opts := Options{Windows: []defender.Window{{Limit: 10, Length: time.Minute}}}
	l := db.open(t, opts)
	ctx := ctxT(t, 10*time.Second)
	for range 3 {
		if err := l.Wait(ctx, scan); err != nil {
			t.Fatal(err)
		}
	}
	l.Done(scan)
	l.Done(defender.Family(99)) // unknown: nothing
	calls := db.calls(t)
	if calls[0].done == nil || calls[1].done != nil || calls[2].done != nil {
		t.Fatalf("after one Done: %+v; want the oldest call completed", calls)
	}
	if err := l.Wait(ctx, defender.Family(99)); err == nil {
		t.Fatal("Wait on an unknown family: no error")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range db.calls(t) {
		if c.done == nil {
			t.Fatalf("call %d still in flight after Close", c.id)
		}
	}
	l.Done(scan) // after Close: nothing, no panic
	if err := l.Wait(ctx, scan); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close = %v, want ErrClosed", err)
	}
	if _, _, err := l.PollTurn(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("PollTurn after Close = %v, want ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestDoneRetriedWhenTheUpdateFails(t *testing.T) {
	db := newTestDB(t)
	l := db.open(t, Options{Windows: []defender.Window{{Limit: 10, Length: time.Minute}}, QueryTimeout: 500 * time.Millisecond})
	ctx := ctxT(t, 10*time.Second)
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	// Make the update fail: the table is locked past the query timeout.
	tx, err := db.admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE pglimit_calls IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	l.Done(scan)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if c := db.calls(t); c[0].done != nil {
		t.Fatal("Done succeeded under the lock; the test proves nothing")
	}
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	defer l.Done(scan)
	if c := db.calls(t); len(c) != 2 || c[0].done == nil {
		t.Fatalf("calls = %+v; want the first completed by the next admission", c)
	}
}

func TestPruneDropsWhatNoWindowSees(t *testing.T) {
	db := newTestDB(t)
	l := db.open(t, Options{Windows: []defender.Window{{Limit: 100, Length: 500 * time.Millisecond}}, Margin: -1, StaleAfter: 250 * time.Millisecond, PruneEvery: time.Hour})
	ctx := ctxT(t, 10*time.Second)
	for i := range 4 {
		if err := l.Wait(ctx, scan); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			l.Done(scan)
		}
	}
	// Two completed, two in flight (the in-flight ones count as completed
	// at admitted+250ms): all out of the window by 750ms.
	if n, err := l.Prune(ctx); err != nil || n != 0 {
		t.Fatalf("Prune at once = %d, %v; want 0", n, err)
	}
	time.Sleep(800 * time.Millisecond)
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	defer l.Done(scan)
	if n, err := l.Prune(ctx); err != nil || n != 4 {
		t.Fatalf("Prune later = %d, %v; want the 4 old calls", n, err)
	}
	if c := db.calls(t); len(c) != 1 {
		t.Fatalf("%d calls left, want the newest", len(c))
	}
}

func TestCloseWakesWaiters(t *testing.T) {
	db := newTestDB(t)
	l := db.open(t, Options{Windows: []defender.Window{{Limit: 1, Length: time.Hour}}})
	ctx := ctxT(t, 20*time.Second)
	if err := l.Wait(ctx, scan); err != nil {
		t.Fatal(err)
	}
	l.Done(scan)
	// The next call fits in an hour: one waiter sleeps on that, one queues.
	res := make(chan error, 2)
	for range 2 {
		go func() { res <- l.Wait(context.Background(), scan) }()
	}
	time.Sleep(100 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-res:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("Wait ended by Close: %v, want ErrClosed", err)
			}
		case <-ctx.Done():
			t.Fatal("Close left a Wait sleeping")
		}
	}
}
