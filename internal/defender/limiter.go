package defender

import (
	"context"
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
	numFamilies
)

// Families lists every family.
func Families() []Family { return []Family{ScanActions, MachineReads, ActionReads} }

func (f Family) String() string {
	switch f {
	case ScanActions:
		return "scan_actions"
	case MachineReads:
		return "machine_reads"
	case ActionReads:
		return "action_reads"
	}
	return fmt.Sprintf("family(%d)", int(f))
}

// Limiter admits calls to a family. Wait blocks until a call may be sent or
// ctx ends. Implementations may be shared by several clients (replicas).
type Limiter interface {
	Wait(ctx context.Context, family Family) error
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
// (plus margin), as Defender's limits read most strictly (api-facts.md).
//
// Why not golang.org/x/time/rate (named in DESIGN.md): a token bucket with
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

// Wait blocks until family may send one more call or ctx ends.
func (l *SlidingWindowLimiter) Wait(ctx context.Context, family Family) error {
	if family < 0 || family >= numFamilies {
		return fmt.Errorf("rate limiter: unknown family %d", int(family))
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		l.mu.Lock()
		f := &l.families[family]
		wait, ok := l.admit(f)
		if ok {
			l.mu.Unlock()
			return nil
		}
		f.waiters++
		changed := f.changed
		l.mu.Unlock()
		var tc <-chan time.Time
		if wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			tc = timer.C
		}
		var err error
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-changed:
		case <-tc:
		}
		l.mu.Lock()
		f.waiters--
		l.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// admit takes a slot if every window has room. Otherwise it returns how
// long until the first completion leaves the tightest window, or 0 when
// only a Done can free a slot. Called with l.mu held.
func (l *SlidingWindowLimiter) admit(f *familyLog) (time.Duration, bool) {
	now := l.now()
	longest := l.windows[len(l.windows)-1].Length
	// Prune what no window can see any more.
	// Reslicing drops the old entries without copying; append reallocates
	// (and so compacts) once the spare capacity runs out.
	cut := sort.Search(len(f.done), func(i int) bool { return now.Sub(f.done[i]) < longest })
	f.done = f.done[cut:]
	var wait time.Duration
	blocked := false
	for _, w := range l.windows {
		first := sort.Search(len(f.done), func(i int) bool { return now.Sub(f.done[i]) < w.Length })
		inWindow := len(f.done) - first
		if f.pending+inWindow < w.Limit {
			continue
		}
		blocked = true
		if f.pending >= w.Limit {
			continue // only a completion frees this window
		}
		// This many of the oldest entries must age out.
		expire := f.pending + inWindow - w.Limit + 1
		if d := f.done[first+expire-1].Add(w.Length).Sub(now); d > wait {
			wait = d
		}
	}
	if blocked {
		if wait <= 0 {
			wait = 0
		}
		return wait, false
	}
	f.pending++
	return 0, true
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
