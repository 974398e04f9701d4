// Package testutil owns the small helpers that tests in several packages
// need: a log buffer safe for the goroutines of a running service, a clock
// that tests move by hand, and a wait for an event. It is imported by tests
// only: it imports testing, which the production binary must not link.
package testutil

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// SyncBuffer collects writes from many goroutines (a service's logger, a
// child process's output) and reads them back while they continue.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// Tail returns at most the last n bytes written, for failure messages.
func (s *SyncBuffer) Tail(n int) string {
	out := s.String()
	if len(out) > n {
		return out[len(out)-n:]
	}
	return out
}

// Clock is a clock that only moves when told to: Advance and Set move it,
// and a ticking clock (NewTickingClock) also moves by a fixed step on every
// reading. It is safe for concurrent use; give its Now method to the code
// under test as its time source.
type Clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

// NewClock starts a clock at now, in UTC, truncated to the second so that
// times survive a round trip through a database (and whole seconds are what
// signature timestamps carry).
func NewClock() *Clock { return &Clock{t: time.Now().UTC().Truncate(time.Second)} }

// NewClockAt starts a clock at t.
func NewClockAt(t time.Time) *Clock { return &Clock{t: t} }

// NewTickingClock starts a clock at start that moves forward by step on
// every reading, before it answers: each reading gets its own instant, and
// time passes with the traffic, however loaded the machine is.
func NewTickingClock(start time.Time, step time.Duration) *Clock {
	return &Clock{t: start, step: step}
}

// Now returns the clock's time (a ticking clock moves first).
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(c.step)
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set puts the clock at t, forward or back.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// WaitTimeout bounds WaitFor. It only ends a test that is failing (the
// event never comes), so it is generous: a slow or loaded machine makes a
// passing test slower, never a failing one.
const WaitTimeout = 30 * time.Second

// WaitFor waits until cond holds, polling it, and fails the test naming
// what it waited for if it does not hold within WaitTimeout. cond runs on
// the test's goroutine, so it may call t.Fatal.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitFor(t, WaitTimeout, what, cond, nil)
}

// WaitForState is WaitFor whose failure also reports state(): what was
// seen instead, e.g. the state a job is stuck in.
func WaitForState(t testing.TB, what string, cond func() bool, state func() string) {
	t.Helper()
	waitFor(t, WaitTimeout, what, cond, state)
}

// WaitForWithin is WaitFor for an event that cannot come before some
// designed delay has passed (a simulated action's lifecycle, a lease, a
// rate limit's window): d is that delay plus WaitTimeout, written so at the
// call, so that the margin for a loaded machine stays WaitTimeout's.
func WaitForWithin(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	waitFor(t, d, what, cond, nil)
}

// WaitForStateWithin is WaitForWithin whose failure also reports state().
func WaitForStateWithin(t testing.TB, d time.Duration, what string, cond func() bool, state func() string) {
	t.Helper()
	waitFor(t, d, what, cond, state)
}

// waitFor is the one wait every helper above calls.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			if state != nil {
				t.Fatalf("waited %s for %s; instead: %s", d, what, state())
			}
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(pause)
		// Quick for events that come at once, gentle on a loaded machine
		// for those that take a while.
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// settledJobStates says, for every job state, whether a job in it can
// still lead to a Defender scan call (false) or never will (true). A job
// leaves submitted, already_scanning and dead only by closing, and closing
// makes no call; a waiting job becomes queued when its device's open job
// closes, so it is not settled. A state domain adds must be placed here
// (TestSettledJobStates fails until it is).
var settledJobStates = map[string]bool{
	domain.JobQueued:          false,
	domain.JobWaiting:         false,
	domain.JobLeased:          false,
	domain.JobCalling:         false,
	domain.JobRetry:           false,
	domain.JobSubmitted:       true,
	domain.JobAlreadyScanning: true,
	domain.JobDead:            true,
	domain.JobDeduplicated:    true,
}

// JobSettled reports whether a job in state will make no further Defender
// scan call. Tests that must show "exactly one scan" wait until every job
// involved is settled, then stop the service (a stopped dispatcher has
// finished its calls in flight and makes no new one), then count the
// simulator's scans: no duration to guess.
func JobSettled(state string) bool { return settledJobStates[state] }

// WaitReceiptsSettled waits, up to d, until every job of the receipts is
// settled (JobSettled). jobStates reads one receipt's job states. Settled is
// final, so a receipt once seen settled is not read again.
func WaitReceiptsSettled(t testing.TB, d time.Duration, receipts []string, jobStates func(receipt string) []string) {
	t.Helper()
	pending := slices.Clone(receipts)
	var last []string
	WaitForStateWithin(t, d, fmt.Sprintf("every job of %d receipts to settle", len(receipts)), func() bool {
		for len(pending) > 0 {
			last = jobStates(pending[0])
			for _, s := range last {
				if !JobSettled(s) {
					return false
				}
			}
			pending = pending[1:]
		}
		return true
	}, func() string {
		return fmt.Sprintf("%d receipts not settled, first %s with jobs in %v", len(pending), pending[0], last)
	})
}
