package defendersim

import (
	"sort"
	"sync"
	"time"
)

// limiter enforces the strictest reading of "100 per minute, 1,500 per hour":
// a log of accepted calls per (application, family), and a call is accepted
// only if the sliding windows (now-Minute, now] and (now-Hour, now] still
// have room. It also records the most calls any window ever held, so tests
// can check the invariant from the outside too.
type limiter struct {
	cfg  RateLimit
	mu   sync.Mutex
	logs map[string]*callLog
	max  map[string]*windowMax // by family
}

type callLog struct{ times []time.Time }

type windowMax struct{ minute, hour int }

func newLimiter(cfg RateLimit) *limiter {
	return &limiter{cfg: cfg, logs: map[string]*callLog{}, max: map[string]*windowMax{}}
}

// allow accepts the call or says how long until a slot frees. It reads the
// clock under the lock so the log stays in time order however the calling
// goroutines interleave; at is the time the call was counted at.
func (l *limiter) allow(app, family string, clock func() time.Time) (ok bool, retry time.Duration, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := clock()
	key := app + "\x00" + family
	lg := l.logs[key]
	if lg == nil {
		lg = &callLog{}
		l.logs[key] = lg
	}
	// A clock that steps back must not open extra room.
	if n := len(lg.times); n > 0 && now.Before(lg.times[n-1]) {
		now = lg.times[n-1]
	}
	hourStart := now.Add(-l.cfg.Hour)
	drop := sort.Search(len(lg.times), func(i int) bool { return lg.times[i].After(hourStart) })
	if drop > 0 {
		lg.times = append(lg.times[:0], lg.times[drop:]...)
	}
	minStart := now.Add(-l.cfg.Minute)
	mi := sort.Search(len(lg.times), func(i int) bool { return lg.times[i].After(minStart) })
	inMinute, inHour := len(lg.times)-mi, len(lg.times)
	if !l.cfg.Disabled {
		var wait time.Duration
		if inMinute >= l.cfg.PerMinute {
			// The call fits once the entry PerMinute back leaves the window.
			free := lg.times[len(lg.times)-max(l.cfg.PerMinute, 1)].Add(l.cfg.Minute)
			wait = max(wait, free.Sub(now))
		}
		if inHour >= l.cfg.PerHour {
			free := lg.times[len(lg.times)-max(l.cfg.PerHour, 1)].Add(l.cfg.Hour)
			wait = max(wait, free.Sub(now))
		}
		if inMinute >= l.cfg.PerMinute || inHour >= l.cfg.PerHour {
			return false, max(wait, time.Nanosecond), now
		}
	}
	lg.times = append(lg.times, now)
	m := l.max[family]
	if m == nil {
		m = &windowMax{}
		l.max[family] = m
	}
	m.minute = max(m.minute, inMinute+1)
	m.hour = max(m.hour, inHour+1)
	return true, 0, now
}

func (l *limiter) maxima() map[string]windowMax {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]windowMax{}
	for f, m := range l.max {
		out[f] = *m
	}
	return out
}
