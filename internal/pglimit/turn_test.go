package pglimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/testutil"
)

func turnOpts() Options {
	return Options{Windows: []defender.Window{{Limit: 10, Length: time.Second}}, TurnCheck: 50 * time.Millisecond}
}

func waitTurnEnd(t *testing.T, turn *Turn, want error) {
	t.Helper()
	select {
	case <-turn.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the turn did not end; want %v", want)
	}
	if !errors.Is(turn.Err(), want) {
		t.Fatalf("turn ended with %v, want %v", turn.Err(), want)
	}
}

func TestPollTurnIsExclusiveAcrossReplicas(t *testing.T) {
	db := newTestDB(t)
	ctx := ctxT(t, 30*time.Second)
	var ls []*Limiter
	for range 3 {
		ls = append(ls, db.open(t, turnOpts()))
	}

	// All try at once, several times each: exactly one wins.
	var (
		mu     sync.Mutex
		winner *Turn
		wins   int
		wg     sync.WaitGroup
	)
	for i := range 9 {
		wg.Go(func() {
			turn, ok, err := ls[i%3].PollTurn(ctx)
			if err != nil {
				t.Errorf("PollTurn: %v", err)
				return
			}
			if ok {
				mu.Lock()
				wins++
				winner = turn
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d replicas got the turn at once, want 1", wins)
	}
	if winner.Err() != nil {
		t.Fatalf("held turn: Err = %v", winner.Err())
	}
	// The losers did not keep a connection each: only the holder's
	// session carries the lock.
	var holders int
	if err := db.admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted`, turnLockKey).Scan(&holders); err != nil {
		t.Fatal(err)
	}
	if holders != 1 {
		t.Fatalf("%d sessions hold the turn lock, want 1", holders)
	}

	// Release hands it on.
	winner.Release()
	waitTurnEnd(t, winner, ErrTurnReleased)
	winner.Release() // twice: nothing
	b, ok, err := ls[1].PollTurn(ctx)
	if err != nil || !ok {
		t.Fatalf("PollTurn after release = %v, %v; want the turn", ok, err)
	}

	// The holder's session dies (a crash, a network cut, a failover of the
	// server): the holder hears it, and another replica takes over.
	if _, err := db.admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, b.conn.PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	waitTurnEnd(t, b, ErrTurnLost)
	// The killed backend sends its last error before it frees its locks,
	// so the holder may hear of the loss a moment before the lock is free:
	// the others, like a replica's poll loop, try again.
	var c *Turn
	testutil.WaitFor(t, "another replica to get the turn after the holder's session died", func() bool {
		c, ok, err = ls[2].PollTurn(ctx)
		if err != nil {
			t.Fatalf("PollTurn after the holder's session died: %v", err)
		}
		return ok
	})
	if _, ok, _ := ls[0].PollTurn(ctx); ok {
		t.Fatal("a second replica got the turn while it is held")
	}

	// Closing the holder's limiter (a replica shutting down) frees it.
	if err := ls[2].Close(); err != nil {
		t.Fatal(err)
	}
	waitTurnEnd(t, c, ErrTurnReleased)
	a, ok, err := ls[0].PollTurn(ctx)
	if err != nil || !ok {
		t.Fatalf("PollTurn after the holder closed = %v, %v; want the turn", ok, err)
	}
	a.Release()
}

func TestPollTurnPerSchema(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	one := newTestDB(t).open(t, turnOpts())
	two := newTestDB(t).open(t, turnOpts())
	for _, l := range []*Limiter{one, two} {
		turn, ok, err := l.PollTurn(ctx)
		if err != nil || !ok {
			t.Fatalf("PollTurn = %v, %v: another schema (another application) must not share the turn", ok, err)
		}
		t.Cleanup(turn.Release) // both turns are held to the end
	}
}

func TestPollTurnFailsWithoutTheServer(t *testing.T) {
	db := newTestDB(t)
	l := db.open(t, turnOpts())
	l.pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, ok, err := l.PollTurn(ctx); err == nil || ok {
		t.Fatalf("PollTurn on a closed pool = %v, %v; want an error", ok, err)
	}
}
