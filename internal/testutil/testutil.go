// Package testutil owns the small helpers that tests in several packages
// need: a log buffer safe for the goroutines of a running service, and a
// clock that tests move by hand. It is imported by tests only.
package testutil

import (
	"bytes"
	"sync"
	"time"
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

// Clock is a clock that only moves when told to.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock starts a clock at now, truncated to the second so that times
// survive a round trip through a database.
func NewClock() *Clock { return &Clock{t: time.Now().UTC().Truncate(time.Second)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// NewClockAt starts a clock at t.
func NewClockAt(t time.Time) *Clock { return &Clock{t: t} }
