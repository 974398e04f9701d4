package testutil

import (
	"sync/atomic"
	"testing"
	"time"
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
