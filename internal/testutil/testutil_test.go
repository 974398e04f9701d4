package testutil

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

func TestClock(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := NewClockAt(start)
	steps := []struct {
		name string
		move func()
		want time.Time
	}{
		{"stands still", func() {}, start},
		{"advances", func() { c.Advance(90 * time.Second) }, start.Add(90 * time.Second)},
		{"is set back", func() { c.Set(start.Add(-time.Hour)) }, start.Add(-time.Hour)},
	}
	for _, s := range steps {
		s.move()
		if got, again := c.Now(), c.Now(); !got.Equal(s.want) || !again.Equal(s.want) {
			t.Errorf("%s: Now() = %v then %v, want %v twice", s.name, got, again, s.want)
		}
	}
	if now := NewClock().Now(); now.Location() != time.UTC || now.Nanosecond() != 0 {
		t.Errorf("NewClock() starts at %v, want UTC whole seconds", now)
	}
}

func TestTickingClock(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := NewTickingClock(start, time.Millisecond)
	for i := 1; i <= 3; i++ {
		if got, want := c.Now(), start.Add(time.Duration(i)*time.Millisecond); !got.Equal(want) {
			t.Fatalf("reading %d = %v, want %v", i, got, want)
		}
	}
	c.Advance(time.Second)
	if got, want := c.Now(), start.Add(time.Second+4*time.Millisecond); !got.Equal(want) {
		t.Fatalf("after Advance: %v, want %v", got, want)
	}
}

func TestWaitFor(t *testing.T) {
	var n atomic.Int64
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	WaitFor(t, "three increments", func() bool { return n.Load() == 3 })
}

func TestSettledJobStates(t *testing.T) {
	for _, s := range domain.JobStates() {
		if _, ok := settledJobStates[s]; !ok {
			t.Errorf("job state %q is not placed in settledJobStates: can a job in it still call Defender?", s)
		}
	}
	if len(settledJobStates) != len(domain.JobStates()) {
		t.Errorf("settledJobStates has %d states, domain %d", len(settledJobStates), len(domain.JobStates()))
	}
	if JobSettled("no-such-state") {
		t.Error("an unknown state must not count as settled")
	}
}

func TestWaitForWithin(t *testing.T) {
	var n atomic.Int64
	go n.Add(1)
	WaitForWithin(t, time.Minute, "one increment", func() bool { return n.Load() == 1 })
}
