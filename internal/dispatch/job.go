package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

// Outcome labels of scanhook_jobs_total and of the per-job log line: the
// store's outcomes plus what the dispatcher did without recording one.
const (
	outSubmitted       = "submitted"
	outAdopted         = "adopted" // a crashed attempt's action, found and recorded
	outAlreadyScanning = "already_scanning"
	outRetry           = "retry"
	// throttled_local: our own rate limit held the call back; the attempt
	// was given back and the job rescheduled.
	outThrottledLocal = "throttled_local"
	outDead           = "dead"
	outLeaseLost      = "lease_lost" // someone else holds the job now
	// deduplicated: the machine the device resolved to already had an open
	// scan or was in cooldown under another name; the store closed the job.
	outDeduplicated = "deduplicated"
	// machine_busy: a Full for a machine whose open Quick came under
	// another name; given back, due again after a poll interval.
	outMachineBusy = "machine_busy"
	outAbandoned   = "abandoned" // stopped mid-attempt; ReleaseJobs hands it back
	outStoreError  = "store_error"
)

// adoptSkew widens the creation-time window of the search for a crashed
// attempt's action, for the difference between our clock and Defender's.
const adoptSkew = 5 * time.Minute

// attempt is the result of working one claimed job.
type attempt struct {
	res   store.JobResult
	label string // one of the out* labels
	err   error  // what went wrong, for the log
}

// work runs one attempt at a claimed job and records its outcome.
func (d *Dispatcher) work(ctx context.Context, j store.Job, claimedAt time.Time) {
	d.m.attempts.Inc()
	// Every Defender call of the attempt ends within half the lease, so the
	// outcome is recorded while the lease is still ours.
	actx, cancel := context.WithDeadline(ctx, claimedAt.Add(d.opts.Lease/2))
	a := d.attempt(actx, j)
	cancel()

	if a.label == outAbandoned || a.label == outLeaseLost || a.label == outDeduplicated {
		d.finish(j, a)
		return
	}
	// The outcome gets its own deadline, and outlives a stop: once Defender
	// has answered, recording the answer is worth more than a fast exit
	// (an unrecorded scan costs the next owner a look-up to find it).
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer ccancel()
	err := d.st.CompleteJob(cctx, a.res)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrLeaseLost):
		a.label, a.err = outLeaseLost, err
	default:
		// The job stays leased (or calling) and goes back to the queue when
		// its lease ends; a calling job is then checked for its action
		// before any new call, so nothing is sent twice.
		d.m.storeErrors.WithLabelValues("complete").Inc()
		a.err = fmt.Errorf("recording outcome %s: %w (previous: %v)", a.res.Outcome, err, a.err)
		a.label = outStoreError
	}
	d.finish(j, a)
}

// finish writes the one log line of the attempt and counts it.
func (d *Dispatcher) finish(j store.Job, a attempt) {
	d.m.jobs.WithLabelValues(a.label).Inc()
	if a.label == outSubmitted || a.label == outAdopted || a.label == outAlreadyScanning || a.label == outDead || a.label == outDeduplicated {
		d.m.attemptsPerJob.Observe(float64(j.Attempts))
	}
	attrs := []any{
		"job_id", j.ID, "alert_id", j.AlertID, "source", j.Source,
		"device", deviceName(j), "scan", j.Scan, "outcome", a.label, "attempt", j.Attempts,
	}
	if a.res.MachineID != "" {
		attrs = append(attrs, "machine_id", a.res.MachineID)
	}
	if a.res.ActionID != "" {
		attrs = append(attrs, "action_id", a.res.ActionID, "action_status", a.res.ActionStatus)
	}
	if a.res.Outcome == store.OutcomeRetry && (a.label == outRetry || a.label == outThrottledLocal || a.label == outMachineBusy) {
		attrs = append(attrs, "retry_at", a.res.RetryAt)
	}
	if a.res.Reason != "" {
		attrs = append(attrs, "reason", a.res.Reason)
	}
	if a.err != nil {
		attrs = append(attrs, "error", a.err.Error())
	}
	level := slog.LevelInfo
	switch a.label {
	case outRetry, outLeaseLost, outAbandoned:
		level = slog.LevelWarn
	case outThrottledLocal:
		// Expected in a storm, and counted in scanhook_jobs_total.
		level = slog.LevelInfo
	case outDead, outStoreError:
		level = slog.LevelError
	}
	d.log.Log(context.Background(), level, "scan job", attrs...)
}

func deviceName(j store.Job) string {
	if j.Device.DNSName != "" {
		return j.Device.DNSName
	}
	if j.Device.ID != "" {
		return j.Device.ID
	}
	if j.Device.AADDeviceID != "" {
		return j.Device.AADDeviceID
	}
	return j.Device.IP
}

// comment is what the scan is requested with, and what a crashed attempt's
// action is recognised by.
func comment(j store.Job) string {
	if c := strings.TrimSpace(j.Comment); c != "" {
		return c
	}
	// Defender requires a comment; this one still leads back to the alert.
	return fmt.Sprintf("scanhook: %s alert %s (job %d)", j.Source, j.AlertID, j.ID)
}

// attempt decides one claimed job. It calls runAntiVirusScan at most once,
// and only after MarkCalling succeeded.
//
// settled tracks whether the attempt has proved that no action exists for
// the job: true from the start only when no earlier attempt was calling,
// made true by a look-up that finds nothing, and made false by a call whose
// failure leaves open whether Defender created the action. The store clears
// the job's calling flag only on that proof (JobResult.NothingCreated), so
// later attempts spare the ActionReads budget the look-up costs.
func (d *Dispatcher) attempt(ctx context.Context, j store.Job) (a attempt) {
	a = attempt{res: store.JobResult{JobID: j.ID, Owner: d.opts.Owner}}
	settled := !j.Calling
	defer func() { a.res.NothingCreated = settled }()
	scanType, err := domain.ParseScanType(j.Scan)
	if err != nil {
		return d.dead(a, fmt.Errorf("job %d: %w", j.ID, err))
	}
	if d.opts.DryRun {
		return d.dead(a, errors.New("dry run: defender.dry_run is on, no scan was requested"))
	}

	machineID, cached, err := d.resolve(ctx, j)
	if err != nil {
		return d.failed(a, j, err)
	}
	a.res.MachineID = machineID
	cmt := comment(j)

	if j.Calling {
		// A previous attempt told the store it was calling Defender and
		// never recorded how it ended: its scan may exist. Calling again
		// blindly could scan twice. Were Defender to have shortened our
		// comment, the look-up misses, and a new call while that scan is
		// pending gets "already scanning", not a second scan.
		act, err := d.findAction(ctx, machineID, cmt, j.CreatedAt)
		if err != nil {
			return d.failed(a, j, fmt.Errorf("looking for the action of an interrupted attempt: %w", err))
		}
		if act != nil {
			settled = false
			a.res.Outcome = store.OutcomeSubmitted
			a.res.ActionID, a.res.ActionStatus = act.ID, act.Status
			a.label = outAdopted
			return a
		}
		settled = true
	}

	// One machine, one scan, whatever the alert called it: the store
	// checks the machine's open scan and cooldown again by machine id.
	if a, done := d.bind(ctx, a, j, machineID); done {
		return a
	}

	now := d.now()
	if age := now.Sub(j.CreatedAt); age > d.opts.MaxAge {
		return d.dead(a, fmt.Errorf("gave up: job is %s old, past max_age %s (last error: %s)",
			age.Round(time.Second), d.opts.MaxAge, orNone(j.LastError)))
	}
	if j.Attempts > d.opts.MaxAttempts {
		// Earlier attempts ended without an outcome (lease expiries).
		return d.dead(a, fmt.Errorf("gave up after %d attempts: last error: %s", j.Attempts-1, orNone(j.LastError)))
	}

	if err := d.st.MarkCalling(ctx, j.ID, d.opts.Owner); err != nil {
		if errors.Is(err, store.ErrLeaseLost) {
			a.label, a.err = outLeaseLost, err
			return a
		}
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			a.label, a.err = outAbandoned, err
			return a
		}
		d.m.storeErrors.WithLabelValues("mark_calling").Inc()
		return d.failed(a, j, err)
	}

	d.m.scanCalls.Inc()
	act, err := d.def.RunAntiVirusScan(ctx, machineID, scanType, cmt)
	// Only a refusal or a call never sent proves nothing was created; a
	// timeout or a broken connection after sending may hide a new action.
	settled = settled && defender.NothingCreated(err)
	switch kind := defender.KindOf(err); {
	case err == nil:
		a.res.Outcome = store.OutcomeSubmitted
		a.res.ActionID, a.res.ActionStatus = act.ID, act.Status
		a.label = outSubmitted
		return a
	case kind == defender.AlreadyScanning:
		a.res.Outcome = store.OutcomeAlreadyScanning
		a.res.Reason = "already scanning: " + err.Error()
		if act != nil && defender.ValidActionID(act.ID) {
			a.res.ActionID, a.res.ActionStatus = act.ID, act.Status
		}
		a.label = outAlreadyScanning
		return a
	case kind == defender.NotFound && cached:
		// The name's cached machine may have been re-onboarded under a new
		// id: forget it and resolve afresh on the next attempt.
		d.forgetDevice(j)
		a.res.MachineID = ""
		return d.retry(a, j, err, 0)
	default:
		return d.failed(a, j, err)
	}
}

// resolve finds the Defender machine id of a job's device: its id when the
// alert gave a valid one, else a lookup by DNS name (a bare computer name
// also by GET /api/machines/{name}), then by Entra ID device id, each
// cached (see resolveDevice).
func (d *Dispatcher) resolve(ctx context.Context, j store.Job) (id string, cached bool, err error) {
	if defender.ValidMachineID(j.Device.ID) {
		return strings.ToLower(j.Device.ID), false, nil
	}
	return d.resolveDevice(ctx, j.Device, j.IPSeenAt)
}

// bind records the job's machine id in the store and applies the machine's
// open scan and cooldown (store.BindMachine). done means the attempt ends
// here: the job was closed as a duplicate or cooldown, put back to wait for
// the machine's open Quick, or the store could not be asked.
func (d *Dispatcher) bind(ctx context.Context, a attempt, j store.Job, machineID string) (attempt, bool) {
	c, err := d.st.BindMachine(ctx, j.ID, d.opts.Owner, machineID)
	switch {
	case errors.Is(err, store.ErrLeaseLost):
		a.label, a.err = outLeaseLost, err
		return a, true
	case err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled):
		a.label, a.err = outAbandoned, err
		return a, true
	case err != nil:
		d.m.storeErrors.WithLabelValues("bind_machine").Inc()
		return d.failed(a, j, err), true
	}
	switch c.Verdict {
	case store.MachineDuplicate, store.MachineCooldown:
		a.res.Outcome, a.res.Reason = "", c.Reason
		a.label = outDeduplicated
		return a, true
	case store.MachineLater:
		now := d.now()
		a.res.Outcome = store.OutcomeRetry
		a.res.NotAttempted = true
		a.res.RetryAt = now.Add(d.opts.PollInterval)
		if deadline := j.CreatedAt.Add(d.opts.MaxAge); a.res.RetryAt.After(deadline) {
			return d.dead(a, fmt.Errorf("gave up: job would be past max_age %s while waiting: %s", d.opts.MaxAge, c.Reason)), true
		}
		a.res.Err = c.Reason
		a.label = outMachineBusy
		return a, true
	}
	return a, false
}

// findAction looks for the scan a crashed attempt may have created: a
// RunAntiVirusScan action on the machine, created since the job, whose
// requestorComment is exactly ours.
func (d *Dispatcher) findAction(ctx context.Context, machineID, cmt string, created time.Time) (*defender.MachineAction, error) {
	d.m.adoptChecks.Inc()
	list, err := d.def.ListActions(ctx, defender.ActionFilter{
		MachineID:    machineID,
		Type:         defender.ActionTypeRunAntiVirusScan,
		CreatedSince: created.Add(-adoptSkew),
	})
	if err != nil {
		return nil, err
	}
	var best *defender.MachineAction
	for i := range list {
		act := &list[i]
		if strings.TrimSpace(act.RequestorComment) != cmt || !defender.ValidActionID(act.ID) {
			continue
		}
		// Several (only if someone else used our comment): the earliest.
		if best == nil || act.CreationDateTimeUTC.Before(best.CreationDateTimeUTC) {
			best = act
		}
	}
	return best, nil
}

// permanentError marks a failure no retry can fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

// failed turns an error into Dead or Retry.
func (d *Dispatcher) failed(a attempt, j store.Job, err error) attempt {
	var pe permanentError
	if errors.As(err, &pe) {
		return d.dead(a, err)
	}
	if defender.IsLocalThrottle(err) {
		return d.throttledLocally(a, j, err)
	}
	switch defender.KindOf(err) {
	case defender.Canceled:
		a.label, a.err = outAbandoned, err
		return a
	case defender.NotFound, defender.BadRequest, defender.Forbidden, defender.Invalid, defender.AlreadyScanning:
		return d.dead(a, err)
	case defender.DryRun:
		return d.dead(a, fmt.Errorf("dry run: %w", err))
	}
	if errors.Is(err, context.Canceled) {
		a.label, a.err = outAbandoned, err
		return a
	}
	// Throttled, Server, Timeout, Network, Unavailable and Unauthorized
	// (credentials get fixed or rotated), and store or unknown errors.
	return d.retry(a, j, err, defender.RetryAfterOf(err))
}

func (d *Dispatcher) dead(a attempt, err error) attempt {
	a.res.Outcome = store.OutcomeDead
	a.res.Err = err.Error()
	a.label, a.err = outDead, err
	return a
}

// retry schedules the next attempt, or gives up when attempts or age are
// used up.
func (d *Dispatcher) retry(a attempt, j store.Job, err error, retryAfter time.Duration) attempt {
	if j.Attempts >= d.opts.MaxAttempts {
		return d.dead(a, fmt.Errorf("gave up after %d attempts: last error: %w", j.Attempts, err))
	}
	now := d.now()
	at := now.Add(d.backoff(j.Attempts, retryAfter))
	if deadline := j.CreatedAt.Add(d.opts.MaxAge); at.After(deadline) {
		return d.dead(a, fmt.Errorf("gave up after %d attempts: the next one would be past max_age %s: last error: %w",
			j.Attempts, d.opts.MaxAge, err))
	}
	a.res.Outcome = store.OutcomeRetry
	a.res.RetryAt = at
	a.res.Err = err.Error()
	a.label, a.err = outRetry, err
	return a
}

// throttledLocally reschedules a job whose attempt our own rate limiter held
// back. Nothing was sent, so the attempt is given back (it must not bring
// the job closer to MaxAttempts: an alert storm that spends the hourly
// budget would otherwise kill acknowledged alerts), and the job comes back
// when the limiter expects room. MaxAge still applies, but no sooner than
// it would have: the retry is moved up to the job's last moment rather
// than the job given up because the wait runs past it.
func (d *Dispatcher) throttledLocally(a attempt, j store.Job, err error) attempt {
	now := d.now()
	deadline := j.CreatedAt.Add(d.opts.MaxAge)
	if !now.Before(deadline) {
		return d.dead(a, fmt.Errorf("gave up: job is past max_age %s, held back by the local rate limit: %w", d.opts.MaxAge, err))
	}
	delay := defender.RetryAfterOf(err)
	if delay <= 0 {
		delay = d.backoff(j.Attempts, 0)
	}
	a.res.Outcome = store.OutcomeRetry
	a.res.NotAttempted = true
	a.res.RetryAt = now.Add(delay)
	if a.res.RetryAt.After(deadline) {
		a.res.RetryAt = deadline
	}
	a.res.Err = err.Error()
	a.label, a.err = outThrottledLocal, err
	return a
}

// backoff is the delay after the n-th failed attempt (n from 1):
// BackoffBase·2^(n-1) capped at BackoffMax, with equal jitter (half fixed,
// half random, so a retry never comes right back), and never less than
// what the server asked for.
func (d *Dispatcher) backoff(n int, retryAfter time.Duration) time.Duration {
	if n < 1 {
		n = 1
	}
	delay := d.opts.BackoffBase
	for i := 1; i < n && delay < d.opts.BackoffMax; i++ {
		delay *= 2
	}
	delay = min(delay, d.opts.BackoffMax)
	r := d.rnd()
	if r < 0 || r >= 1 {
		r = 0
	}
	half := delay / 2
	delay = half + time.Duration(float64(delay-half)*r)
	return max(delay, retryAfter)
}

func orNone(s string) string {
	if s == "" {
		return "none recorded"
	}
	return s
}
