package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/internal/testutil"
)

func TestSubmitAndFollowToSucceeded(t *testing.T) {
	e := newEnv(t, envOpts{})
	m := machine(t, e.sim, 0)
	receipt, jobID := e.queue(t, alert.Device{ID: m.ID}, domain.ScanFull)
	cs := e.counting()
	d := e.dispatcher(t, Options{})
	stop := start(t, d)

	e.waitJob(t, receipt, domain.JobSubmitted)
	// Followed until final by the poller.
	testutil.WaitForState(t, "the action to be Succeeded", func() bool {
		_, acts := e.job(t, receipt)
		return len(acts) == 1 && acts[0].Status == domain.ActionSucceeded
	}, func() string { _, a := e.job(t, receipt); return "actions " + actionStatuses(a) })
	reqs := scanRequests(e.sim)
	// A final action is polled no more: a whole poll after the one that
	// saw it final asks Defender nothing.
	e.sim.ResetRequests()
	cs.pollRound(t)
	if n := len(apiRequests(e.sim, http.MethodGet, "/api/machineactions")); n != 0 {
		t.Errorf("%d action polls after the action was final, want 0", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	if len(reqs) != 1 {
		t.Fatalf("scan requests = %d, want exactly 1", len(reqs))
	}
	if !strings.Contains(string(reqs[0].Body), `"ScanType":"Full"`) || !strings.Contains(reqs[0].Path, m.ID) {
		t.Errorf("scan request %s %s, want a Full scan of %s", reqs[0].Path, reqs[0].Body, m.ID)
	}
	acts := simActionsOn(e.sim, m.ID)
	if len(acts) != 1 || acts[0].RequestorComment == "" {
		t.Fatalf("sim actions on %s: %+v", m.ID, acts)
	}
	j, stored := e.job(t, receipt)
	if j.ID != jobID || j.MachineID != m.ID || j.ActionID != acts[0].ID || stored[0].ID != acts[0].ID {
		t.Errorf("job %+v / actions %+v, want machine %s action %s", j, stored, m.ID, acts[0].ID)
	}
	if got := counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "submitted"}); got != 1 {
		t.Errorf("scanhook_jobs_total{outcome=submitted} = %v, want 1", got)
	}
	if got := counter(t, e.reg, "scanhook_dispatch_action_updates_total", map[string]string{"status": "Succeeded"}); got < 1 {
		t.Errorf("no Succeeded action update counted")
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"msg":"scan job"`) || !strings.Contains(logs, `"outcome":"submitted"`) ||
		!strings.Contains(logs, `"action_id":"`+acts[0].ID+`"`) {
		t.Errorf("no outcome log line with the action id:\n%s", logs)
	}
	if strings.Contains(logs, "Bearer") || strings.Contains(logs, defendersim.DefaultClientSecret) {
		t.Errorf("a token or secret reached the log")
	}
}

func actionStatuses(as []store.Action) string {
	var b strings.Builder
	for _, a := range as {
		b.WriteString(a.ID + "=" + a.Status + " ")
	}
	return b.String()
}

func TestResolveByDNSName(t *testing.T) {
	cases := []struct {
		name string
		dns  func(m defendersim.Machine) string
	}{
		{"fqdn", func(m defendersim.Machine) string { return m.ComputerDNSName }},
		{"upper case with trailing dot", func(m defendersim.Machine) string { return strings.ToUpper(m.ComputerDNSName) + "." }},
		{"computer name without a domain", func(m defendersim.Machine) string { return m.ComputerDNSName }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The last machine is not domain-joined: its name has no dot.
			ms := append(defendersim.GenerateMachines(3), defendersim.Machine{ID: strings.Repeat("c0", 20), ComputerDNSName: "kiosk7"})
			e := newEnv(t, envOpts{sim: defendersim.Options{Machines: ms}})
			m := ms[2]
			if strings.HasPrefix(tc.name, "computer name") {
				m = ms[3]
			}
			name := tc.dns(m)
			receipt, _ := e.queue(t, alert.Device{DNSName: name}, domain.ScanQuick)
			d := e.dispatcher(t, Options{})
			start(t, d)
			j := e.waitJob(t, receipt, domain.JobSubmitted)
			if j.MachineID != m.ID {
				t.Fatalf("machine id = %q, want %q", j.MachineID, m.ID)
			}
			if n := len(scanRequests(e.sim)); n != 1 {
				t.Fatalf("scan requests = %d, want 1", n)
			}
			lookups := len(apiRequests(e.sim, http.MethodGet, "/api/machines"))
			if lookups == 0 {
				t.Fatal("no machine lookup was made")
			}

			// A second job for the same name, once the first is done, is
			// resolved from the cache.
			testutil.WaitFor(t, "the first action to be final", func() bool {
				_, acts := e.job(t, receipt)
				return len(acts) == 1 && acts[0].Status == domain.ActionSucceeded
			})
			receipt2, _ := e.queue(t, alert.Device{DNSName: name}, domain.ScanQuick)
			d.Kick()
			j2 := e.waitJob(t, receipt2, domain.JobSubmitted)
			if j2.MachineID != m.ID {
				t.Fatalf("second job machine id = %q, want %q", j2.MachineID, m.ID)
			}
			if got := len(apiRequests(e.sim, http.MethodGet, "/api/machines")); got != lookups {
				t.Errorf("machine lookups went from %d to %d: the cache was not used", lookups, got)
			}
		})
	}
}

// TestPermanentFailuresAreDead: errors no retry fixes end the job at once
// with Defender's code, message and correlation id in the audit trail.
func TestPermanentFailuresAreDead(t *testing.T) {
	linux := defendersim.Machine{ID: strings.Repeat("ab", 20), ComputerDNSName: "tux.contoso.com", OSPlatform: "Linux", HealthStatus: "Active"}
	win := defendersim.GenerateMachines(1)[0]
	cases := []struct {
		name      string
		sim       defendersim.Options
		dev       alert.Device
		wantErr   []string
		wantScans int
	}{
		{"unknown DNS name", defendersim.Options{}, alert.Device{DNSName: "nosuch.contoso.com"},
			[]string{`no Defender machine named "nosuch.contoso.com"`}, 0},
		{"unknown machine id", defendersim.Options{}, alert.Device{ID: strings.Repeat("0", 40)},
			[]string{"not_found", "HTTP 404 ResourceNotFound", "[target "}, 1},
		{"unsupported platform", defendersim.Options{Machines: []defendersim.Machine{linux, win}}, alert.Device{ID: linux.ID},
			[]string{"bad_request", "OsPlatformNotSupported"}, 1},
		{"missing Machine.Scan role", defendersim.Options{Roles: []string{defendersim.RoleMachineReadAll}}, alert.Device{ID: win.ID},
			[]string{"forbidden", "HTTP 403"}, 1},
		{"invalid DNS name", defendersim.Options{}, alert.Device{DNSName: "bad name!"},
			[]string{"not a valid computer name"}, 0},
		{"AAD device id only", defendersim.Options{}, alert.Device{AADDeviceID: "3f1c9a44-0000-4000-8000-000000000001"},
			[]string{"no Defender machine id or DNS name"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{sim: tc.sim})
			receipt, _ := e.queue(t, tc.dev, domain.ScanQuick)
			start(t, e.dispatcher(t, Options{}))
			j := e.waitJob(t, receipt, domain.JobDead)
			for _, w := range tc.wantErr {
				if !strings.Contains(j.LastError, w) {
					t.Errorf("last error %q does not contain %q", j.LastError, w)
				}
			}
			if j.Attempts != 1 {
				t.Errorf("attempts = %d, want 1 (no retry)", j.Attempts)
			}
			if n := len(scanRequests(e.sim)); n != tc.wantScans {
				t.Errorf("scan requests = %d, want %d", n, tc.wantScans)
			}
		})
	}
}

// TestNegativeCache: a storm of jobs naming the same unknown device costs
// one lookup.
func TestNegativeCache(t *testing.T) {
	e := newEnv(t, envOpts{})
	var receipts []string
	for _, name := range []string{"ghost.contoso.com", "GHOST.contoso.com", "Ghost.Contoso.com."} {
		// Different device keys, one name once letter case and the
		// trailing dot are set aside: all three are queued.
		r, _ := e.queue(t, alert.Device{DNSName: name}, domain.ScanQuick)
		receipts = append(receipts, r)
	}
	start(t, e.dispatcher(t, Options{Workers: 1}))
	for _, r := range receipts {
		e.waitJob(t, r, domain.JobDead)
	}
	if n := len(apiRequests(e.sim, http.MethodGet, "/api/machines")); n != 1 {
		t.Errorf("machine lookups = %d, want 1", n)
	}
}

func TestAlreadyScanning(t *testing.T) {
	cases := []struct {
		mode       string
		wantAction bool
	}{
		{defendersim.DuplicateScanError, false},
		{defendersim.DuplicateScanExisting, true},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			clock := newFakeClock()
			e := newEnv(t, envOpts{clock: clock, sim: defendersim.Options{DuplicateScan: tc.mode, PendingFor: time.Hour}})
			cs := e.counting()
			m := machine(t, e.sim, 1)
			// Someone else's scan is pending on the machine.
			other, err := e.client.RunAntiVirusScan(context.Background(), m.ID, domain.ScanQuick, "scan by the SOC")
			if err != nil {
				t.Fatalf("RunAntiVirusScan: %v", err)
			}
			receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanFull)
			start(t, e.dispatcher(t, Options{}))
			j := e.waitJob(t, receipt, domain.JobAlreadyScanning)
			if !strings.Contains(j.LastError, "already scanning") {
				t.Errorf("reason %q does not say already scanning", j.LastError)
			}
			if tc.wantAction != (j.ActionID == other.ID) {
				t.Errorf("job action id = %q, pending action %s (want recorded: %v)", j.ActionID, other.ID, tc.wantAction)
			}
			// No retry: past any backoff, a whole claim hands out nothing.
			clock.Advance(time.Minute)
			cs.claimRound(t)
			if n := cs.claimed.Load(); n != 1 {
				t.Errorf("the job was claimed %d times, want once (no retry)", n)
			}
			if n := len(scanRequests(e.sim)); n != 2 {
				t.Errorf("scan requests = %d, want 2 (the SOC's and ours, no retry)", n)
			}
			if n := len(simActionsOn(e.sim, m.ID)); n != 1 {
				t.Errorf("sim actions = %d, want 1", n)
			}
			if j, _ := e.job(t, receipt); j.Attempts != 1 {
				t.Errorf("attempts = %d, want 1", j.Attempts)
			}
		})
	}
}

func TestTransientFailuresRetryWithBackoffThenSucceed(t *testing.T) {
	cases := []struct {
		name    string
		faults  defendersim.Faults
		wantErr string
	}{
		{"5xx", defendersim.Faults{ErrorRate: 1}, "HTTP 50"},
		{"connection resets", defendersim.Faults{ResetRate: 1}, "network"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			e := newEnv(t, envOpts{clock: clock, sim: defendersim.Options{Seed: 7}})
			m := machine(t, e.sim, 2)
			e.sim.SetFaults(tc.faults)
			cs := e.counting()
			receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
			base, maxDelay := 20*time.Millisecond, 80*time.Millisecond
			start(t, e.dispatcher(t, Options{BackoffBase: base, BackoffMax: maxDelay, MaxAttempts: 50}))

			// With Rand fixed at 0.5 the delay after attempt n is
			// 0.75·min(base·2^(n-1), max): the gaps grow exponentially up
			// to the cap. The clock moves only when the test moves it:
			// a microsecond before its delay has passed, a whole claim
			// does not hand the job out; at the delay, it does.
			const failures = 4
			for n := 1; n <= failures; n++ {
				var j store.JobDetail
				testutil.WaitForState(t, fmt.Sprintf("retry %d recorded", n), func() bool {
					j, _ = e.job(t, receipt)
					// Receipt reads the job and its history apart: wait for both.
					return j.State == domain.JobRetry && j.Attempts == n && len(j.History) == n
				}, func() string {
					return fmt.Sprintf("job %s, attempt %d, %d outcomes: %s", j.State, j.Attempts, len(j.History), j.LastError)
				})
				if n == failures {
					e.sim.SetFaults(defendersim.Faults{})
				}
				want := min(base<<(n-1), maxDelay) * 3 / 4
				clock.Advance(want - time.Microsecond)
				cs.claimRound(t)
				if got := cs.claimed.Load(); got != int64(n) {
					t.Fatalf("attempt %d was claimed before its %s delay after attempt %d had passed", n+1, want, n)
				}
				clock.Advance(time.Microsecond)
			}
			j := e.waitJob(t, receipt, domain.JobSubmitted)

			if n := len(simActionsOn(e.sim, m.ID)); n != 1 {
				t.Fatalf("sim actions = %d, want exactly 1", n)
			}
			if j.Attempts != failures+1 || cs.claimed.Load() != failures+1 {
				t.Errorf("attempts = %d, claims of the job = %d, want %d", j.Attempts, cs.claimed.Load(), failures+1)
			}
			retries := 0
			for _, h := range j.History {
				if h.Outcome == string(store.OutcomeRetry) {
					retries++
					if !strings.Contains(h.Error, tc.wantErr) {
						t.Errorf("retry error %q does not contain %q", h.Error, tc.wantErr)
					}
				}
			}
			if retries != failures {
				t.Fatalf("retries recorded = %d, want %d: %+v", retries, failures, j.History)
			}
		})
	}
}

func TestThrottledHonoursRetryAfter(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envOpts{clock: clock, sim: defendersim.Options{RateLimit: defendersim.RateLimit{PerMinute: 1}}})
	a, b := machine(t, e.sim, 0), machine(t, e.sim, 1)
	// Use up the scan budget of the minute.
	if _, err := e.client.RunAntiVirusScan(context.Background(), a.ID, domain.ScanQuick, "budget"); err != nil {
		t.Fatalf("RunAntiVirusScan: %v", err)
	}
	receipt, _ := e.queue(t, alert.Device{ID: b.ID}, domain.ScanQuick)
	cs := e.counting()
	start(t, e.dispatcher(t, Options{BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond}))

	j := e.waitJob(t, receipt, domain.JobRetry)
	if !strings.Contains(j.LastError, "throttled") || !strings.Contains(j.LastError, "HTTP 429") {
		t.Fatalf("last error %q, want a 429", j.LastError)
	}
	throttled := scanRequests(e.sim)
	if len(throttled) != 2 || throttled[1].Status != http.StatusTooManyRequests {
		t.Fatalf("scan requests %d, want the budget call and one 429", len(throttled))
	}
	// The backoff alone (ms) would retry at once; Retry-After (60s) holds
	// it: a whole claim, at once and a second before the minute ends,
	// hands the job out no more.
	for _, step := range []struct {
		advance time.Duration
		when    string
	}{
		{0, "at once"},
		{59 * time.Second, "a second before Retry-After ends"},
	} {
		clock.Advance(step.advance)
		cs.claimRound(t)
		if n := cs.claimed.Load(); n != 1 {
			t.Fatalf("%s: the job was claimed %d times, want once", step.when, n)
		}
		if n := len(scanRequests(e.sim)); n != 2 {
			t.Fatalf("%s: scan requests = %d, want 2", step.when, n)
		}
	}
	clock.Advance(2 * time.Second)
	j = e.waitJob(t, receipt, domain.JobSubmitted)
	if j.Attempts != 2 {
		t.Errorf("attempts = %d, want 2", j.Attempts)
	}
	if n := len(simActionsOn(e.sim, b.ID)); n != 1 {
		t.Errorf("sim actions on b = %d, want 1", n)
	}
}

func TestGivingUp(t *testing.T) {
	t.Run("max attempts", func(t *testing.T) {
		e := newEnv(t, envOpts{sim: defendersim.Options{Seed: 3}})
		m := machine(t, e.sim, 0)
		e.sim.SetFaults(defendersim.Faults{ErrorRate: 1})
		receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
		stop := start(t, e.dispatcher(t, Options{MaxAttempts: 3}))
		j := e.waitJob(t, receipt, domain.JobDead)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if j.Attempts != 3 {
			t.Errorf("attempts = %d, want 3", j.Attempts)
		}
		if !strings.HasPrefix(j.LastError, "gave up after 3 attempts: last error: ") || !strings.Contains(j.LastError, "HTTP 50") {
			t.Errorf("last error = %q", j.LastError)
		}
		if got := counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "retry"}); got != 2 {
			t.Errorf("retries counted = %v, want 2", got)
		}
	})
	t.Run("unauthorized retried then dead", func(t *testing.T) {
		e := newEnv(t, envOpts{client: func(_ *defender.Config, d *defender.Deps) {
			d.Getenv = func(k string) string {
				if k == "AZURE_CLIENT_SECRET" {
					return "wrong secret"
				}
				return ""
			}
		}})
		m := machine(t, e.sim, 0)
		receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
		start(t, e.dispatcher(t, Options{MaxAttempts: 2}))
		j := e.waitJob(t, receipt, domain.JobDead)
		if j.Attempts != 2 || !strings.Contains(j.LastError, "gave up after 2 attempts") || !strings.Contains(j.LastError, "unauthorized") {
			t.Errorf("attempts %d, last error %q", j.Attempts, j.LastError)
		}
		if strings.Contains(j.LastError, "wrong secret") || strings.Contains(e.logs.String(), "wrong secret") {
			t.Error("the client secret reached the audit trail or the log")
		}
	})
	t.Run("max age", func(t *testing.T) {
		clock := newFakeClock()
		e := newEnv(t, envOpts{clock: clock})
		m := machine(t, e.sim, 0)
		receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
		clock.Advance(2 * time.Hour)
		start(t, e.dispatcher(t, Options{MaxAge: time.Hour}))
		j := e.waitJob(t, receipt, domain.JobDead)
		if !strings.Contains(j.LastError, "past max_age 1h0m0s") {
			t.Errorf("last error = %q", j.LastError)
		}
		if n := len(scanRequests(e.sim)); n != 0 {
			t.Errorf("scan requests = %d, want 0", n)
		}
	})
}

// TestCrashRecovery: a job left "calling" by a dead process is checked
// against Defender before any new call.
func TestCrashRecovery(t *testing.T) {
	cases := []struct {
		name        string
		reached     bool // the crashed attempt's call reached Defender
		wantOutcome string
	}{
		{"call reached Defender: adopted", true, "adopted"},
		{"call never sent: scanned once", false, "submitted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			e := newEnv(t, envOpts{clock: clock, sim: defendersim.Options{PendingFor: time.Hour}})
			m := machine(t, e.sim, 4)
			receipt, jobID := e.queue(t, alert.Device{ID: m.ID}, domain.ScanFull)
			ctx := context.Background()

			// The crashed process: claimed, marked calling, maybe called.
			jobs, err := e.st.ClaimJobs(ctx, "crashed", 10, time.Minute)
			if err != nil || len(jobs) != 1 || jobs[0].ID != jobID {
				t.Fatalf("ClaimJobs = %+v, %v", jobs, err)
			}
			if err := e.st.MarkCalling(ctx, jobID, "crashed"); err != nil {
				t.Fatalf("MarkCalling: %v", err)
			}
			var first *defender.MachineAction
			if tc.reached {
				first, err = e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanFull, jobs[0].Comment)
				if err != nil {
					t.Fatalf("RunAntiVirusScan: %v", err)
				}
			}
			clock.Advance(2 * time.Minute) // the lease runs out

			start(t, e.dispatcher(t, Options{}))
			j := e.waitJob(t, receipt, domain.JobSubmitted)
			acts := simActionsOn(e.sim, m.ID)
			if len(acts) != 1 {
				t.Fatalf("sim actions = %d, want exactly 1", len(acts))
			}
			if j.ActionID != acts[0].ID {
				t.Errorf("job action %q, sim action %q", j.ActionID, acts[0].ID)
			}
			wantCalls := 1
			if tc.reached {
				if j.ActionID != first.ID {
					t.Errorf("adopted action %q, want the crashed attempt's %q", j.ActionID, first.ID)
				}
			}
			if n := len(scanRequests(e.sim)); n != wantCalls {
				t.Errorf("scan requests = %d, want %d", n, wantCalls)
			}
			// The outcome is counted just after it is recorded.
			testutil.WaitFor(t, "scanhook_jobs_total{outcome="+tc.wantOutcome+"} to reach 1", func() bool {
				return counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": tc.wantOutcome}) == 1
			})
			lists := apiRequests(e.sim, http.MethodGet, "/api/machineactions")
			if len(lists) == 0 || !strings.Contains(lists[0].RawQuery, "machineId") || !strings.Contains(lists[0].RawQuery, "RunAntiVirusScan") {
				t.Errorf("no adoption look-up by machine and type: %+v", lists)
			}
		})
	}
}

func TestGracefulStop(t *testing.T) {
	cases := []struct {
		name          string
		latency       time.Duration
		grace         time.Duration
		wantSubmitted bool
	}{
		{"attempts finish within the grace", 300 * time.Millisecond, 10 * time.Second, true},
		// The calls would outlast the client's 5s timeout: only the cut
		// can end them as abandoned rather than as timed out.
		{"attempts cut after the grace are released", time.Hour, 50 * time.Millisecond, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			var receipts []string
			for i := range 2 {
				r, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
				receipts = append(receipts, r)
			}
			e.sim.SetFaults(defendersim.Faults{Latency: tc.latency})
			d := e.dispatcher(t, Options{Workers: 2, ShutdownGrace: tc.grace})
			stop := start(t, d)
			testutil.WaitFor(t, "both jobs to be calling", func() bool {
				st, err := e.st.Stats(context.Background())
				return err == nil && st.JobsByState[domain.JobCalling] == 2
			})
			// stop fails if Run does not return (20s): a stop that
			// ignored the grace would sit out the calls.
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			// Whether the grace ran out is in the log, not in how long
			// the stop took.
			const cut = "dispatcher stop: cancelling attempts still in flight"
			if got := strings.Contains(e.logs.String(), cut); got == tc.wantSubmitted {
				t.Errorf("log says %q: %v, want %v", cut, got, !tc.wantSubmitted)
			}
			wantAbandoned := 2.0
			if tc.wantSubmitted {
				wantAbandoned = 0
			}
			if n := counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "abandoned"}); n != wantAbandoned {
				t.Errorf("abandoned attempts counted = %v, want %v", n, wantAbandoned)
			}
			st, err := e.st.Stats(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if st.JobsByState[domain.JobLeased]+st.JobsByState[domain.JobCalling] != 0 {
				t.Fatalf("jobs still held after stop: %v", st.JobsByState)
			}
			if tc.wantSubmitted {
				if st.JobsByState[domain.JobSubmitted] != 2 {
					t.Fatalf("jobs by state %v, want 2 submitted", st.JobsByState)
				}
				return
			}
			// Released: due now, and another process takes them at once
			// (no wait for a lease), checking Defender first.
			if st.QueueDepth != 2 {
				t.Fatalf("queue depth %d after release, want 2 (%v)", st.QueueDepth, st.JobsByState)
			}
			e.sim.SetFaults(defendersim.Faults{})
			e.reg = prometheus.NewRegistry() // a new process
			d2 := e.dispatcher(t, Options{Owner: "second"})
			start(t, d2)
			for _, r := range receipts {
				e.waitJob(t, r, domain.JobSubmitted)
			}
			if n := len(e.sim.Actions()); n != 2 {
				t.Errorf("sim actions = %d, want 2", n)
			}
		})
	}
}

func TestPollingBatchesManyActions(t *testing.T) {
	e := newEnv(t, envOpts{sim: defendersim.Options{PendingFor: 200 * time.Millisecond, InProgressFor: time.Hour}})
	const n = 20
	var receipts []string
	for i := range n {
		r, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
		receipts = append(receipts, r)
	}
	// A submitted job with an action Defender does not know.
	r, jobID := e.queue(t, alert.Device{ID: machine(t, e.sim, n).ID}, domain.ScanQuick)
	ctx := context.Background()
	if _, err := e.st.ClaimJobs(ctx, "other", 100, time.Minute); err != nil {
		t.Fatal(err)
	}
	// Hand the others back; keep the one job to complete by hand.
	const ghost = "0badc0de-0000-4000-8000-000000000000"
	if err := e.st.CompleteJob(ctx, store.JobResult{JobID: jobID, Owner: "other", Outcome: store.OutcomeSubmitted,
		MachineID: machine(t, e.sim, n).ID, ActionID: ghost, ActionStatus: domain.ActionPending}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.ReleaseJobs(ctx, "other"); err != nil {
		t.Fatal(err)
	}

	d := e.dispatcher(t, Options{PollInterval: time.Hour, Workers: 8})
	stop := start(t, d)
	for _, r := range receipts {
		e.waitJob(t, r, domain.JobSubmitted)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "every action InProgress at the simulator", func() bool {
		for _, a := range e.sim.Actions() {
			if a.Status != defendersim.StatusInProgress {
				return false
			}
		}
		return true
	})
	e.sim.ResetRequests()

	reported, err := d.pollOnce(ctx)
	if err != nil {
		t.Fatalf("pollOnce: %v", err)
	}
	if reported != n {
		t.Errorf("reported %d, want %d", reported, n)
	}
	lists := apiRequests(e.sim, http.MethodGet, "/api/machineactions")
	if len(lists) != 1 {
		t.Fatalf("ListActions requests = %d for %d open actions, want 1", len(lists), n+1)
	}
	if got := strings.Count(lists[0].RawQuery, "id%20eq%20"); got != n+1 {
		t.Errorf("ids in the one request = %d, want %d (%s)", got, n+1, lists[0].RawQuery)
	}
	for _, r := range receipts {
		if _, acts := e.job(t, r); len(acts) != 1 || acts[0].Status != domain.ActionInProgress {
			t.Fatalf("action after poll: %s, want InProgress", actionStatuses(acts))
		}
	}
	// The unknown action keeps its status but goes to the back of the
	// polling order.
	if _, acts := e.job(t, r); len(acts) != 1 || acts[0].Status != domain.ActionPending || acts[0].LastPolledAt.IsZero() {
		t.Errorf("unknown action: %+v, want left Pending with a poll time", acts)
	}
	if got := counter(t, e.reg, "scanhook_dispatch_poll_batches_total", map[string]string{"result": "ok"}); got != 1 {
		t.Errorf("poll batches = %v, want 1", got)
	}
}

func TestDryRunNeverCallsDefender(t *testing.T) {
	e := newEnv(t, envOpts{})
	receipt, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, 0).ID}, domain.ScanQuick)
	receipt2, _ := e.queue(t, alert.Device{DNSName: "ws-002.contoso.com"}, domain.ScanQuick)
	cs := e.counting()
	stop := start(t, e.dispatcher(t, Options{DryRun: true, PollInterval: 10 * time.Millisecond}))
	for _, r := range []string{receipt, receipt2} {
		j := e.waitJob(t, r, domain.JobDead)
		if !strings.Contains(j.LastError, "dry run") {
			t.Errorf("last error %q, want dry run", j.LastError)
		}
	}
	// Once Run has returned, the dispatcher has made every call it will.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// No poller either (it ticks every 10ms, so one would most likely
	// have read the open actions by now).
	if n := cs.openActions.Load(); n != 0 {
		t.Errorf("open actions read %d times in dry run: the poller ran", n)
	}
	if n := len(apiRequests(e.sim, http.MethodGet, "/api/")) + len(apiRequests(e.sim, http.MethodPost, "/api/")); n != 0 {
		t.Errorf("Defender API requests = %d in dry run, want 0", n)
	}
}

func TestKickDispatchesAtOnce(t *testing.T) {
	e := newEnv(t, envOpts{})
	cs := e.counting()
	// With an hour between idle claims, only a kick can dispatch the job.
	d := e.dispatcher(t, Options{ClaimInterval: time.Hour})
	start(t, d)
	// The first claim has ended, so it cannot have seen the job: a kick
	// from now on is either taken by the loop's wait or left for it.
	testutil.WaitFor(t, "the first claim", func() bool { return cs.claims.Load() >= 1 })
	receipt, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, 0).ID}, domain.ScanQuick)
	d.Kick()
	d.Kick() // never blocks
	e.waitJob(t, receipt, domain.JobSubmitted)
	if n := cs.claims.Load(); n < 2 {
		t.Errorf("claims = %d, want a second one after the kick", n)
	}
}

func TestQueueGauges(t *testing.T) {
	e := newEnv(t, envOpts{})
	for i := range 3 {
		e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
	}
	d := e.dispatcher(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.statsLoop(ctx); close(done) }()
	testutil.WaitFor(t, "the queue gauges to show 3 queued jobs", func() bool {
		return counter(t, e.reg, "scanhook_jobs_due", nil) == 3 &&
			counter(t, e.reg, "scanhook_jobs", map[string]string{"state": "queued"}) == 3
	})
	cancel()
	<-done
	if got := counter(t, e.reg, "scanhook_jobs", map[string]string{"state": "dead"}); got != 0 {
		t.Errorf("dead gauge = %v", got)
	}
}

func TestOptions(t *testing.T) {
	cases := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"defaults", Options{}, ""},
		{"negative workers", Options{Workers: -1}, "dispatch.workers"},
		{"negative lease", Options{Lease: -time.Second}, "dispatch.lease"},
		{"max below base", Options{BackoffBase: time.Minute, BackoffMax: time.Second}, "dispatch.backoff_max"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			err := o.fill()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if o.Owner == "" || o.Workers != config.Defaults().Dispatch.Workers || o.ShutdownGrace > o.Lease/2 {
					t.Errorf("defaults not applied: %+v", o)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
	if _, err := New(Deps{}, Options{}); err == nil {
		t.Error("New without a store: no error")
	}
	c := config.Defaults().Dispatch
	o := FromConfig(c, true, "me")
	if o.Owner != "me" || !o.DryRun || o.Workers != c.Workers || o.MaxAttempts != c.MaxAttempts || o.MaxAge != c.MaxAge ||
		o.BackoffBase != c.BackoffBase || o.BackoffMax != c.BackoffMax || o.Lease != c.Lease || o.PollInterval != c.PollInterval {
		t.Errorf("FromConfig(%+v) = %+v", c, o)
	}
	if a, b := DefaultOwner(), DefaultOwner(); a == b {
		t.Errorf("DefaultOwner twice gave %q", a)
	}
}

func TestBackoff(t *testing.T) {
	cases := []struct {
		n          int
		r          float64
		retryAfter time.Duration
		want       time.Duration
	}{
		{1, 0, 0, 500 * time.Millisecond},
		{1, 0.75, 0, 875 * time.Millisecond},
		{3, 0, 0, 2 * time.Second},
		{3, 0.5, 0, 3 * time.Second},
		{10, 0, 0, 30 * time.Second}, // capped at 60s, half fixed
		{100, 0.5, 0, 45 * time.Second},
		{1, 0.5, 90 * time.Second, 90 * time.Second}, // Retry-After wins
		{0, 0, 0, 500 * time.Millisecond},
	}
	for _, tc := range cases {
		d := &Dispatcher{opts: Options{BackoffBase: time.Second, BackoffMax: time.Minute}, rnd: func() float64 { return tc.r }}
		if got := d.backoff(tc.n, tc.retryAfter); got != tc.want {
			t.Errorf("backoff(%d, r=%v, retryAfter=%s) = %s, want %s", tc.n, tc.r, tc.retryAfter, got, tc.want)
		}
	}
}

func TestResolveCache(t *testing.T) {
	clock := newFakeClock()
	c := newResolveCache(2, time.Hour, 5*time.Minute, clock.Now)
	c.put("a", "id-a")
	c.put("gone", "")
	if e, ok := c.get("a"); !ok || e.id != "id-a" {
		t.Fatalf("get a = %+v %v", e, ok)
	}
	clock.Advance(5 * time.Minute)
	if _, ok := c.get("gone"); ok {
		t.Error("negative entry outlived its 5m")
	}
	if _, ok := c.get("a"); !ok {
		t.Error("positive entry gone before 1h")
	}
	c.put("b", "id-b")
	c.put("c", "id-c") // evicts the least recently used: a
	if _, ok := c.get("a"); ok {
		t.Error("a not evicted")
	}
	if c.len() != 2 {
		t.Errorf("len = %d, want 2", c.len())
	}
	clock.Advance(time.Hour)
	if _, ok := c.get("b"); ok {
		t.Error("positive entry outlived 1h")
	}
	c.forget("C.")
	if _, ok := c.get("c"); ok {
		t.Error("forget did not forget")
	}
}

// TestLeaseLostIsDropped: an attempt that outlived its lease records
// nothing; the job belongs to its new owner.
func TestLeaseLostIsDropped(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envOpts{clock: clock})
	m := machine(t, e.sim, 0)
	receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
	// The call is slow enough for the lease to be taken over meanwhile.
	e.sim.SetFaults(defendersim.Faults{Latency: 2 * time.Second})
	// One worker, busy with the job: our own claim loop cannot take the
	// expired lease back before the thief does.
	start(t, e.dispatcher(t, Options{Lease: time.Minute, Workers: 1}))
	testutil.WaitFor(t, "the job to be calling", func() bool {
		j, _ := e.job(t, receipt)
		return j.State == domain.JobCalling
	})
	clock.Advance(2 * time.Minute)
	jobs, err := e.st.ClaimJobs(context.Background(), "thief", 10, time.Hour)
	if err != nil || len(jobs) != 1 || !jobs[0].Calling {
		t.Fatalf("thief claimed %+v, %v", jobs, err)
	}
	testutil.WaitFor(t, "the lease loss to be counted", func() bool {
		return counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "lease_lost"}) == 1
	})
	j, _ := e.job(t, receipt)
	if j.State != domain.JobLeased {
		t.Errorf("job state %s, want still leased by the thief", j.State)
	}
	if !strings.Contains(e.logs.String(), `"outcome":"lease_lost"`) {
		t.Error("no lease_lost log line")
	}
}

// TestTwoDispatchersShareTheQueue: two processes on one store, Defender
// failing close to a third of the calls: every job ends with exactly one scan, and
// no job ever sees "already scanning" (which a second call for a job whose
// scan is pending would get).
func TestTwoDispatchersShareTheQueue(t *testing.T) {
	e := newEnv(t, envOpts{sim: defendersim.Options{PendingFor: time.Hour, Seed: 11}})
	const n = 12
	var receipts []string
	for i := range n {
		r, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
		receipts = append(receipts, r)
	}
	e.sim.SetFaults(defendersim.Faults{ErrorRate: 0.25, ResetRate: 0.05})
	regA := e.reg
	stopA := start(t, e.dispatcher(t, Options{Owner: "a", Workers: 3, MaxAttempts: 100}))
	e.reg = prometheus.NewRegistry()
	stopB := start(t, e.dispatcher(t, Options{Owner: "b", Workers: 3, MaxAttempts: 100}))
	for _, r := range receipts {
		e.waitJob(t, r, domain.JobSubmitted)
	}
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		m := machine(t, e.sim, i)
		if got := len(simActionsOn(e.sim, m.ID)); got != 1 {
			t.Errorf("machine %d: %d actions, want 1", i, got)
		}
	}
	st := e.sim.Stats()
	if st.AlreadyRunning != 0 {
		t.Errorf("Defender answered 'already running' %d times: a job was sent twice", st.AlreadyRunning)
	}
	a := counter(t, regA, "scanhook_jobs_total", map[string]string{"outcome": "submitted"})
	b := counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "submitted"})
	if a+b != n {
		t.Errorf("submitted by a %v + by b %v, want %d", a, b, n)
	}
}

// TestBreakerOpenWaitsForIt: once the client's breaker is open, the job
// waits for the breaker's remaining open time instead of its short backoff.
func TestBreakerOpenWaitsForIt(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, envOpts{
		clock: clock,
		sim:   defendersim.Options{Seed: 5},
		client: func(_ *defender.Config, d *defender.Deps) {
			d.BreakerFailures = 1
			d.BreakerOpenFor = time.Hour
		},
	})
	e.sim.SetFaults(defendersim.Faults{ErrorRate: 1})
	receipt, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, 0).ID}, domain.ScanQuick)
	cs := e.counting()
	start(t, e.dispatcher(t, Options{MaxAttempts: 50}))
	var j store.JobDetail
	testutil.WaitForState(t, "a retry for the circuit breaker", func() bool {
		j, _ = e.job(t, receipt)
		if j.State == domain.JobRetry && !strings.Contains(j.LastError, "circuit breaker") {
			// A retry for the 5xx itself: past its short backoff.
			clock.Advance(time.Second)
		}
		return j.State == domain.JobRetry && strings.Contains(j.LastError, "circuit breaker")
	}, func() string { return "job " + j.State + ": " + j.LastError })
	attempts, claimed := j.Attempts, cs.claimed.Load()
	// Scan (500 or 503, trips the scan breaker); after a 500, which may
	// hide a created action, the adoption look-up (5xx, trips the read
	// breaker); after a 503, which proves nothing was created, none. Then
	// nothing reaches Defender for the hour: a minute on, far past the
	// short backoff, a whole claim does not hand the job out.
	clock.Advance(time.Minute)
	cs.claimRound(t)
	if n := cs.claimed.Load(); n != claimed {
		t.Errorf("the job was claimed again %d times while the breaker was open", n-claimed)
	}
	scans := scanRequests(e.sim)
	if len(scans) != 1 {
		t.Fatalf("scan requests = %d, want 1", len(scans))
	}
	want := 2
	if scans[0].Status == http.StatusServiceUnavailable {
		want = 1
	}
	if n := len(apiRequests(e.sim, http.MethodGet, "/api/")) + len(apiRequests(e.sim, http.MethodPost, "/api/")); n != want {
		t.Errorf("API requests = %d, want %d after a %d", n, want, scans[0].Status)
	}
	if j, _ := e.job(t, receipt); j.Attempts != attempts {
		t.Errorf("attempts went from %d to %d while the breaker was open", attempts, j.Attempts)
	}
}
