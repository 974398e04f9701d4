// One machine, one scan, whatever it is called: the check a job gets once
// its device is resolved to a Defender machine id, and the resolved names
// shared by replicas.

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// MachineVerdict is what BindMachine decided for a job.
type MachineVerdict string

// Verdicts of BindMachine.
const (
	// MachineProceed: the job is the machine's one open scan; call Defender.
	MachineProceed MachineVerdict = "proceed"
	// MachineDuplicate: another open job already scans the machine; the
	// job was closed (deduplicated) and its decision says duplicate.
	MachineDuplicate MachineVerdict = "duplicate"
	// MachineCooldown: a scan was requested for the machine within the
	// decision's cooldown; the job was closed and its decision says cooldown.
	MachineCooldown MachineVerdict = "cooldown"
	// MachineLater: the job is a Full and the machine's open job a Quick,
	// decided under another name: nothing was changed, and the caller
	// tries again later (as "waiting" does for one name).
	MachineLater MachineVerdict = "later"
)

// MachineCheck is BindMachine's answer.
type MachineCheck struct {
	Verdict MachineVerdict
	// Reason explains every verdict but proceed, naming the machine.
	Reason string
}

// BindMachine records that the job owner holds resolved to machineID and
// applies, for the machine, what Ingest applied for the device key: one
// open scan, and the cooldown of the job's decision. Under the locks of
// both device rows (the job's key and "id:"+machineID), so two jobs naming
// one machine differently cannot both proceed. A duplicate or a cooldown
// closes the job as deduplicated, in the same transaction, and sets its
// decisions' status and reason. ErrLeaseLost if owner does not hold an
// unexpired lease.
func (s *sqlStore) BindMachine(ctx context.Context, jobID int64, owner, machineID string) (MachineCheck, error) {
	machineID = strings.ToLower(clean(machineID))
	if machineID == "" {
		return MachineCheck{}, fmt.Errorf("bind job %d: empty machine id", jobID)
	}
	var check MachineCheck
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		check = MachineCheck{}
		now := s.now()
		nowUS := now.UnixMicro()
		var (
			key, scan, state string
			leaseOwner       sql.NullString
			leaseUntil       sql.NullInt64
			alertPK          int64
			attempts         int
		)
		err := tx.row(ctx, `SELECT device_key, scan, state, lease_owner, lease_until, alert_pk, attempts FROM jobs WHERE id = ?`, jobID).
			Scan(&key, &scan, &state, &leaseOwner, &leaseUntil, &alertPK, &attempts)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("read job: %w", err)
		}
		if leaseOwner.String != owner || (state != domain.JobLeased && state != domain.JobCalling) || leaseUntil.Int64 <= nowUS {
			return ErrLeaseLost
		}
		machineKey := "id:" + machineID
		keys := []string{key, machineKey}
		slices.Sort(keys)
		keys = slices.Compact(keys)
		if err := addDevices(ctx, tx, keys); err != nil {
			return err
		}

		// Another open job for the machine, under any name.
		var (
			otherID                 int64
			otherScan, otherState   string
			oDNS, oAAD, oIP, oDevID string
		)
		err = tx.row(ctx, `SELECT id, scan, state, device_dns, device_aad, device_ip, device_id FROM jobs
			WHERE machine_id = ? AND machine_id <> '' AND open = 1 AND id <> ? ORDER BY id LIMIT 1`, machineID, jobID).
			Scan(&otherID, &otherScan, &otherState, &oDNS, &oAAD, &oIP, &oDevID)
		switch {
		case err == nil:
			as := firstName(oDNS, oAAD, oIP, oDevID)
			if otherScan == domain.ScanQuick && scan == domain.ScanFull {
				check = MachineCheck{Verdict: MachineLater, Reason: fmt.Sprintf(
					"machine %s has an open Quick scan (job %d, %s, as %s): this Full scan waits for it to end",
					machineID, otherID, otherState, as)}
				return nil
			}
			check = MachineCheck{Verdict: MachineDuplicate, Reason: fmt.Sprintf(
				"machine %s already has an open %s scan (job %d, %s, as %s)", machineID, otherScan, otherID, otherState, as)}
			return closeDeduplicated(ctx, tx, nowUS, jobID, owner, alertPK, attempts, key, machineID, check)
		case errors.Is(err, sql.ErrNoRows):
		default:
			return fmt.Errorf("find open job of machine %s: %w", machineID, err)
		}

		var cooldownUS sql.NullInt64
		if err := tx.row(ctx, `SELECT MAX(cooldown_us) FROM decisions WHERE alert_pk = ? AND job_id = ?`, alertPK, jobID).
			Scan(&cooldownUS); err != nil {
			return fmt.Errorf("read cooldown of job %d: %w", jobID, err)
		}
		if cooldown := time.Duration(cooldownUS.Int64) * time.Microsecond; cooldown > 0 {
			var qAt, qJob, fAt, fJob sql.NullInt64
			if err := tx.row(ctx, `SELECT last_quick_at, last_quick_job, last_full_at, last_full_job FROM devices WHERE key = ?`, machineKey).
				Scan(&qAt, &qJob, &fAt, &fJob); err != nil {
				return fmt.Errorf("read device %q: %w", machineKey, err)
			}
			since := now.Add(-cooldown).UnixMicro()
			var at, job int64
			last := ""
			// As at intake: Full counts against any new scan; Quick only
			// against a Quick.
			if fAt.Valid && fAt.Int64 > since && fJob.Int64 != jobID {
				at, job, last = fAt.Int64, fJob.Int64, domain.ScanFull
			}
			if scan == domain.ScanQuick && qAt.Valid && qAt.Int64 > since && qAt.Int64 > at && qJob.Int64 != jobID {
				at, job, last = qAt.Int64, qJob.Int64, domain.ScanQuick
			}
			if last != "" {
				var dns, aad, ip, devID string
				if err := tx.row(ctx, `SELECT device_dns, device_aad, device_ip, device_id FROM jobs WHERE id = ?`, job).
					Scan(&dns, &aad, &ip, &devID); err != nil && !errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("read job %d: %w", job, err)
				}
				t := time.UnixMicro(at).UTC()
				check = MachineCheck{Verdict: MachineCooldown, Reason: fmt.Sprintf(
					"machine %s already scanned at %s (%s scan, job %d, as %s); cooldown %s until %s",
					machineID, t.Format(time.RFC3339), last, job, firstName(dns, aad, ip, devID), cooldown, t.Add(cooldown).Format(time.RFC3339))}
				return closeDeduplicated(ctx, tx, nowUS, jobID, owner, alertPK, attempts, key, machineID, check)
			}
		}

		if _, err := tx.exec(ctx, `UPDATE jobs SET machine_id = ?, updated_at = ? WHERE id = ?`, machineID, nowUS, jobID); err != nil {
			return fmt.Errorf("record machine of job %d: %w", jobID, err)
		}
		check = MachineCheck{Verdict: MachineProceed}
		return nil
	})
	if err != nil {
		return MachineCheck{}, fmt.Errorf("bind job %d to machine %s for %s: %w", jobID, machineID, owner, err)
	}
	return check, nil
}

// closeDeduplicated closes a job that its machine's open scan or cooldown
// makes unnecessary: the job deduplicated with the reason, its attempt
// recorded, its decisions duplicate or cooldown, and the device's waiting
// job (if any) queued.
func closeDeduplicated(ctx context.Context, tx q, nowUS, jobID int64, owner string, alertPK int64, attempts int,
	key, machineID string, check MachineCheck) error {
	reason := clean(check.Reason)
	r, err := tx.exec(ctx, `UPDATE jobs SET state = ?, open = 0, due_at = ?, lease_owner = NULL, lease_until = NULL,
			machine_id = ?, last_error = ?, updated_at = ?
		WHERE id = ? AND lease_owner = ? AND state IN (?, ?)`,
		domain.JobDeduplicated, nowUS, machineID, reason, nowUS, jobID, owner, domain.JobLeased, domain.JobCalling)
	if err != nil {
		return fmt.Errorf("close job %d: %w", jobID, err)
	}
	if n, err := r.RowsAffected(); err != nil || n == 0 {
		if err != nil {
			return err
		}
		return ErrLeaseLost
	}
	if _, err := tx.exec(ctx, `INSERT INTO job_attempts (job_id, attempt, at, owner, outcome, error) VALUES (?, ?, ?, ?, ?, ?)`,
		jobID, attempts, nowUS, owner, string(check.Verdict), reason); err != nil {
		return fmt.Errorf("record attempt: %w", err)
	}
	status := domain.StatusDuplicate
	if check.Verdict == MachineCooldown {
		status = domain.StatusCooldown
	}
	if _, err := tx.exec(ctx, `UPDATE decisions SET status = ?, reason = ? WHERE alert_pk = ? AND job_id = ? AND status = ?`,
		status, reason, alertPK, jobID, domain.StatusQueued); err != nil {
		return fmt.Errorf("record decision of job %d: %w", jobID, err)
	}
	return promoteWaiting(ctx, tx, key, nowUS)
}

// firstName is how a job's device was named, for explanations.
func firstName(dns, aad, ip, id string) string {
	for _, n := range []string{dns, aad, ip, id} {
		if n != "" {
			return n
		}
	}
	return "an unnamed device"
}

// MachineByName returns the machine id a name was resolved to, if it was
// resolved less than maxAge ago (ok false otherwise). Names are the
// dispatcher's resolve-cache keys.
func (s *sqlStore) MachineByName(ctx context.Context, name string, maxAge time.Duration) (id string, at time.Time, ok bool, err error) {
	var us int64
	err = s.reader().row(ctx, `SELECT machine_id, resolved_at FROM machine_names WHERE name = ?`, clean(name)).Scan(&id, &us)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", time.Time{}, false, nil
	case err != nil:
		return "", time.Time{}, false, fmt.Errorf("machine named %q: %w", name, err)
	}
	at = fromMicro(us)
	if s.now().Sub(at) >= maxAge {
		return "", time.Time{}, false, nil
	}
	return id, at, true, nil
}

// RememberMachineName records that name resolved to machineID now; an
// empty machineID forgets the name.
func (s *sqlStore) RememberMachineName(ctx context.Context, name, machineID string) error {
	name, machineID = clean(name), strings.ToLower(clean(machineID))
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		if machineID == "" {
			_, err := tx.exec(ctx, `DELETE FROM machine_names WHERE name = ?`, name)
			return err
		}
		_, err := tx.exec(ctx, `INSERT INTO machine_names (name, machine_id, resolved_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET machine_id = excluded.machine_id, resolved_at = excluded.resolved_at`,
			name, machineID, s.now().UnixMicro())
		return err
	})
	if err != nil {
		return fmt.Errorf("remember machine name %q: %w", name, err)
	}
	return nil
}

// machinesNamed returns the machine ids a device name (DNS name, AAD device
// id or IP address, as given to ListScans) was ever resolved to.
func machinesNamed(ctx context.Context, rd q, dev string) ([]string, error) {
	rows, err := rd.query(ctx, `SELECT DISTINCT machine_id FROM machine_names
		WHERE name IN (?, ?) OR (name >= ? AND name < ?)`,
		"dns:"+strings.TrimSuffix(dev, "."), "aad:"+dev, "ip:"+dev+"@", "ip:"+dev+"A")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// knownAs returns every name a machine's jobs named it by: DNS and short
// names, AAD device ids and IP addresses, sorted.
func knownAs(ctx context.Context, rd q, machineID string) ([]string, error) {
	rows, err := rd.query(ctx, `SELECT DISTINCT device_dns, device_aad, device_ip FROM jobs WHERE machine_id = ? AND machine_id <> ''`, machineID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var dns, aad, ip string
		if err := rows.Scan(&dns, &aad, &ip); err != nil {
			return nil, err
		}
		for _, n := range []string{dns, aad, ip} {
			if n != "" {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names), rows.Err()
}
