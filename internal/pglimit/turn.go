package pglimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Errors a Turn ends with.
var (
	ErrTurnReleased = errors.New("pglimit: poll turn released")
	ErrTurnLost     = errors.New("pglimit: poll turn lost: its PostgreSQL session ended")
)

// Turn is the right to poll machine action status on behalf of every
// replica: at most one replica holds it at a time (a session-level
// advisory lock, pg_try_advisory_lock, on a connection of its own held for
// as long as the turn). PostgreSQL releases it when that session ends, so
// a replica that crashes or loses its connection gives the turn up without
// anyone's help.
//
// The turn is an efficiency device, not a safety one: during a failover
// two replicas may both poll for a moment (until the old holder's next
// check), which costs a few extra reads but breaks nothing, for every read
// still goes through the shared rate limiter.
type Turn struct {
	l    *Limiter
	conn *pgx.Conn
	done chan struct{}
	stop chan struct{}
	exit chan struct{}

	mu  sync.Mutex
	err error

	release sync.Once
}

// PollTurn tries to take the poll turn without waiting. It returns the
// turn and true when this replica now holds it, (nil, false, nil) when
// another replica does, and an error when PostgreSQL could not be asked.
// The holder polls until Done is closed (the turn was lost) and calls
// Release when it stops; a replica without the turn tries again after a
// while (a few seconds: that interval plus TurnCheck bounds the failover).
//
// The turn's session is checked every TurnCheck; PostgreSQL is also asked
// (idle_session_timeout, TCP keepalives) to end the session when the
// holder goes quiet, so that a hung or partitioned replica gives the turn
// up within seconds. Behind PgBouncer in transaction mode session locks do
// not work: point the limiter at PostgreSQL itself or a session-mode pool.
func (l *Limiter) PollTurn(ctx context.Context) (*Turn, bool, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, false, ErrClosed
	}
	pc, err := l.pool.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("pglimit: poll turn: connect: %w", err)
	}
	qctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	var ok bool
	if err := pc.QueryRow(qctx, `SELECT pg_try_advisory_lock($1::integer, hashtext(current_schema()))`, turnLockKey).Scan(&ok); err != nil {
		// The session may hold the lock if the answer was lost: drop it.
		_ = pc.Conn().Close(context.Background())
		pc.Release()
		return nil, false, fmt.Errorf("pglimit: poll turn: try lock: %w", err)
	}
	if !ok {
		pc.Release()
		return nil, false, nil
	}
	// The session now carries the lock: take it out of the pool so no
	// one else uses it, and so closing it is ours to decide.
	conn := pc.Hijack()
	quiet := fmt.Sprintf("%dms", max(5*l.turnInt, 5*time.Second).Milliseconds())
	for _, s := range [][2]string{
		{"idle_session_timeout", quiet}, // PostgreSQL 14+
		{"tcp_keepalives_idle", "5"},
		{"tcp_keepalives_interval", "2"},
		{"tcp_keepalives_count", "3"},
	} {
		if _, err := conn.Exec(qctx, `SELECT set_config($1, $2, false)`, s[0], s[1]); err != nil {
			// Older servers: the TurnCheck still notices a dead session.
			l.log.Debug("poll turn: session setting refused", "setting", s[0], "error", err.Error())
		}
	}
	t := &Turn{l: l, conn: conn, done: make(chan struct{}), stop: make(chan struct{}), exit: make(chan struct{})}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = conn.Close(context.Background())
		return nil, false, ErrClosed
	}
	l.turns[t] = struct{}{}
	l.mu.Unlock()
	go t.watch()
	return t, true, nil
}

// watch checks the session every TurnCheck; the turn is lost with it.
func (t *Turn) watch() {
	defer close(t.exit)
	tick := time.NewTicker(t.l.turnInt)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(t.l.timeout, 2*t.l.turnInt))
		err := t.conn.Ping(ctx)
		cancel()
		if err != nil {
			t.l.log.Warn("poll turn lost: its PostgreSQL session failed", "error", err.Error())
			t.end(ErrTurnLost)
			return
		}
	}
}

// end closes the session (PostgreSQL then frees the lock) and Done.
func (t *Turn) end(why error) {
	t.mu.Lock()
	if t.err != nil {
		t.mu.Unlock()
		return
	}
	t.err = why
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if errors.Is(why, ErrTurnReleased) {
		// Closing the session frees the lock only once its backend has
		// exited, which PostgreSQL does after the client has gone: unlock
		// first so the next replica can take the turn at once.
		_, _ = t.conn.Exec(ctx, `SELECT pg_advisory_unlock($1::integer, hashtext(current_schema()))`, turnLockKey)
	}
	_ = t.conn.Close(ctx)
	cancel()
	t.l.mu.Lock()
	delete(t.l.turns, t)
	t.l.mu.Unlock()
	close(t.done)
}

// Done is closed when the turn ends: lost or released.
func (t *Turn) Done() <-chan struct{} { return t.done }

// Err is nil while the turn is held, then ErrTurnLost or ErrTurnReleased.
func (t *Turn) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Release gives the turn up at once (by ending its session). It may be
// called more than once, and after the turn was lost.
func (t *Turn) Release() {
	t.release.Do(func() {
		close(t.stop)
		// The watcher may be using the connection: let it finish first.
		<-t.exit
		t.end(ErrTurnReleased)
	})
}
