package defendersim

import (
	crand "crypto/rand"
	"encoding/binary"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// faultInjector holds the switchable faults and the random source that
// decides which calls they hit.
type faultInjector struct {
	mu          sync.Mutex
	f           Faults
	outageUntil time.Time
	rnd         *rand.Rand
}

func newFaultInjector(seed uint64) *faultInjector {
	if seed == 0 {
		var b [8]byte
		_, _ = crand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}
	return &faultInjector{rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (fi *faultInjector) set(f Faults, now time.Time) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	fi.f = f
	fi.outageUntil = time.Time{}
	if f.OutageFor > 0 {
		fi.outageUntil = now.Add(f.OutageFor)
	}
}

func (fi *faultInjector) get() Faults {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	return fi.f
}

type faultKind int

const (
	faultNone faultKind = iota
	faultOutage
	fault500
	fault503
	faultReset
)

// decide picks this call's fault under the lock, so one random stream
// serves all goroutines reproducibly for a given seed and call order.
func (fi *faultInjector) decide(now time.Time) (faultKind, time.Duration) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	lat := fi.f.Latency
	if now.Before(fi.outageUntil) {
		return faultOutage, lat
	}
	if fi.f.ResetRate > 0 && fi.rnd.Float64() < fi.f.ResetRate {
		return faultReset, lat
	}
	if fi.f.ErrorRate > 0 && fi.rnd.Float64() < fi.f.ErrorRate {
		if fi.rnd.IntN(2) == 0 {
			return fault500, lat
		}
		return fault503, lat
	}
	return faultNone, lat
}

// injectFaults applies the faults to an API call; true when it answered (or
// dropped) the call.
func (s *Server) injectFaults(w http.ResponseWriter, r *http.Request, ri *reqInfo) bool {
	kind, lat := s.fault.decide(s.now())
	if lat > 0 {
		t := time.NewTimer(lat)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	switch kind {
	case faultOutage:
		s.stats.add(func(c *counters) { c.FaultsInjected++ })
		writeAPIError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "the service is temporarily unavailable", ri.corr)
		return true
	case fault500:
		s.stats.add(func(c *counters) { c.FaultsInjected++ })
		writeAPIError(w, http.StatusInternalServerError, "InternalServerError", "an internal error occurred", ri.corr)
		return true
	case fault503:
		s.stats.add(func(c *counters) { c.FaultsInjected++ })
		writeAPIError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "the service is temporarily unavailable", ri.corr)
		return true
	case faultReset:
		s.stats.add(func(c *counters) { c.FaultsInjected++ })
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
			return true
		}
		// HTTP/2 cannot hijack: aborting the handler resets the stream.
		panic(http.ErrAbortHandler)
	}
	return false
}

// tokenFault decides whether this token request fails.
func (fi *faultInjector) tokenFault() bool {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	return fi.f.TokenErrorRate > 0 && fi.rnd.Float64() < fi.f.TokenErrorRate
}
