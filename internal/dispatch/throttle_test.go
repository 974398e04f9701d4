package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/internal/testutil"
)

// adoptLookups are the crash-adoption look-ups the simulator received: a
// list of actions by machine and type (the poller lists by action id).
func adoptLookups(sim *defendersim.Server) []defendersim.Request {
	var out []defendersim.Request
	for _, r := range apiRequests(sim, http.MethodGet, "/api/machineactions") {
		if strings.Contains(r.RawQuery, "machineId") {
			out = append(out, r)
		}
	}
	return out
}

// Our own rate limiter holding a scan back (the hour's budget spent in a
// storm) must never kill the job: each hold-back gives its attempt back,
// and the job comes back when the limiter expects room. Before, the wait
// ran into the attempt's deadline and came back as a Timeout, an attempt
// used up, and after MaxAttempts of them the acknowledged alert was dead.
func TestLocalThrottleNeverKillsJobs(t *testing.T) {
	clock := newFakeClock()
	// The limiter's clock stands still until the test lets its window
	// pass, while the store's moves the job from one retry to the next.
	// (A short window: the simulator's tokens expire on the fake clock.)
	limClock := newFakeClock()
	e := newEnv(t, envOpts{clock: clock, client: func(_ *defender.Config, d *defender.Deps) {
		lim, err := defender.NewSlidingWindowLimiter(defender.SlidingWindowOptions{
			Windows: []defender.Window{{Limit: 1, Length: 5 * time.Minute}}, Margin: -1, Now: limClock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		d.Limiter = lim
		d.BreakerFailures = 1
	}})
	a, b := machine(t, e.sim, 0), machine(t, e.sim, 1)
	// The storm has spent the window's scan budget.
	if _, err := e.client.RunAntiVirusScan(context.Background(), a.ID, domain.ScanQuick, "budget"); err != nil {
		t.Fatalf("RunAntiVirusScan: %v", err)
	}
	receipt, _ := e.queue(t, alert.Device{ID: b.ID}, domain.ScanQuick)
	cs := e.counting()
	const maxAttempts = 2
	// Lease/2 = 1s bounds each attempt: far less than the window's wait.
	// NoBudgetWait: claim regardless, as when another replica took the
	// room between the dispatcher's look and its call.
	start(t, e.dispatcher(t, Options{MaxAttempts: maxAttempts, Lease: 2 * time.Second, NoBudgetWait: true}))

	const holds = maxAttempts + 2
	for i := 1; i <= holds; i++ {
		var j store.JobDetail
		testutil.WaitForState(t, "hold-back "+itoa(i)+" to be recorded", func() bool {
			j, _ = e.job(t, receipt)
			// Receipt reads the job and its history apart: wait for both.
			return countOutcome(j, store.OutcomeNotAttempted) == i && j.State != domain.JobCalling && j.State != domain.JobLeased
		}, func() string { return "job " + j.State + ": " + j.LastError })
		if j.State != domain.JobRetry || j.Attempts != 0 {
			t.Fatalf("after hold-back %d: state %s, attempts %d, want retry with no attempt counted", i, j.State, j.Attempts)
		}
		if !strings.Contains(j.LastError, "local rate limit") {
			t.Errorf("last error %q does not name the local rate limit", j.LastError)
		}
		// Not before the limiter expects room: a minute early, a whole
		// claim does not hand the job out.
		clock.Advance(4 * time.Minute)
		cs.claimRound(t)
		if n := cs.claimed.Load(); n != int64(i) {
			t.Fatalf("claimed %d times before the predicted wait ended", n-int64(i))
		}
		if i < holds {
			clock.Advance(2 * time.Minute)
		}
	}
	limClock.Advance(5 * time.Minute)
	clock.Advance(2 * time.Minute)
	j := e.waitJob(t, receipt, domain.JobSubmitted)
	if j.Attempts != 1 {
		t.Errorf("attempts = %d, want 1 (the hold-backs given back)", j.Attempts)
	}
	if n := len(scanRequests(e.sim)); n != 2 {
		t.Errorf("scan requests = %d, want the budget call and the job's one", n)
	}
	// A hold-back proves nothing was sent: no adoption look-up followed.
	if n := len(adoptLookups(e.sim)); n != 0 {
		t.Errorf("adoption look-ups = %d, want 0", n)
	}
	if s := e.client.BreakerState(defender.ScanActions); s != "closed" {
		t.Errorf("scan breaker = %s, want closed", s)
	}
	if got := counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "throttled_local"}); got != holds {
		t.Errorf("throttled_local counted = %v, want %d", got, holds)
	}
}

// MaxAge still applies to a held-back job, but not sooner than it would
// have: the retry is moved up to the job's last moment.
func TestLocalThrottleMaxAge(t *testing.T) {
	clock := newFakeClock()
	limClock := newFakeClock()
	e := newEnv(t, envOpts{clock: clock, client: func(_ *defender.Config, d *defender.Deps) {
		lim, err := defender.NewSlidingWindowLimiter(defender.SlidingWindowOptions{
			Windows: []defender.Window{{Limit: 1, Length: time.Hour}}, Margin: -1, Now: limClock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		d.Limiter = lim
	}})
	if _, err := e.client.RunAntiVirusScan(context.Background(), machine(t, e.sim, 0).ID, domain.ScanQuick, "budget"); err != nil {
		t.Fatal(err)
	}
	receipt, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, 1).ID}, domain.ScanQuick)
	cs := e.counting()
	start(t, e.dispatcher(t, Options{MaxAge: 30 * time.Minute, Lease: 2 * time.Second, NoBudgetWait: true}))
	e.waitJob(t, receipt, domain.JobRetry)
	// The hour's wait runs past max_age: the job is not given up at once,
	// nor tried again a minute before max_age.
	clock.Advance(29 * time.Minute)
	cs.claimRound(t)
	if n := cs.claimed.Load(); n != 1 {
		t.Fatalf("a minute before max_age: claimed %d times, want once", n)
	}
	if j := e.mustJob(t, receipt); j.State != domain.JobRetry || countOutcome(j, store.OutcomeNotAttempted) != 1 {
		t.Fatalf("a minute before max_age: state %s, history %+v", j.State, j.History)
	}
	// At its last moment it is tried once more, held back, and given up.
	clock.Advance(time.Minute)
	j := e.waitJob(t, receipt, domain.JobDead)
	if !strings.Contains(j.LastError, "max_age") || !strings.Contains(j.LastError, "local rate limit") {
		t.Errorf("last error = %q", j.LastError)
	}
	if n := countOutcome(j, store.OutcomeNotAttempted); n != 1 || j.Attempts != 1 {
		t.Errorf("hold-backs recorded = %d, attempts %d, want 1 and 1", n, j.Attempts)
	}
}

// The calling flag is cleared when an attempt's call ended in a way that
// proves no action was created, so the next attempt does not spend the
// ActionReads budget looking for one; it is kept when the call may have
// reached Defender and been lost on the way back.
func TestCallingClearedOnlyWhenNothingCreated(t *testing.T) {
	t.Run("429", func(t *testing.T) {
		clock := newFakeClock()
		e := newEnv(t, envOpts{clock: clock, sim: defendersim.Options{RateLimit: defendersim.RateLimit{PerMinute: 1}}})
		a, b := machine(t, e.sim, 0), machine(t, e.sim, 1)
		if _, err := e.client.RunAntiVirusScan(context.Background(), a.ID, domain.ScanQuick, "budget"); err != nil {
			t.Fatal(err)
		}
		receipt, _ := e.queue(t, alert.Device{ID: b.ID}, domain.ScanQuick)
		start(t, e.dispatcher(t, Options{}))
		j := e.waitJob(t, receipt, domain.JobRetry)
		if !strings.Contains(j.LastError, "HTTP 429") {
			t.Fatalf("last error %q, want a 429", j.LastError)
		}
		clock.Advance(61 * time.Second)
		j = e.waitJob(t, receipt, domain.JobSubmitted)
		if j.Attempts != 2 {
			t.Errorf("attempts = %d, want 2", j.Attempts)
		}
		if n := len(adoptLookups(e.sim)); n != 0 {
			t.Errorf("adoption look-ups after a 429 = %d, want 0", n)
		}
	})
	t.Run("503", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		m := machine(t, e.sim, 2)
		e.sim.SetFaults(defendersim.Faults{OutageFor: time.Hour})
		receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
		start(t, e.dispatcher(t, Options{MaxAttempts: 50}))
		testutil.WaitFor(t, "2 scan calls", func() bool {
			return len(scanRequests(e.sim)) >= 2
		})
		e.sim.SetFaults(defendersim.Faults{})
		e.waitJob(t, receipt, domain.JobSubmitted)
		scans := scanRequests(e.sim)
		if scans[0].Status != http.StatusServiceUnavailable || scans[1].Status != http.StatusServiceUnavailable {
			t.Fatalf("first scan statuses %d, %d, want 503s", scans[0].Status, scans[1].Status)
		}
		if n := len(adoptLookups(e.sim)); n != 0 {
			t.Errorf("adoption look-ups after 503s = %d, want 0", n)
		}
		if n := len(simActionsOn(e.sim, m.ID)); n != 1 {
			t.Errorf("sim actions = %d, want 1", n)
		}
	})
	t.Run("timeout after sending", func(t *testing.T) {
		// The timeout is long enough for the call to reach the simulator
		// on a loaded machine (a call that times out before it is sent
		// proves nothing was created), and the latency longer still.
		e := newEnv(t, envOpts{client: func(c *defender.Config, _ *defender.Deps) { c.Timeout = 3 * time.Second }})
		m := machine(t, e.sim, 3)
		e.sim.SetFaults(defendersim.Faults{Latency: time.Hour})
		receipt, _ := e.queue(t, alert.Device{ID: m.ID}, domain.ScanQuick)
		start(t, e.dispatcher(t, Options{MaxAttempts: 50}))
		j := e.waitJob(t, receipt, domain.JobRetry)
		if !strings.Contains(j.LastError, "timeout") {
			t.Fatalf("last error %q, want a timeout", j.LastError)
		}
		e.sim.SetFaults(defendersim.Faults{})
		j = e.waitJob(t, receipt, domain.JobSubmitted)
		lookups := adoptLookups(e.sim)
		if len(lookups) == 0 {
			t.Fatal("no adoption look-up after a call that timed out once sent")
		}
		// The look-up came before the call that succeeded.
		scans := scanRequests(e.sim)
		if last := scans[len(scans)-1]; !lookups[len(lookups)-1].Time.Before(last.Time) && !lookups[len(lookups)-1].Time.Equal(last.Time) {
			t.Errorf("last look-up at %s, after the last scan at %s", lookups[len(lookups)-1].Time, last.Time)
		}
		if n := len(simActionsOn(e.sim, m.ID)); n != 1 {
			t.Errorf("sim actions = %d, want 1", n)
		}
		if j.ActionID == "" {
			t.Error("no action recorded")
		}
	})
}

func countOutcome(j store.JobDetail, outcome string) int {
	n := 0
	for _, h := range j.History {
		if h.Outcome == outcome {
			n++
		}
	}
	return n
}

// jobStates counts the states of the receipts' jobs, and the attempts
// given back to the local rate limit, which the budget look exists to avoid.
func (e *env) jobStates(t testing.TB, receipts []string) (states map[string]int, holdBacks int) {
	t.Helper()
	states = map[string]int{}
	for _, r := range receipts {
		j := e.mustJob(t, r)
		states[j.State]++
		holdBacks += countOutcome(j, store.OutcomeNotAttempted)
	}
	return states, holdBacks
}

func (e *env) mustJob(t testing.TB, receipt string) store.JobDetail {
	t.Helper()
	j, _ := e.job(t, receipt)
	return j
}

func itoa(i int) string { return strconv.Itoa(i) }

// While the scan budget is spent, due jobs stay queued: no claim, no mark,
// no hold-back written for each of them. When room comes back, a call at a
// time, the dispatcher takes one job per call's worth of room instead of
// Workers jobs with all but one held back.
func TestDueJobsWaitForScanBudget(t *testing.T) {
	limClock := newFakeClock()
	const window = 5 * time.Minute
	e := newEnv(t, envOpts{client: func(_ *defender.Config, d *defender.Deps) {
		lim, err := defender.NewSlidingWindowLimiter(defender.SlidingWindowOptions{
			Windows: []defender.Window{{Limit: 1, Length: window}}, Margin: -1, Now: limClock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		d.Limiter = lim
	}})
	if _, err := e.client.RunAntiVirusScan(context.Background(), machine(t, e.sim, 0).ID, domain.ScanQuick, "budget"); err != nil {
		t.Fatalf("RunAntiVirusScan: %v", err)
	}
	var receipts []string
	for i := 1; i <= 3; i++ {
		r, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
		receipts = append(receipts, r)
	}
	start(t, e.dispatcher(t, Options{Workers: 4}))

	countStates := func() (map[string]int, int) { return e.jobStates(t, receipts) }
	testutil.WaitFor(t, "the dispatcher to wait for the scan budget twice", func() bool {
		return counter(t, e.reg, "scanhook_dispatch_budget_waits_total", nil) >= 2
	})
	if states, holdBacks := countStates(); states[domain.JobQueued] != 3 || holdBacks != 0 {
		t.Fatalf("with the budget spent: states %v, hold-backs %d; want 3 queued, none held back", states, holdBacks)
	}

	for round := 1; round <= 3; round++ {
		// One call's worth of room: one more job goes, the others wait.
		limClock.Advance(window + time.Second)
		testutil.WaitForState(t, fmt.Sprintf("round %d: %d jobs submitted, none held", round, round), func() bool {
			states, _ := countStates()
			return states[domain.JobSubmitted] == round && states[domain.JobCalling] == 0 && states[domain.JobLeased] == 0
		}, func() string { states, _ := countStates(); return fmt.Sprintf("states %v", states) })
		// The claim loop comes round again and finds no room: a claim past
		// the room would have been made by now.
		budgetRound(t, e)
		if states, holdBacks := countStates(); states[domain.JobSubmitted] != round || states[domain.JobQueued] != 3-round || holdBacks != 0 {
			t.Fatalf("round %d: states %v, hold-backs %d; want %d submitted, the rest queued, none held back", round, states, holdBacks, round)
		}
	}
	if n := len(scanRequests(e.sim)); n != 4 {
		t.Errorf("scan requests = %d, want the budget call and one per job", n)
	}
	if got := counter(t, e.reg, "scanhook_jobs_total", map[string]string{"outcome": "throttled_local"}); got != 0 {
		t.Errorf("throttled_local = %v, want 0", got)
	}
}

// With some room left, the dispatcher claims no more jobs than it holds,
// though it has more workers free, and the rest wait queued.
func TestClaimsNoMoreThanTheRoom(t *testing.T) {
	e := newEnv(t, envOpts{client: func(_ *defender.Config, d *defender.Deps) {
		lim, err := defender.NewSlidingWindowLimiter(defender.SlidingWindowOptions{
			Windows: []defender.Window{{Limit: 3, Length: time.Hour}}, Margin: -1,
		})
		if err != nil {
			t.Fatal(err)
		}
		d.Limiter = lim
	}})
	var receipts []string
	for i := range 5 {
		r, _ := e.queue(t, alert.Device{ID: machine(t, e.sim, i).ID}, domain.ScanQuick)
		receipts = append(receipts, r)
	}
	start(t, e.dispatcher(t, Options{Workers: 4}))
	count := func() (map[string]int, int) { return e.jobStates(t, receipts) }
	testutil.WaitForState(t, "3 jobs submitted, none held, and a wait for the budget", func() bool {
		states, _ := count()
		return states[domain.JobSubmitted] == 3 && states[domain.JobCalling] == 0 && states[domain.JobLeased] == 0 &&
			counter(t, e.reg, "scanhook_dispatch_budget_waits_total", nil) >= 1
	}, func() string {
		states, _ := count()
		return fmt.Sprintf("states %v, budget waits %v", states, counter(t, e.reg, "scanhook_dispatch_budget_waits_total", nil))
	})
	budgetRound(t, e)
	if states, holdBacks := count(); states[domain.JobSubmitted] != 3 || states[domain.JobQueued] != 2 || holdBacks != 0 {
		t.Errorf("states %v, hold-backs %d; want 3 submitted, 2 queued, none held back", states, holdBacks)
	}
	if n := len(scanRequests(e.sim)); n != 3 {
		t.Errorf("scan requests = %d, want 3", n)
	}
}

// budgetRound waits until the claim loop has found no room for a scan once
// more after the call: every claim the room allowed was made before.
func budgetRound(t *testing.T, e *env) {
	t.Helper()
	n := counter(t, e.reg, "scanhook_dispatch_budget_waits_total", nil)
	testutil.WaitFor(t, "the claim loop to wait for the scan budget again", func() bool {
		return counter(t, e.reg, "scanhook_dispatch_budget_waits_total", nil) > n
	})
}
