package pglimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/scanhook/scanhook/internal/defender"
)

var (
	_ defender.CompletionLimiter = (*Limiter)(nil)
	_ defender.RoomLimiter       = (*Limiter)(nil)
)

// ErrClosed is returned by Wait, Delay, Room and PollTurn after Close.
var ErrClosed = errors.New("pglimit: limiter closed")

const (
	markDoneSQL = `UPDATE pglimit_calls SET done_at = clock_timestamp() WHERE id = ANY($1) AND done_at IS NULL`
	// The second key hashes the schema and the family: one lock per
	// family per application.
	lockSQL = `SELECT pg_advisory_xact_lock($1::integer, hashtext(current_schema() || '/' || $2))`
)

func interval(d time.Duration) string {
	return fmt.Sprintf("interval '%d microseconds'", d.Microseconds())
}

// buildAdmitSQL makes the one statement that counts a family's calls on
// PostgreSQL's clock and, unless $3 (peek) is true and when every window
// has room, records a new admission. Its parameters are $1 family, $2
// owner, $3 peek. It returns now, the calls in flight, the new row's id
// (NULL when not admitted) and, per window, the completed calls inside it
// and, when the window is full, the completion time of the call whose
// ageing out makes room (NULL when calls in flight alone fill it).
//
// A call's completion is its done_at; a call in flight for longer than
// stale counts as completed at admitted_at+stale (its replica is presumed
// dead). Completed calls are counted straight off the (family, done_at)
// index, so the cost stays small with a full hour of calls in the table.
func buildAdmitSQL(ws []window, stale time.Duration) string {
	st := interval(stale)
	var b strings.Builder
	fmt.Fprintf(&b, `WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now),
f AS MATERIALIZED (
	SELECT k.admitted_at FROM pglimit_calls k WHERE k.family = $1 AND k.done_at IS NULL
),
s AS MATERIALIZED (
	SELECT c.now, (SELECT count(*) FROM f WHERE f.admitted_at > c.now - %s) AS p`, st)
	for i, w := range ws {
		fmt.Fprintf(&b, `,
	(SELECT count(*) FROM pglimit_calls k WHERE k.family = $1 AND k.done_at > c.now - %[2]s)
		+ (SELECT count(*) FROM f WHERE f.admitted_at <= c.now - %[3]s AND f.admitted_at + %[3]s > c.now - %[2]s) AS d%[1]d`,
			i, interval(w.length), st)
	}
	b.WriteString(`
	FROM c
),
ins AS (
	INSERT INTO pglimit_calls (family, admitted_at, owner)
	SELECT $1, s.now, $2 FROM s WHERE NOT $3::boolean`)
	for i, w := range ws {
		fmt.Fprintf(&b, ` AND s.p + s.d%d < %d`, i, w.limit)
	}
	b.WriteString(`
	RETURNING id
)
SELECT s.now, s.p, (SELECT id FROM ins)`)
	for i, w := range ws {
		// The newest (limit-p)th completed call in the window is the one
		// that must leave for the window to hold limit-1.
		fmt.Fprintf(&b, `,
	s.d%[1]d,
	CASE WHEN s.p < %[2]d AND s.p + s.d%[1]d >= %[2]d THEN (
		SELECT e.eff FROM (
			SELECT k.done_at AS eff FROM pglimit_calls k WHERE k.family = $1 AND k.done_at > s.now - %[3]s
			UNION ALL
			SELECT f.admitted_at + %[4]s FROM f WHERE f.admitted_at <= s.now - %[4]s AND f.admitted_at + %[4]s > s.now - %[3]s
		) e ORDER BY e.eff DESC OFFSET %[2]d - s.p - 1 LIMIT 1)
	END`, i, w.limit, interval(w.length), st)
	}
	b.WriteString(`
FROM s`)
	return b.String()
}

// verdict is the outcome of one check.
type verdict struct {
	admitted bool
	id       int64
	// wait is how long until a call may be admitted; exact when completed
	// calls must age out, a lower bound when calls in flight must
	// complete first.
	wait  time.Duration
	exact bool
	// room is how many more calls every window would admit now (a peek
	// only; 0 when blocked).
	room int
}

func (l *Limiter) familyState(family defender.Family) (*familyState, error) {
	f := l.families[family]
	if f == nil {
		return nil, fmt.Errorf("pglimit: unknown family %d", int(family))
	}
	return f, nil
}

// check runs one admission (peek false) or prediction (peek true) in one
// round trip: the advisory lock and the statement travel as one pipelined
// batch, which PostgreSQL runs as one implicit transaction, so the lock is
// held from before the count until after the insert commits.
func (l *Limiter) check(ctx context.Context, f *familyState, peek bool) (verdict, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return verdict{}, ErrClosed
	}
	// Close waits for checks in progress before it closes the pool.
	l.bg.Add(1)
	defer l.bg.Done()
	undone := l.undone
	l.undone = nil
	l.mu.Unlock()
	// Not the caller's cancellation: once the statement runs, its outcome
	// must be read, or an admitted call would be left without its Done.
	dbctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
	defer cancel()
	v, err := l.runCheck(dbctx, f, peek, undone)
	if err != nil && len(undone) > 0 {
		l.mu.Lock()
		l.undone = append(l.undone, undone...)
		l.mu.Unlock()
	}
	if err != nil || !v.admitted {
		return v, err
	}
	l.mu.Lock()
	if !l.closed {
		f.inflight = append(f.inflight, v.id)
		f.nextFree = time.Time{}
		l.mu.Unlock()
		return v, nil
	}
	l.mu.Unlock()
	// Close ran meanwhile and has marked our calls done already: this one
	// will not be made, so it completes now too.
	if _, err := l.pool.Exec(dbctx, markDoneSQL, []int64{v.id}); err != nil {
		l.log.Warn("rate limiter: closing: recording an unused admission failed; it expires by itself", "family", f.name, "error", err.Error())
	}
	return verdict{}, ErrClosed
}

func (l *Limiter) runCheck(ctx context.Context, f *familyState, peek bool, undone []int64) (verdict, error) {
	b := &pgx.Batch{}
	if len(undone) > 0 {
		b.Queue(markDoneSQL, undone)
	}
	if !peek {
		b.Queue(lockSQL, admitLockKey, f.name)
	}
	b.Queue(l.admitSQL, f.name, l.owner, peek)
	br := l.pool.SendBatch(ctx, b)
	defer br.Close()
	if len(undone) > 0 {
		if _, err := br.Exec(); err != nil {
			return verdict{}, fmt.Errorf("mark %d earlier calls done: %w", len(undone), err)
		}
	}
	if !peek {
		if _, err := br.Exec(); err != nil {
			return verdict{}, fmt.Errorf("lock family: %w", err)
		}
	}
	var (
		now time.Time
		p   int64
		id  *int64
	)
	done := make([]int64, len(l.windows))
	frees := make([]*time.Time, len(l.windows))
	dest := []any{&now, &p, &id}
	for i := range l.windows {
		dest = append(dest, &done[i], &frees[i])
	}
	if err := br.QueryRow().Scan(dest...); err != nil {
		return verdict{}, fmt.Errorf("count calls: %w", err)
	}
	if err := br.Close(); err != nil {
		return verdict{}, fmt.Errorf("commit: %w", err)
	}
	if id != nil {
		return verdict{admitted: true, id: *id}, nil
	}
	v := verdict{exact: true}
	blocked := false
	room := -1
	for i, w := range l.windows {
		if left := w.limit - int(p+done[i]); left > 0 {
			if room < 0 || left < room {
				room = left
			}
			continue
		}
		blocked = true
		d := w.length
		if frees[i] != nil {
			d = frees[i].Add(w.length).Sub(now)
		} else {
			v.exact = false
		}
		v.wait = max(v.wait, d)
	}
	if !blocked {
		// Only a peek gets here: there is room now.
		return verdict{exact: true, room: room}, nil
	}
	// Never 0: a caller must not spin.
	v.wait = max(v.wait, time.Millisecond)
	return v, nil
}

// Wait blocks until family may send one more call, and records the call as
// in flight until Done. When ctx has a deadline that comes before the
// predicted wait, it returns a *defender.LimitError at once instead of
// blocking until the deadline; when ctx is cancelled it returns an error
// wrapping ctx.Err(). A PostgreSQL failure is returned wrapped (nothing was
// admitted): the client reports it as Unavailable.
func (l *Limiter) Wait(ctx context.Context, family defender.Family) error {
	f, err := l.familyState(family)
	if err != nil {
		return err
	}
	deadline, hasDeadline := ctx.Deadline()
	// Queue for this replica's turn. A waiter in the queue still fails fast
	// when what the turn's holder last saw says its deadline is too near.
	for queued := true; queued; {
		if err := ctx.Err(); err != nil {
			return l.ctxError(f, family, err)
		}
		l.mu.Lock()
		wait := time.Until(f.nextFree)
		changed := f.changed
		l.mu.Unlock()
		if hasDeadline && wait > 0 && time.Until(deadline) < wait {
			return &defender.LimitError{Family: family, Wait: wait}
		}
		select {
		case f.turn <- struct{}{}:
			queued = false
		case <-changed:
		case <-ctx.Done():
		case <-l.closing:
			return ErrClosed
		}
	}
	defer func() { <-f.turn }()

	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return l.ctxError(f, family, err)
		}
		v, err := l.check(ctx, f, false)
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			return fmt.Errorf("pglimit: admit a call of %s: %w", family, err)
		}
		if v.admitted {
			l.maybePrune()
			return nil
		}
		l.mu.Lock()
		f.nextFree = time.Now().Add(v.wait)
		// Queued waiters re-read nextFree against their deadlines.
		close(f.changed)
		f.changed = make(chan struct{})
		changed := f.changed
		l.mu.Unlock()
		if hasDeadline && time.Until(deadline) < v.wait {
			return &defender.LimitError{Family: family, Wait: v.wait}
		}
		sleep := v.wait
		if !v.exact {
			// Calls in flight must complete first, here or on another
			// replica: poll to learn when they did.
			sleep = min(sleep, l.poll)
		} else {
			// Done cannot make room sooner than an exact wait: a completed
			// call is counted for a whole window from its completion.
			changed = nil
		}
		if timer == nil {
			timer = time.NewTimer(sleep)
		} else {
			timer.Reset(sleep)
		}
		select {
		case <-ctx.Done():
		case <-timer.C:
		case <-changed:
		case <-l.closing:
			// check reports ErrClosed.
		}
	}
}

// ctxError is what Wait returns when ctx ended while it waited: a
// *defender.LimitError when the deadline passed while the family was full
// (the client then reports a local throttle), else ctx's error wrapped.
func (l *Limiter) ctxError(f *familyState, family defender.Family, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		l.mu.Lock()
		wait := time.Until(f.nextFree)
		l.mu.Unlock()
		if wait > 0 {
			return &defender.LimitError{Family: family, Wait: wait, Err: err}
		}
	}
	return fmt.Errorf("pglimit: wait for %s: %w", family, err)
}

// Done records that this replica's oldest call of family still in flight
// has finished, at PostgreSQL's clock_timestamp(). Which of our calls is
// marked does not matter for the counts; taking the oldest leaves the
// newer admission times in flight, so a crash bound (StaleAfter) can only
// expire later, never sooner. A failed update is retried with the next
// admission; until then the call is counted as still in flight.
func (l *Limiter) Done(family defender.Family) {
	f := l.families[family]
	if f == nil {
		return
	}
	l.mu.Lock()
	if l.closed || len(f.inflight) == 0 {
		l.mu.Unlock()
		return
	}
	id := f.inflight[0]
	f.inflight = f.inflight[1:]
	l.bg.Add(1)
	l.mu.Unlock()
	defer l.bg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	_, err := l.pool.Exec(ctx, markDoneSQL, []int64{id})
	l.mu.Lock()
	if err != nil {
		l.undone = append(l.undone, id)
	}
	// A holder polling on a lower bound re-reads the table.
	close(f.changed)
	f.changed = make(chan struct{})
	l.mu.Unlock()
	if err != nil {
		l.log.Warn("rate limiter: recording a completed Defender call failed; retried with the next call",
			"family", f.name, "error", err.Error())
	}
}

// Delay predicts how long a call of family would wait now: 0 when it would
// be admitted at once. It takes nothing and holds no lock, so by the time
// the caller acts another replica may have taken the room; when calls in
// flight fill a window the figure is a lower bound. A client may use it to
// refuse early, though Wait already returns a *defender.LimitError at once
// when ctx's deadline comes before the predicted wait.
func (l *Limiter) Delay(ctx context.Context, family defender.Family) (time.Duration, error) {
	f, err := l.familyState(family)
	if err != nil {
		return 0, err
	}
	v, err := l.check(ctx, f, true)
	if err != nil {
		return 0, fmt.Errorf("pglimit: predict the wait of %s: %w", family, err)
	}
	return v.wait, nil
}

// Room is Delay with the size of the room: how many more calls of family
// every window would admit now (0 when none, with the predicted wait). It
// takes nothing; see Delay for what that means across replicas.
func (l *Limiter) Room(ctx context.Context, family defender.Family) (int, time.Duration, error) {
	f, err := l.familyState(family)
	if err != nil {
		return 0, 0, err
	}
	v, err := l.check(ctx, f, true)
	if err != nil {
		return 0, 0, fmt.Errorf("pglimit: predict the room of %s: %w", family, err)
	}
	return v.room, v.wait, nil
}

// maybePrune deletes, at most once per PruneEvery and in the background,
// the rows no window can see any more.
func (l *Limiter) maybePrune() {
	now := time.Now().UnixNano()
	last := l.lastPrune.Load()
	if now-last < int64(l.pruneInt) || !l.lastPrune.CompareAndSwap(last, now) {
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.bg.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.bg.Done()
		if _, err := l.Prune(context.Background()); err != nil {
			l.log.Warn("rate limiter: pruning old Defender calls failed", "error", err.Error())
		}
	}()
}

// Prune deletes the rows that no window counts any more and returns how
// many went. Wait calls it by itself every PruneEvery.
func (l *Limiter) Prune(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	longest := l.windows[len(l.windows)-1].length
	tag, err := l.pool.Exec(ctx, `DELETE FROM pglimit_calls
		WHERE COALESCE(done_at, admitted_at + `+interval(l.stale)+`) < clock_timestamp() - `+interval(longest))
	if err != nil {
		return 0, fmt.Errorf("pglimit: prune: %w", err)
	}
	return tag.RowsAffected(), nil
}
