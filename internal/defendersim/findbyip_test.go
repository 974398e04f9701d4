package defendersim

import (
	"strings"
	"testing"
	"time"
)

// TestFindByIPHistory: a machine is found by an address it was seen with
// within 15 minutes of the timestamp, and not outside that window; several
// machines seen with one address are all listed.
func TestFindByIPHistory(t *testing.T) {
	clk := newClock()
	seen := clk.Now().Add(-2 * time.Hour)
	ms := GenerateMachines(3)
	ms[0].IPHistory = []IPSeen{{IP: "10.9.9.9", At: seen}}
	ms[1].IPHistory = []IPSeen{{IP: "10.9.9.9", At: seen.Add(-time.Hour)}}
	ms[2].IPHistory = []IPSeen{{IP: "10.9.9.8", At: seen}, {IP: "10.9.9.9", At: seen.Add(-time.Hour)}}
	p := newPlain(t, Options{Now: clk.Now, Machines: ms})
	find := func(at time.Time) string {
		t.Helper()
		st, body := p.api("GET", "/api/machines/findbyip(ip='10.9.9.9',timestamp="+at.Format(time.RFC3339)+")", "")
		if st != 200 {
			t.Fatalf("%d %s", st, body)
		}
		return string(body)
	}
	if b := find(seen.Add(15 * time.Minute)); !strings.Contains(b, ms[0].ID) || strings.Contains(b, ms[1].ID) || strings.Contains(b, ms[2].ID) {
		t.Errorf("at +15m: %s", b)
	}
	if b := find(seen.Add(16 * time.Minute)); strings.Contains(b, ms[0].ID) {
		t.Errorf("at +16m: %s", b)
	}
	if b := find(seen.Add(-time.Hour)); strings.Contains(b, ms[0].ID) || !strings.Contains(b, ms[1].ID) || !strings.Contains(b, ms[2].ID) {
		t.Errorf("an hour before: %s", b)
	}
}

// TestFindByIPOwnLimit: findbyip has its own rate limit family, 429 with
// Retry-After over it, and does not spend the machine reads' budget.
func TestFindByIPOwnLimit(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now, TokenTTL: 100 * time.Hour,
		RateLimit: RateLimit{PerMinute: 3, PerHour: 10, Minute: time.Minute, Hour: time.Hour}})
	path := "/api/machines/findbyip(ip='10.0.0.1',timestamp=" + clk.Now().Add(-time.Minute).Format(time.RFC3339) + ")"
	for i := range 3 {
		if st, body := p.api("GET", path, ""); st != 200 {
			t.Fatalf("call %d: %d %s", i, st, body)
		}
	}
	resp, body := p.do("GET", path, map[string]string{"Authorization": "Bearer " + p.token}, "")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "60" || errCode(t, body) != "TooManyRequests" {
		t.Fatalf("fourth: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if st, body := p.api("GET", "/api/machines?$top=1", ""); st != 200 {
		t.Fatalf("machine reads throttled by findbyip: %d %s", st, body)
	}
	fs := p.s.Stats().Families[FamilyFindByIP]
	if fs.Calls != 3 || fs.Throttled != 1 || fs.MaxPerMinute != 3 {
		t.Errorf("findbyip stats %+v", fs)
	}
}
