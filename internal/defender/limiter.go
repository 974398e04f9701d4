package defender

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Family is a group of Defender endpoints that share one rate limit.
type Family int

// The endpoint families. Defender documents 100 calls/minute and 1,500/hour
// for the machine action endpoints and, separately, for the machine endpoints.
const (
	// ScanActions: runAntiVirusScan and cancel.
	ScanActions Family = iota
	// MachineReads: GET machines, by id, name or $filter.
	MachineReads
	// ActionReads: GET machineactions, one or a $filter list.
	ActionReads
	// MachineIPReads: GET machines/findbyip(…), which Defender limits on
	// its own (100 calls a minute, 1,500 an hour).
	MachineIPReads
	numFamilies
)

// Families lists every family.
func Families() []Family { return []Family{ScanActions, MachineReads, ActionReads, MachineIPReads} }

func (f Family) String() string {
	switch f {
	case ScanActions:
		return "scan_actions"
	case MachineReads:
		return "machine_reads"
	case ActionReads:
		return "action_reads"
	case MachineIPReads:
		return "machine_ip_reads"
	}
	return fmt.Sprintf("family(%d)", int(f))
}

// Limiter admits calls to a family. Wait blocks until a call may be sent or
// ctx ends. Implementations may be shared by several clients (replicas).
// When a call cannot be admitted before ctx's deadline, Wait should return
// a *LimitError at once (with the predicted wait) rather than block until
// the deadline: the client then reports a local throttle, which the
// dispatcher reschedules without spending an attempt.
type Limiter interface {
	Wait(ctx context.Context, family Family) error
}

// LimitError is what a Limiter's Wait returns when the call cannot be
// admitted before the context's deadline. Nothing was admitted.
type LimitError struct {
	Family Family
	// Wait is the predicted time until a call of Family may be admitted:
	// a lower bound when calls still in flight must complete first.
	Wait time.Duration
	// Err is the context's error when the deadline had already passed.
	Err error
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("rate limit of %s: no call can be admitted before the deadline (next in about %s)", e.Family, e.Wait)
}

func (e *LimitError) Unwrap() error { return e.Err }

// RoomLimiter is a Limiter that can say, without taking anything, how many
// more calls of a family it would admit now, and when there is no room how
// long until there is (a lower bound while calls in flight fill a window).
// The answer may be stale by the time the caller acts (another goroutine or
// replica may take the room); Wait still decides.
type RoomLimiter interface {
	Limiter
	Room(ctx context.Context, family Family) (calls int, wait time.Duration, err error)
}

// CompletionLimiter is a Limiter that also wants to hear when an admitted
// call has finished (answered, failed or abandoned). The client calls Done
// exactly once after each successful Wait when the limiter implements it.
type CompletionLimiter interface {
	Limiter
	Done(family Family)
}

// Window is one limit: at most Limit calls in any sliding Length.
type Window struct {
	Limit  int
	Length time.Duration
}

// SlidingWindowOptions configures NewSlidingWindowLimiter.
type SlidingWindowOptions struct {
	// Windows apply to every family, each family counted on its own.
	Windows []Window
	// Margin lengthens every window, to absorb the difference between our
	// clock and Defender's. 0 means 1% of each window; negative means none.
	Margin time.Duration
	Now    func() time.Time
}

// SlidingWindowLimiter is the in-process Limiter: a sliding-window log per
// family. It never lets more than Limit calls into any window of Length
// (plus margin), as Defender's limits read most strictly (docs/defender-api.md).
//
// Why not golang.org/x/time/rate (the usual choice): a token bucket with
// burst b and rate r/w lets b calls through at once and then r more within
// the same w, i.e. up to twice the per-minute limit in one sliding minute;
// a bucket with burst 1 would keep within the limit but space calls 600ms
// apart, so a storm of 100 scans would take a minute instead of going out
// at once. A sliding-window log is exact and cheap at these limits (at most
// 1,500 timestamps per family).
//
// A call occupies its slot from admission until it completes (Done), and
// the window is then counted from the completion time. Defender counts a
// call when it arrives, which is between those two instants, so counting
// from completion can never undercount, whatever the network latency.
type SlidingWindowLimiter struct {
	windows []Window
	now     func() time.Time

	mu       sync.Mutex
	families [numFamilies]familyLog
}

type familyLog struct {
	pending int         // admitted, not yet Done
	done    []time.Time // completion times, ascending
	waiters int         // goroutines blocked in Wait
	changed chan struct{}
}

// NewSlidingWindowLimiter builds the limiter. Windows with Limit <= 0 or
// Length <= 0 are rejected.
func NewSlidingWindowLimiter(opts SlidingWindowOptions) (*SlidingWindowLimiter, error) {
	if len(opts.Windows) == 0 {
		return nil, fmt.Errorf("sliding window limiter: no windows")
	}
	l := &SlidingWindowLimiter{now: opts.Now}
	if l.now == nil {
		l.now = time.Now
	}
	for _, w := range opts.Windows {
		if w.Limit <= 0 || w.Length <= 0 {
			return nil, fmt.Errorf("sliding window limiter: window %d per %s: limit and length must be positive", w.Limit, w.Length)
		}
		margin := opts.Margin
		if margin == 0 {
			margin = w.Length / 100
		}
		if margin < 0 {
			margin = 0
		}
		l.windows = append(l.windows, Window{Limit: w.Limit, Length: w.Length + margin})
	}
	// Longest window last: pruning keeps what it needs.
	sort.Slice(l.windows, func(i, j int) bool { return l.windows[i].Length < l.windows[j].Length })
	for i := range l.families {
		l.families[i].changed = make(chan struct{})
	}
	return l, nil
}

// Wait blocks until family may send one more call or ctx ends. When ctx has
// a deadline that comes before the predicted wait, it returns a *LimitError
// at once instead of blocking until the deadline.
func (l *SlidingWindowLimiter) Wait(ctx context.Context, family Family) error {
	if family < 0 || family >= numFamilies {
		return fmt.Errorf("rate limiter: unknown family %d", int(family))
	}
	deadline, hasDeadline := ctx.Deadline()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		l.mu.Lock()
		f := &l.families[family]
		if err := ctx.Err(); err != nil {
			// Still say how long a new attempt would wait, when that is
			// what ended this one.
			lerr := err
			if errors.Is(err, context.DeadlineExceeded) {
				if wait, ok := l.peek(f); !ok {
					lerr = &LimitError{Family: family, Wait: wait, Err: err}
				}
			}
			l.mu.Unlock()
			return lerr
		}
		wait, ok := l.admit(f)
		if ok {
			l.mu.Unlock()
			return nil
		}
		// The deadline is on the wall clock whatever l.now is.
		if hasDeadline && time.Until(deadline) < wait {
			l.mu.Unlock()
			return &LimitError{Family: family, Wait: wait}
		}
		f.waiters++
		changed := f.changed
		l.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		// A done context is reported at the top of the loop.
		select {
		case <-ctx.Done():
		case <-changed:
		case <-timer.C:
		}
		l.mu.Lock()
		f.waiters--
		l.mu.Unlock()
	}
}

// Delay predicts how long a call of family would wait now: 0 when it would
// be admitted at once. It takes nothing.
func (l *SlidingWindowLimiter) Delay(family Family) time.Duration {
	if family < 0 || family >= numFamilies {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	wait, _ := l.peek(&l.families[family])
	return wait
}

// Room implements RoomLimiter.
func (l *SlidingWindowLimiter) Room(_ context.Context, family Family) (int, time.Duration, error) {
	if family < 0 || family >= numFamilies {
		return 0, 0, fmt.Errorf("rate limiter: unknown family %d", int(family))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	wait, room := l.check(&l.families[family])
	return room, wait, nil
}

// peek is admit without taking the slot. Called with l.mu held.
func (l *SlidingWindowLimiter) peek(f *familyLog) (time.Duration, bool) {
	wait, room := l.check(f)
	return wait, room > 0
}

// admit takes a slot if every window has room, else returns check's wait.
// Called with l.mu held.
func (l *SlidingWindowLimiter) admit(f *familyLog) (time.Duration, bool) {
	wait, room := l.check(f)
	if room == 0 {
		return wait, false
	}
	f.pending++
	return 0, true
}

// check returns how many more calls every window has room for now, and
// when none, how long until a slot can free up in every window: exact when
// completed calls must age out, a lower bound (the window's length) when
// calls still in flight must complete first, for their completion is then
// counted for a whole window. It prunes the log and takes nothing. Called
// with l.mu held.
func (l *SlidingWindowLimiter) check(f *familyLog) (wait time.Duration, room int) {
	now := l.now()
	longest := l.windows[len(l.windows)-1].Length
	// Prune what no window can see any more.
	// Reslicing drops the old entries without copying; append reallocates
	// (and so compacts) once the spare capacity runs out.
	cut := sort.Search(len(f.done), func(i int) bool { return now.Sub(f.done[i]) < longest })
	f.done = f.done[cut:]
	room = -1
	blocked := false
	for _, w := range l.windows {
		first := f.firstIn(now, w.Length)
		inWindow := len(f.done) - first
		if left := w.Limit - f.pending - inWindow; left > 0 {
			if room < 0 || left < room {
				room = left
			}
			continue
		}
		blocked = true
		// This many of the oldest entries must age out; completed ones
		// come first, then the calls in flight.
		expire := f.pending + inWindow - w.Limit + 1
		d := w.Length
		if expire <= inWindow {
			d = f.done[first+expire-1].Add(w.Length).Sub(now)
		}
		wait = max(wait, d)
	}
	if blocked {
		// Never 0: a caller must not spin.
		return max(wait, time.Millisecond), 0
	}
	return 0, room
}

// firstIn is the index of the first completion a window of length ending
// now still sees.
func (f *familyLog) firstIn(now time.Time, length time.Duration) int {
	return sort.Search(len(f.done), func(i int) bool { return now.Sub(f.done[i]) < length })
}

// Done records that an admitted call finished now.
func (l *SlidingWindowLimiter) Done(family Family) {
	if family < 0 || family >= numFamilies {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f := &l.families[family]
	if f.pending == 0 {
		return
	}
	f.pending--
	now := l.now()
	// Keep the log sorted even if the clock stepped back.
	if n := len(f.done); n > 0 && now.Before(f.done[n-1]) {
		now = f.done[n-1]
	}
	f.done = append(f.done, now)
	if f.waiters > 0 {
		close(f.changed)
		f.changed = make(chan struct{})
	}
}
