package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

func (s *sqlStore) Receipt(ctx context.Context, id string) (*ReceiptDetail, error) {
	if !validReceipt(id) {
		return nil, fmt.Errorf("receipt %q: %w", id, ErrNotFound)
	}
	rd := s.reader()
	det := &ReceiptDetail{Receipt: id, Alerts: []ReceiptAlert{}, Jobs: []JobDetail{}, Actions: []Action{}}
	var received int64
	err := rd.row(ctx, `SELECT source, received_at FROM receipts WHERE id = ?`, id).Scan(&det.Source, &received)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("receipt %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("receipt %q: %w", id, err)
	}
	det.ReceivedAt = fromMicro(received)

	rows, err := rd.query(ctx, `SELECT a.pk, a.receipt_id, a.received_at, a.normalized, a.raw
		FROM receipt_alerts ra JOIN alerts a ON a.pk = ra.alert_pk WHERE ra.receipt_id = ? ORDER BY a.alert_id`, id)
	if err != nil {
		return nil, fmt.Errorf("receipt %q: alerts: %w", id, err)
	}
	var pks []int64
	for rows.Next() {
		var (
			ra     ReceiptAlert
			pk, at int64
			norm   string
			raw    []byte
		)
		if err := rows.Scan(&pk, &ra.Receipt, &at, &norm, &raw); err != nil {
			rows.Close()
			return nil, fmt.Errorf("receipt %q: alerts: %w", id, err)
		}
		if err := json.Unmarshal([]byte(norm), &ra.Alert); err != nil {
			rows.Close()
			return nil, fmt.Errorf("receipt %q: alert %d: decode: %w", id, pk, err)
		}
		ra.ReceivedAt = fromMicro(at)
		ra.Raw = rawJSON(raw)
		ra.Decisions = []DecisionRecord{}
		pks = append(pks, pk)
		det.Alerts = append(det.Alerts, ra)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("receipt %q: alerts: %w", id, err)
	}

	seenAction := map[string]bool{}
	for i, pk := range pks {
		decs, err := decisionsOf(ctx, rd, pk)
		if err != nil {
			return nil, fmt.Errorf("receipt %q: decisions: %w", id, err)
		}
		det.Alerts[i].Decisions = decs
		jobs, err := jobsOf(ctx, rd, pk)
		if err != nil {
			return nil, fmt.Errorf("receipt %q: jobs: %w", id, err)
		}
		for _, j := range jobs {
			det.Jobs = append(det.Jobs, j)
			if j.ActionID == "" || seenAction[j.ActionID] {
				continue
			}
			seenAction[j.ActionID] = true
			a, err := scanAction(rd.row(ctx, `SELECT `+actionColumns+` FROM actions WHERE id = ?`, j.ActionID))
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("receipt %q: action %q: %w", id, j.ActionID, err)
			}
			det.Actions = append(det.Actions, a)
		}
	}
	return det, nil
}

// rawJSON returns the stored body part as JSON; bytes that are not valid
// JSON (they were accepted as a string or a fragment) become a JSON string,
// so the receipt always encodes.
func rawJSON(b []byte) json.RawMessage {
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	s, _ := json.Marshal(string(b))
	return s
}

func decisionsOf(ctx context.Context, rd q, alertPK int64) ([]DecisionRecord, error) {
	rows, err := rd.query(ctx, `SELECT alert_id, has_device, device_id, device_dns, device_aad, device_ip, rule, scan, comment, status, reason,
			rule_reason, cooldown_us, dry_run, job_id, created_at
		FROM decisions WHERE alert_pk = ? ORDER BY seq`, alertPK)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []DecisionRecord{}
	for rows.Next() {
		var (
			d                 DecisionRecord
			hasDev, dry       int
			dev               alert.Device
			cooldown, created int64
			jobID             sql.NullInt64
		)
		if err := rows.Scan(&d.AlertID, &hasDev, &dev.ID, &dev.DNSName, &dev.AADDeviceID, &dev.IP, &d.Rule, &d.Scan, &d.Comment, &d.Status,
			&d.Reason, &d.RuleReason, &cooldown, &dry, &jobID, &created); err != nil {
			return nil, err
		}
		if hasDev == 1 {
			d.Device = &dev
		}
		if cooldown > 0 {
			d.Cooldown = (time.Duration(cooldown) * time.Microsecond).String()
		}
		d.DryRun = dry == 1
		d.JobID = jobID.Int64
		d.CreatedAt = fromMicro(created)
		out = append(out, d)
	}
	return out, rows.Err()
}

func jobsOf(ctx context.Context, rd q, alertPK int64) ([]JobDetail, error) {
	rows, err := rd.query(ctx, `SELECT `+jobColumns+`, updated_at, action_id FROM jobs WHERE alert_pk = ? ORDER BY id`, alertPK)
	if err != nil {
		return nil, err
	}
	var out []JobDetail
	for rows.Next() {
		var (
			j        JobDetail
			updated  int64
			actionID sql.NullString
		)
		var scanErr error
		j.Job, scanErr = scanJob(scanFunc(func(dest ...any) error {
			return rows.Scan(append(dest, &updated, &actionID)...)
		}))
		if scanErr != nil {
			rows.Close()
			return nil, scanErr
		}
		j.UpdatedAt = fromMicro(updated)
		j.ActionID = actionID.String
		j.History = []Attempt{}
		out = append(out, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		hist, err := rd.query(ctx, `SELECT attempt, at, owner, outcome, error FROM job_attempts WHERE job_id = ? ORDER BY at, attempt`, out[i].ID)
		if err != nil {
			return nil, err
		}
		for hist.Next() {
			var a Attempt
			var at int64
			if err := hist.Scan(&a.Attempt, &at, &a.Owner, &a.Outcome, &a.Error); err != nil {
				hist.Close()
				return nil, err
			}
			a.At = fromMicro(at)
			out[i].History = append(out[i].History, a)
		}
		hist.Close()
		if err := hist.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

func (s *sqlStore) ListScans(ctx context.Context, sq ScanQuery) ([]ScanRecord, error) {
	limit := sq.Limit
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	var (
		where []string
		args  []any
	)
	rd := s.reader()
	if dev := strings.ToLower(strings.TrimSpace(sq.Device)); dev != "" {
		ids, err := machinesNamed(ctx, rd, dev)
		if err != nil {
			return nil, fmt.Errorf("list scans: machines named %q: %w", dev, err)
		}
		ids = append(ids, dev)
		w := `(d.device_id = ? OR d.device_dns = ? OR d.device_aad = ? OR d.device_ip = ? OR j.machine_id IN (` + placeholders(len(ids)) + `))`
		where = append(where, w)
		args = append(args, dev, dev, dev, dev)
		for _, id := range ids {
			args = append(args, id)
		}
	}
	if st := strings.ToLower(strings.TrimSpace(sq.Status)); st != "" {
		where = append(where, `(d.status = ? OR j.state = ? OR LOWER(a.status) = ?)`)
		args = append(args, st, st, st)
	}
	query := `SELECT d.created_at, d.alert_id, d.source, al.receipt_id, d.has_device, d.device_id, d.device_dns, d.device_aad, d.device_ip,
			d.rule, d.scan, d.status, d.reason, j.id, j.state, j.machine_id, j.attempts, j.last_error, j.updated_at,
			a.id, a.status, a.updated_at
		FROM decisions d
		JOIN alerts al ON al.pk = d.alert_pk
		LEFT JOIN jobs j ON j.id = d.job_id
		LEFT JOIN actions a ON a.id = j.action_id`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += ` ORDER BY d.created_at DESC, d.id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := rd.query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list scans: %w", err)
	}
	defer rows.Close()
	out := []ScanRecord{}
	for rows.Next() {
		var (
			r                              ScanRecord
			created                        int64
			hasDev                         int
			dev                            alert.Device
			jobID, attempts, jobUpd, actUp sql.NullInt64
			state, machine, lastErr        sql.NullString
			actID, actStatus               sql.NullString
		)
		if err := rows.Scan(&created, &r.AlertID, &r.Source, &r.Receipt, &hasDev, &dev.ID, &dev.DNSName, &dev.AADDeviceID, &dev.IP,
			&r.Rule, &r.Scan, &r.DecisionStatus, &r.Reason, &jobID, &state, &machine, &attempts, &lastErr, &jobUpd,
			&actID, &actStatus, &actUp); err != nil {
			return nil, fmt.Errorf("list scans: %w", err)
		}
		r.Time = fromMicro(created)
		r.UpdatedAt = r.Time
		if hasDev == 1 {
			r.Device = &dev
		}
		r.Status = r.DecisionStatus
		if jobID.Valid {
			r.JobID, r.JobState, r.MachineID = jobID.Int64, state.String, machine.String
			r.Attempts, r.LastError = int(attempts.Int64), lastErr.String
			r.Status = r.JobState
			if r.JobState == domain.JobDeduplicated {
				// The decision says why: duplicate or cooldown.
				r.Status = r.DecisionStatus
			}
			if t := fromMicro(jobUpd.Int64); t.After(r.UpdatedAt) {
				r.UpdatedAt = t
			}
		}
		if actID.Valid {
			r.ActionID, r.ActionStatus = actID.String, actStatus.String
			r.Status = r.ActionStatus
			if t := fromMicro(actUp.Int64); t.After(r.UpdatedAt) {
				r.UpdatedAt = t
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list scans: %w", err)
	}
	rows.Close()
	names := map[string][]string{}
	for i := range out {
		m := out[i].MachineID
		if m == "" {
			continue
		}
		if _, ok := names[m]; !ok {
			n, err := knownAs(ctx, rd, m)
			if err != nil {
				return nil, fmt.Errorf("list scans: names of machine %s: %w", m, err)
			}
			names[m] = n
		}
		out[i].KnownAs = names[m]
	}
	return out, nil
}
