package defendersim

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/testutil"
)

func TestSlidingWindowFakeClock(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now, TokenTTL: 100 * time.Hour,
		RateLimit: RateLimit{PerMinute: 5, PerHour: 12, Minute: time.Minute, Hour: 10 * time.Minute}})
	get := func() (int, string) {
		resp, body := p.do("GET", "/api/machines?$top=1", map[string]string{"Authorization": "Bearer " + p.token}, "")
		if resp.StatusCode == 429 && errCode(t, body) != "TooManyRequests" {
			t.Fatalf("429 body %s", body)
		}
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	expect := func(step string, status int, retry string) {
		t.Helper()
		st, ra := get()
		if st != status || ra != retry {
			t.Fatalf("%s: got %d Retry-After %q, want %d %q", step, st, ra, status, retry)
		}
	}
	// t=0: five at once, the sixth waits the whole minute.
	for i := 0; i < 5; i++ {
		expect("burst", 200, "")
	}
	expect("sixth", 429, "60")
	clk.Advance(30 * time.Second)
	expect("half a minute on", 429, "30")
	clk.Advance(29*time.Second + 500*time.Millisecond)
	expect("0.5s left rounds up", 429, "1")
	// Refused calls do not count: at exactly +60s the first five leave.
	clk.Advance(500 * time.Millisecond)
	for i := 0; i < 5; i++ {
		expect("second minute", 200, "")
	}
	expect("second minute full", 429, "60")
	// t=61s: spread the rest; the hour window (10m, 12 calls) then binds.
	clk.Advance(61 * time.Second) // t=2m1s
	expect("third minute", 200, "")
	expect("third minute", 200, "")
	// 12 accepted now; the oldest (t=0) leaves the 10-minute window at 10m.
	expect("hour full", 429, strconv.Itoa(int((10*time.Minute - 2*time.Minute - time.Second).Seconds())))
	// The scan family has its own budget.
	m := p.s.Machines()[0]
	if st, body := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick")); st != 201 {
		t.Fatalf("scan family shares the budget: %d %s", st, body)
	}
	// Another application has its own budget too.
	other, err := p.s.sign(tokenClaims{Audience: DefaultAudience, TenantID: DefaultTenantID, AppID: "other-app",
		Expires: clk.Now().Add(time.Hour).Unix(), Roles: []string{RoleMachineReadAll}})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := p.raw("GET", "/api/machines", map[string]string{"Authorization": "Bearer " + other}, ""); st != 200 {
		t.Fatalf("other app throttled: %d", st)
	}
	st := p.s.Stats()
	fm := st.Families[FamilyMachines]
	if fm.MaxPerMinute != 5 || fm.MaxPerHour != 12 || fm.Throttled != 5 || fm.Calls != 13 || st.Throttled != 5 {
		t.Fatalf("stats %+v", st)
	}
	if scans, throttled := p.s.Counts(); scans != 1 || throttled != 5 {
		t.Fatalf("Counts %d %d", scans, throttled)
	}
}

func TestRateLimitDisabled(t *testing.T) {
	p := newPlain(t, Options{RateLimit: RateLimit{PerMinute: 1, Disabled: true}})
	for i := 0; i < 5; i++ {
		if st, body := p.api("GET", "/api/machines?$top=1", ""); st != 200 {
			t.Fatalf("%d %s", st, body)
		}
	}
}

// maxInWindow is the most times any half-open window (t-w, t] holds.
func maxInWindow(ts []time.Time, w time.Duration) int {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	best, i := 0, 0
	for j := range ts {
		for !ts[i].After(ts[j].Add(-w)) {
			i++
		}
		best = max(best, j-i+1)
	}
	return best
}

// TestConcurrentClientsNeverExceedWindows runs 500 concurrent clients over
// real TLS and checks, from the request log alone, that no sliding window
// ever held more accepted calls than the limit, that the limiter's own
// maxima agree, and that each machine got at most one scan while one was
// pending.
func TestConcurrentClientsNeverExceedWindows(t *testing.T) {
	const perMin, perHour = 10, 30
	minute, hour := 200*time.Millisecond, time.Second
	// The clock advances a millisecond on every reading: time in the test
	// is virtual and moves with the traffic, so the sliding windows are
	// exercised however loaded the machine is, and every limiter decision
	// has its own instant.
	clk := testutil.NewTickingClock(time.Now(), time.Millisecond)
	s := startTest(t, Options{PendingFor: time.Hour, MaxRecordedRequests: 1 << 20, Now: clk.Now,
		RateLimit: RateLimit{PerMinute: perMin, PerHour: perHour, Minute: minute, Hour: hour}})
	tok := tokenFor(t, s)
	machines := s.Machines()
	const clients, transports, perClient = 500, 50, 4
	trs := make([]*http.Client, transports)
	for i := range trs {
		// HTTP/2 multiplexes each transport's clients on one connection,
		// made here first so the load is API calls, not TLS handshakes.
		trs[i] = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CertPool()}, ForceAttemptHTTP2: true}}
		resp, err := trs[i].Get(s.URL() + "/" + DefaultTenantID + "/v2.0/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			hc := trs[c%transports]
			for i := 0; i < perClient; i++ {
				var req *http.Request
				m := machines[(c+i)%len(machines)]
				switch (c + i) % 3 {
				case 0:
					req, _ = http.NewRequest("POST", s.URL()+"/api/machines/"+m.ID+"/runAntiVirusScan", strings.NewReader(scanBody("load", "Quick")))
					req.Header.Set("Content-Type", "application/json")
				case 1:
					req, _ = http.NewRequest("GET", s.URL()+"/api/machines/"+m.ComputerDNSName, nil)
				default:
					req, _ = http.NewRequest("GET", s.URL()+"/api/machineactions?$filter="+strings.ReplaceAll("machineId eq '"+m.ID+"'", " ", "%20"), nil)
				}
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := hc.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 200, 201, 400, 429:
				default:
					errs <- fmt.Errorf("unexpected status %d", resp.StatusCode)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fam := map[string][]time.Time{}
	throttled, total := 0, 0
	for _, r := range s.Requests() {
		var f string
		switch {
		case strings.HasSuffix(r.Path, "/runAntiVirusScan"):
			f = FamilyScan
		case strings.HasPrefix(r.Path, "/api/machines/"):
			f = FamilyMachines
		case r.Path == "/api/machineactions":
			f = FamilyActions
		default:
			continue
		}
		total++
		if r.Status == 429 {
			throttled++
			continue
		}
		fam[f] = append(fam[f], r.Time)
	}
	if total != clients*perClient {
		t.Fatalf("%d API requests recorded, want %d", total, clients*perClient)
	}
	if throttled == 0 || len(fam) != 3 {
		t.Fatalf("throttled %d, families %d: the load never hit the limit; the test proves nothing", throttled, len(fam))
	}
	st := s.Stats()
	for f, ts := range fam {
		mm, mh := maxInWindow(ts, minute), maxInWindow(ts, hour)
		if mm > perMin || mh > perHour {
			t.Errorf("%s: %d calls in a sliding minute, %d in an hour", f, mm, mh)
		}
		if fs := st.Families[f]; fs.MaxPerMinute != mm || fs.MaxPerHour != mh || fs.Calls != len(ts) {
			t.Errorf("%s: stats %+v, measured %d/%d/%d", f, fs, mm, mh, len(ts))
		}
	}
	perMachine := map[string]int{}
	for _, a := range s.Actions() {
		perMachine[a.MachineID]++
		if perMachine[a.MachineID] > 1 {
			t.Fatalf("machine %s got two scans while one was pending", a.MachineID)
		}
	}
}

func tokenFor(t testing.TB, s *Server) string {
	t.Helper()
	tok, err := s.sign(tokenClaims{Audience: s.opts.Audience, TenantID: s.opts.TenantID, AppID: s.opts.ClientID,
		Expires: time.Now().Add(time.Hour).Unix(), Roles: s.opts.Roles})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
