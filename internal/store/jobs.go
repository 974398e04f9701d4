package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// claimable is the SQL list of states ClaimJobs considers (with due_at,
// which is the next attempt time for queued/retry and the lease end for
// leased/calling).
const claimable = `('queued', 'retry', 'leased', 'calling')`

func (s *sqlStore) ClaimJobs(ctx context.Context, owner string, limit int, lease time.Duration) ([]Job, error) {
	if owner == "" {
		return nil, errors.New("claim jobs: empty owner")
	}
	if lease <= 0 {
		return nil, fmt.Errorf("claim jobs: lease %s must be positive", lease)
	}
	if limit <= 0 {
		return nil, nil
	}
	var jobs []Job
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		jobs = nil
		now := s.now()
		lock := ""
		if tx.pg {
			// Claimers on other replicas skip rows we hold instead of
			// waiting for them, and never see them as free.
			lock = " FOR UPDATE SKIP LOCKED"
		}
		rows, err := tx.query(ctx, `SELECT id, state, lease_owner, attempts FROM jobs
			WHERE state IN `+claimable+` AND due_at <= ? ORDER BY due_at, id LIMIT ?`+lock, now.UnixMicro(), limit)
		if err != nil {
			return fmt.Errorf("select due jobs: %w", err)
		}
		type due struct {
			id       int64
			state    string
			owner    sql.NullString
			attempts int
		}
		var dues []due
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.id, &d.state, &d.owner, &d.attempts); err != nil {
				rows.Close()
				return err
			}
			dues = append(dues, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(dues) == 0 {
			return nil
		}
		ids := make([]any, 0, len(dues))
		for _, d := range dues {
			ids = append(ids, d.id)
			if d.state == domain.JobLeased || d.state == domain.JobCalling {
				msg := "lease expired while leased"
				if d.state == domain.JobCalling {
					msg = "lease expired while calling Defender"
				}
				if _, err := tx.exec(ctx, `INSERT INTO job_attempts (job_id, attempt, at, owner, outcome, error) VALUES (?, ?, ?, ?, ?, ?)`,
					d.id, d.attempts, now.UnixMicro(), d.owner.String, "lease_expired", msg); err != nil {
					return fmt.Errorf("record expired lease of job %d: %w", d.id, err)
				}
			}
		}
		until := now.Add(lease).UnixMicro()
		args := append([]any{domain.JobLeased, owner, until, until, now.UnixMicro()}, ids...)
		rows, err = tx.query(ctx, `UPDATE jobs SET state = ?, lease_owner = ?, lease_until = ?, due_at = ?, attempts = attempts + 1, updated_at = ?
			WHERE id IN (`+placeholders(len(ids))+`) RETURNING `+jobColumns, args...)
		if err != nil {
			return fmt.Errorf("lease jobs: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			j, err := scanJob(rows)
			if err != nil {
				return err
			}
			jobs = append(jobs, j)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claim jobs for %s: %w", owner, err)
	}
	// RETURNING gives no order; hand them out oldest first.
	slices.SortFunc(jobs, func(a, b Job) int { return cmp.Compare(a.ID, b.ID) })
	return jobs, nil
}

const jobColumns = `id, alert_id, source, device_id, device_dns, device_aad, device_ip, device_ip_at, scan, comment, attempts, state, created_at,
	last_error, machine_id, calling, lease_until`

func scanJob(r interface{ Scan(...any) error }) (Job, error) {
	var (
		j             Job
		created, ipAt int64
		calling       int
		leaseUntil    sql.NullInt64
	)
	if err := r.Scan(&j.ID, &j.AlertID, &j.Source, &j.Device.ID, &j.Device.DNSName, &j.Device.AADDeviceID, &j.Device.IP, &ipAt, &j.Scan, &j.Comment,
		&j.Attempts, &j.State, &created, &j.LastError, &j.MachineID, &calling, &leaseUntil); err != nil {
		return j, err
	}
	j.CreatedAt = fromMicro(created)
	j.IPSeenAt = fromMicro(ipAt)
	j.Calling = calling == 1
	if leaseUntil.Valid {
		j.LeaseUntil = fromMicro(leaseUntil.Int64)
	}
	return j, nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func fromMicro(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// leaseErr tells a job that does not exist from one the owner lost.
func leaseErr(ctx context.Context, tx q, jobID int64) error {
	var id int64
	err := tx.row(ctx, `SELECT id FROM jobs WHERE id = ?`, jobID).Scan(&id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case err != nil:
		return err
	}
	return ErrLeaseLost
}

func (s *sqlStore) MarkCalling(ctx context.Context, jobID int64, owner string) error {
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		now := s.now().UnixMicro()
		// The lease must still be running: once it has expired another
		// owner may claim the job, and two calls must never be in flight.
		r, err := tx.exec(ctx, `UPDATE jobs SET state = ?, calling = 1, updated_at = ?
			WHERE id = ? AND lease_owner = ? AND state IN (?, ?) AND lease_until > ?`,
			domain.JobCalling, now, jobID, owner, domain.JobLeased, domain.JobCalling, now)
		if err != nil {
			return err
		}
		if n, err := r.RowsAffected(); err != nil || n == 0 {
			if err != nil {
				return err
			}
			return leaseErr(ctx, tx, jobID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark job %d calling for %s: %w", jobID, owner, err)
	}
	return nil
}

func (s *sqlStore) CompleteJob(ctx context.Context, r JobResult) error {
	if err := validateResult(r); err != nil {
		return fmt.Errorf("complete job %d: %w", r.JobID, err)
	}
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		now := s.now()
		var (
			key, scan, state string
			leaseOwner       sql.NullString
			attempts         int
		)
		err := tx.row(ctx, `SELECT device_key, scan, state, lease_owner, attempts FROM jobs WHERE id = ?`, r.JobID).
			Scan(&key, &scan, &state, &leaseOwner, &attempts)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("read job: %w", err)
		}
		if leaseOwner.String != r.Owner || (state != domain.JobLeased && state != domain.JobCalling) {
			return ErrLeaseLost
		}
		requested := r.Outcome == OutcomeSubmitted || r.Outcome == OutcomeAlreadyScanning
		// The job's own device is always locked: closing the job may
		// promote the device's waiting job, and Ingest must not add one
		// concurrently that this transaction cannot see.
		keys := []string{key}
		if requested && r.MachineID != "" {
			// The cooldown clock runs for the key the job was decided
			// under and for the machine id it resolved to, so a later
			// alert naming the machine by id is held back too.
			keys = append(keys, "id:"+r.MachineID)
		}
		slices.Sort(keys)
		keys = slices.Compact(keys)
		// Device rows before the job row: the order Ingest takes them in.
		if err := addDevices(ctx, tx, keys); err != nil {
			return err
		}

		nowUS := now.UnixMicro()
		var (
			newState, lastErr, attemptErr string
			open                          = 0
			dueAt                         = nowUS
			actionID                      any
		)
		switch r.Outcome {
		case OutcomeSubmitted:
			newState, open, actionID = domain.JobSubmitted, 1, r.ActionID
			attemptErr = ""
		case OutcomeAlreadyScanning:
			newState, lastErr, attemptErr = domain.JobAlreadyScanning, clean(r.Reason), clean(r.Reason)
			if r.ActionID != "" {
				open, actionID = 1, r.ActionID
			}
		case OutcomeRetry:
			newState, open, lastErr, attemptErr = domain.JobRetry, 1, clean(r.Err), clean(r.Err)
			if !r.RetryAt.IsZero() {
				dueAt = r.RetryAt.UnixMicro()
			}
		case OutcomeDead:
			newState, lastErr, attemptErr = domain.JobDead, clean(r.Err), clean(r.Err)
		}
		if actionID != nil {
			status := r.ActionStatus
			if status == "" {
				status = domain.ActionPending
			}
			// Another job may already track this action (Defender said a
			// scan was pending, and it was ours); keep the first record.
			if _, err := tx.exec(ctx, `INSERT INTO actions (id, job_id, machine_id, status, final, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
				r.ActionID, r.JobID, r.MachineID, status, boolInt(domain.ActionFinal(status)), nowUS, nowUS); err != nil {
				return fmt.Errorf("add action %q: %w", r.ActionID, err)
			}
			var final int
			if err := tx.row(ctx, `SELECT final FROM actions WHERE id = ?`, r.ActionID).Scan(&final); err != nil {
				return fmt.Errorf("read action %q: %w", r.ActionID, err)
			}
			if final == 1 {
				open = 0
			}
		}
		refund := 0
		if r.NotAttempted {
			refund = 1
		}
		res, err := tx.exec(ctx, `UPDATE jobs SET state = ?, open = ?, due_at = ?, lease_owner = NULL, lease_until = NULL,
				machine_id = CASE WHEN ? = '' THEN machine_id ELSE ? END, action_id = COALESCE(?, action_id), last_error = ?, updated_at = ?,
				attempts = attempts - ?, calling = CASE WHEN ? THEN 0 ELSE calling END
			WHERE id = ? AND lease_owner = ? AND state IN (?, ?)`,
			newState, open, dueAt, r.MachineID, r.MachineID, actionID, lastErr, nowUS,
			refund, r.NothingCreated,
			r.JobID, r.Owner, domain.JobLeased, domain.JobCalling)
		if err != nil {
			return fmt.Errorf("update job: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err != nil {
				return err
			}
			return ErrLeaseLost
		}
		if r.Outcome == OutcomeSubmitted {
			attemptErr = "action " + r.ActionID + " " + r.ActionStatus
		}
		outcome := string(r.Outcome)
		if r.NotAttempted {
			// The history shows why the next attempt has the same number.
			outcome = OutcomeNotAttempted
		}
		if _, err := tx.exec(ctx, `INSERT INTO job_attempts (job_id, attempt, at, owner, outcome, error) VALUES (?, ?, ?, ?, ?, ?)`,
			r.JobID, attempts, nowUS, r.Owner, outcome, attemptErr); err != nil {
			return fmt.Errorf("record attempt: %w", err)
		}
		if open == 0 {
			if err := promoteWaiting(ctx, tx, key, nowUS); err != nil {
				return err
			}
		}
		if requested {
			col := "quick"
			if scan == domain.ScanFull {
				col = "full"
			}
			for _, k := range keys {
				if _, err := tx.exec(ctx, `UPDATE devices SET last_`+col+`_at = ?, last_`+col+`_job = ? WHERE key = ?`, nowUS, r.JobID, k); err != nil {
					return fmt.Errorf("record scan request on device %q: %w", k, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("complete job %d (%s) for %s: %w", r.JobID, r.Outcome, r.Owner, err)
	}
	return nil
}

func validateResult(r JobResult) error {
	if r.Owner == "" {
		return errors.New("owner: empty")
	}
	switch r.Outcome {
	case OutcomeSubmitted:
		if r.ActionID == "" {
			return errors.New("action_id: empty for a submitted job")
		}
		if r.MachineID == "" {
			return errors.New("machine_id: empty for a submitted job")
		}
	case OutcomeAlreadyScanning, OutcomeRetry, OutcomeDead:
	default:
		return fmt.Errorf("outcome: %q is not submitted, already_scanning, retry or dead", r.Outcome)
	}
	if r.NotAttempted && r.Outcome != OutcomeRetry {
		return fmt.Errorf("not_attempted: only a retry can give its attempt back, not %s", r.Outcome)
	}
	return nil
}

func (s *sqlStore) ReleaseJobs(ctx context.Context, owner string) error {
	if owner == "" {
		return errors.New("release jobs: empty owner")
	}
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		now := s.now().UnixMicro()
		// A lease given back before any call does not count as an attempt;
		// one given back while calling did, and goes back as a retry.
		_, err := tx.exec(ctx, `UPDATE jobs SET
				state = CASE WHEN state = ? OR attempts > 1 THEN ? ELSE ? END,
				attempts = CASE WHEN state = ? THEN attempts ELSE attempts - 1 END,
				due_at = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?
			WHERE lease_owner = ? AND state IN (?, ?)`,
			domain.JobCalling, domain.JobRetry, domain.JobQueued, domain.JobCalling, now, now, owner, domain.JobLeased, domain.JobCalling)
		return err
	})
	if err != nil {
		return fmt.Errorf("release jobs of %s: %w", owner, err)
	}
	return nil
}

func (s *sqlStore) OpenActions(ctx context.Context, limit int) ([]Action, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.reader().query(ctx, `SELECT `+actionColumns+` FROM actions WHERE final = 0
		ORDER BY last_polled_at, created_at, id LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("open actions: %w", err)
	}
	defer rows.Close()
	var out []Action
	for rows.Next() {
		a, err := scanAction(rows)
		if err != nil {
			return nil, fmt.Errorf("open actions: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("open actions: %w", err)
	}
	return out, nil
}

const actionColumns = `id, job_id, machine_id, status, created_at, updated_at, last_polled_at`

func scanAction(r interface{ Scan(...any) error }) (Action, error) {
	var (
		a                        Action
		created, updated, polled int64
	)
	if err := r.Scan(&a.ID, &a.JobID, &a.MachineID, &a.Status, &created, &updated, &polled); err != nil {
		return a, err
	}
	a.CreatedAt, a.UpdatedAt, a.LastPolledAt = fromMicro(created), fromMicro(updated), fromMicro(polled)
	return a, nil
}

func (s *sqlStore) UpdateActions(ctx context.Context, updates []ActionUpdate) error {
	for i, u := range updates {
		if u.ID == "" {
			return fmt.Errorf("update actions: updates[%d].id: empty", i)
		}
		if u.Status == "" {
			return fmt.Errorf("update actions: updates[%d].status: empty", i)
		}
	}
	if len(updates) == 0 {
		return nil
	}
	// Rows locked in id order, whoever polls.
	sorted := slices.Clone(updates)
	slices.SortStableFunc(sorted, func(a, b ActionUpdate) int { return strings.Compare(a.ID, b.ID) })
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		now := s.now().UnixMicro()
		// Devices whose job a final status closes, locked before the
		// action and job rows (Ingest and CompleteJob take device rows
		// first): closing a job may promote the device's waiting job.
		var finalIDs []any
		for _, u := range sorted {
			if domain.ActionFinal(u.Status) {
				finalIDs = append(finalIDs, u.ID)
			}
		}
		locked := map[string]bool{}
		if len(finalIDs) > 0 {
			rows, err := tx.query(ctx, `SELECT DISTINCT device_key FROM jobs WHERE open = 1 AND action_id IN (`+placeholders(len(finalIDs))+`)`, finalIDs...)
			if err != nil {
				return fmt.Errorf("find devices of actions: %w", err)
			}
			var keys []string
			for rows.Next() {
				var k string
				if err := rows.Scan(&k); err != nil {
					rows.Close()
					return err
				}
				keys = append(keys, k)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("find devices of actions: %w", err)
			}
			slices.Sort(keys)
			for _, k := range keys {
				if err := lockDevice(ctx, tx, k); err != nil {
					return err
				}
				locked[k] = true
			}
		}
		for _, u := range sorted {
			final := domain.ActionFinal(u.Status)
			// A final status is never moved back.
			if _, err := tx.exec(ctx, `UPDATE actions SET
					updated_at = CASE WHEN status = ? THEN updated_at ELSE ? END,
					status = ?, final = ?, last_polled_at = ?
				WHERE id = ? AND final = 0`,
				u.Status, now, u.Status, boolInt(final), now, u.ID); err != nil {
				return fmt.Errorf("update action %q: %w", u.ID, err)
			}
			if final {
				rows, err := tx.query(ctx, `UPDATE jobs SET open = 0, updated_at = ? WHERE action_id = ? AND open = 1 RETURNING device_key`, now, u.ID)
				if err != nil {
					return fmt.Errorf("close jobs of action %q: %w", u.ID, err)
				}
				var closed []string
				for rows.Next() {
					var k string
					if err := rows.Scan(&k); err != nil {
						rows.Close()
						return fmt.Errorf("close jobs of action %q: %w", u.ID, err)
					}
					closed = append(closed, k)
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					return fmt.Errorf("close jobs of action %q: %w", u.ID, err)
				}
				slices.Sort(closed)
				closed = slices.Compact(closed)
				for _, k := range closed {
					// A job linked to the action after the devices were
					// locked above; rare, and a deadlock here is retried.
					if !locked[k] {
						if err := lockDevice(ctx, tx, k); err != nil {
							return err
						}
						locked[k] = true
					}
					if err := promoteWaiting(ctx, tx, k, now); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("update actions: %w", err)
	}
	return nil
}

func (s *sqlStore) Stats(ctx context.Context) (Stats, error) {
	st := Stats{JobsByState: map[string]int64{}}
	rd := s.reader()
	rows, err := rd.query(ctx, `SELECT state, COUNT(*) FROM jobs GROUP BY state`)
	if err != nil {
		return st, fmt.Errorf("stats: jobs by state: %w", err)
	}
	for rows.Next() {
		var state string
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			rows.Close()
			return st, fmt.Errorf("stats: jobs by state: %w", err)
		}
		st.JobsByState[state] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("stats: jobs by state: %w", err)
	}
	now := s.now()
	var oldest sql.NullInt64
	if err := rd.row(ctx, `SELECT COUNT(*), MIN(due_at) FROM jobs WHERE state IN `+claimable+` AND due_at <= ?`, now.UnixMicro()).
		Scan(&st.QueueDepth, &oldest); err != nil {
		return st, fmt.Errorf("stats: queue depth: %w", err)
	}
	if oldest.Valid {
		st.OldestDue = now.Sub(time.UnixMicro(oldest.Int64))
	}
	if err := rd.row(ctx, `SELECT COUNT(*) FROM actions WHERE final = 0`).Scan(&st.OpenActions); err != nil {
		return st, fmt.Errorf("stats: open actions: %w", err)
	}
	return st, nil
}

// addDevices makes sure each device row exists and locks it, in the order
// given (callers sort the keys so that transactions never deadlock).
func addDevices(ctx context.Context, tx q, keys []string) error {
	for _, k := range keys {
		if _, err := tx.exec(ctx, `INSERT INTO devices (key) VALUES (?) ON CONFLICT (key) DO NOTHING`, k); err != nil {
			return fmt.Errorf("add device %q: %w", k, err)
		}
		if err := lockDevice(ctx, tx, k); err != nil {
			return err
		}
	}
	return nil
}

// lockDevice takes the device row lock on PostgreSQL (SQLite's single
// writer already serializes every write).
func lockDevice(ctx context.Context, tx q, key string) error {
	if !tx.pg {
		return nil
	}
	var got string
	err := tx.row(ctx, `SELECT key FROM devices WHERE key = ?`+tx.forUpdate(), key).Scan(&got)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("lock device %q: %w", key, err)
	}
	return nil
}

// promoteWaiting queues the device's waiting job, due now, once the device
// has no open job left. The caller holds the device's lock, so no decision
// can add a waiting job or an open one meanwhile. Cooldown does not hold it
// back: it was decided (cooldown included) when the Full arrived.
func promoteWaiting(ctx context.Context, tx q, key string, nowUS int64) error {
	if _, err := tx.exec(ctx, `UPDATE jobs SET state = ?, open = 1, due_at = ?, updated_at = ?
		WHERE device_key = ? AND state = ?
			AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.device_key = ? AND o.open = 1)`,
		domain.JobQueued, nowUS, nowUS, key, domain.JobWaiting, key); err != nil {
		return fmt.Errorf("promote waiting job of device %q: %w", key, err)
	}
	return nil
}
