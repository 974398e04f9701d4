package defendersim

import "sync"

// FamilyStats are one rate-limit family's counters.
type FamilyStats struct {
	Calls     int `json:"calls"`     // accepted by the rate limiter
	Throttled int `json:"throttled"` // answered 429
	// MaxPerMinute and MaxPerHour are the most accepted calls any sliding
	// window held (per application); never above the limits.
	MaxPerMinute int `json:"max_per_minute"`
	MaxPerHour   int `json:"max_per_hour"`
}

// Stats summarises what the simulator has seen.
type Stats struct {
	Families       map[string]FamilyStats `json:"families"`
	ScanCalls      int                    `json:"scan_calls"`      // runAntiVirusScan calls past the rate limiter
	ScansCreated   int                    `json:"scans_created"`   // new actions
	AlreadyRunning int                    `json:"already_running"` // answered "already in progress"
	Cancelled      int                    `json:"cancelled"`
	Throttled      int                    `json:"throttled"` // all 429s
	Unauthorized   int                    `json:"unauthorized"`
	TokensIssued   int                    `json:"tokens_issued"`
	TokenErrors    int                    `json:"token_errors"`
	FaultsInjected int                    `json:"faults_injected"`
}

type counters struct {
	mu       sync.Mutex
	families map[string]*FamilyStats
	Stats
}

func (c *counters) family(f string) *FamilyStats {
	if c.families == nil {
		c.families = map[string]*FamilyStats{}
	}
	fs := c.families[f]
	if fs == nil {
		fs = &FamilyStats{}
		c.families[f] = fs
	}
	return fs
}

func (c *counters) add(fn func(*counters)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(c)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	maxima := s.lim.maxima()
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	out := s.stats.Stats
	out.Families = map[string]FamilyStats{}
	for _, f := range []string{FamilyScan, FamilyMachines, FamilyActions, FamilyFindByIP} {
		var fs FamilyStats
		if p := s.stats.families[f]; p != nil {
			fs = *p
		}
		fs.MaxPerMinute, fs.MaxPerHour = maxima[f].minute, maxima[f].hour
		out.Families[f] = fs
	}
	return out
}
