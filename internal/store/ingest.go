package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

var receiptEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ReceiptID is the deterministic receipt of a delivery: the same source and
// set of alert ids always give the same receipt, in any order, so that a
// redelivery is answered with the receipt of the first delivery.
func ReceiptID(source string, alertIDs []string) string {
	ids := slices.Clone(alertIDs)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	h := sha256.New()
	// Length-prefixed, so no choice of ids can collide with another.
	fmt.Fprintf(h, "%d:%s", len(source), source)
	for _, id := range ids {
		fmt.Fprintf(h, "%d:%s", len(id), id)
	}
	return "r_" + strings.ToLower(receiptEncoding.EncodeToString(h.Sum(nil)))[:26]
}

// validReceipt reports whether id has ReceiptID's shape.
func validReceipt(id string) bool {
	if len(id) != 28 || !strings.HasPrefix(id, "r_") {
		return false
	}
	for _, c := range id[2:] {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// clean makes text storable in both dialects: PostgreSQL text refuses NUL
// and invalid UTF-8.
func clean(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func validateDelivery(d Delivery) error {
	if strings.TrimSpace(d.Source) == "" {
		return errors.New("delivery source: empty")
	}
	for i, a := range d.Alerts {
		if strings.TrimSpace(clean(a.Alert.ID)) == "" {
			return fmt.Errorf("alerts[%d].id: empty", i)
		}
		for j, dec := range a.Decisions {
			switch dec.Scan {
			case domain.ScanQuick, domain.ScanFull, domain.ScanNone:
			default:
				return fmt.Errorf("alerts[%d].decisions[%d].scan: %q is not Quick, Full or none", i, j, dec.Scan)
			}
			if dec.Cooldown < 0 {
				return fmt.Errorf("alerts[%d].decisions[%d].cooldown: negative", i, j)
			}
		}
	}
	return nil
}

// wantsScan: the decision needs the device's open-scan and cooldown state.
func wantsScan(d DecisionInput) bool {
	return d.Device != nil && d.Scan != domain.ScanNone && !d.DryRun
}

func (s *sqlStore) Ingest(ctx context.Context, d Delivery) (IngestResult, error) {
	if err := validateDelivery(d); err != nil {
		return IngestResult{}, fmt.Errorf("ingest: %w", err)
	}
	source := clean(d.Source)
	// Each alert once, in delivery order; a repeated id within a delivery
	// is reported with the first one's outcome.
	var alerts []storedAlert
	seen := map[string]bool{}
	var ids []string
	for _, a := range d.Alerts {
		id := clean(a.Alert.ID)
		if seen[id] {
			continue
		}
		seen[id] = true
		a.Alert.ID = id
		// Encoded here, by the caller's goroutine: SQLite has one writer,
		// and whatever it does not have to do raises what it can take.
		st, err := encodeAlert(a, source)
		if err != nil {
			return IngestResult{}, fmt.Errorf("ingest: %w", err)
		}
		alerts = append(alerts, st)
		ids = append(ids, id)
	}
	receipt := ReceiptID(source, ids)

	var res IngestResult
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		now := s.now()
		received := d.ReceivedAt
		if received.IsZero() {
			received = now
		}
		r, err := s.ingestTx(ctx, tx, now, received, source, receipt, alerts)
		res = r
		return err
	})
	if err != nil {
		return IngestResult{}, fmt.Errorf("ingest delivery %s from %s: %w", receipt, source, err)
	}
	return res, nil
}

// storedAlert is an alert of a delivery with its columns ready to insert.
type storedAlert struct {
	AlertInput
	normalized string
	raw        []byte
}

func encodeAlert(a AlertInput, source string) (storedAlert, error) {
	norm := a.Alert
	if norm.Source == "" {
		norm.Source = source
	}
	nj, err := json.Marshal(norm)
	if err != nil {
		return storedAlert{}, fmt.Errorf("alert %q: encode: %w", a.Alert.ID, err)
	}
	raw := []byte(a.Raw)
	if raw == nil {
		raw = []byte(a.Alert.Raw)
	}
	if raw == nil {
		raw = []byte("null")
	}
	return storedAlert{AlertInput: a, normalized: string(nj), raw: raw}, nil
}

func (s *sqlStore) ingestTx(ctx context.Context, tx q, now, received time.Time, source, receipt string, alerts []storedAlert) (IngestResult, error) {
	res := IngestResult{Receipt: receipt, Decisions: []DecisionOutcome{}}

	// Lock every device the delivery may scan, sorted, before anything
	// else: the same order in every transaction means no deadlock, and
	// holding them first means an alert-row conflict never waits on a
	// transaction that waits on us.
	var keys []string
	for _, a := range alerts {
		for _, dec := range a.Decisions {
			if wantsScan(dec) {
				keys = append(keys, clean(dec.Device.Key()))
			}
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	if err := addDevices(ctx, tx, keys); err != nil {
		return res, err
	}

	if _, err := tx.exec(ctx, `INSERT INTO receipts (id, source, received_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		receipt, source, received.UnixMicro()); err != nil {
		return res, fmt.Errorf("add receipt: %w", err)
	}

	// Alert rows in id order (two deliveries sharing alerts must not
	// take their unique-index locks in opposite orders).
	order := make([]int, len(alerts))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(alerts[a].Alert.ID, alerts[b].Alert.ID) })
	pks := make([]int64, len(alerts))
	isNew := make([]bool, len(alerts))
	for _, i := range order {
		a := alerts[i]
		err := tx.row(ctx, `INSERT INTO alerts (source, alert_id, receipt_id, received_at, normalized, raw)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, alert_id) DO NOTHING RETURNING pk`,
			source, a.Alert.ID, receipt, received.UnixMicro(), a.normalized, a.raw).Scan(&pks[i])
		switch {
		case err == nil:
			isNew[i] = true
		case errors.Is(err, sql.ErrNoRows):
			if err := tx.row(ctx, `SELECT pk FROM alerts WHERE source = ? AND alert_id = ?`, source, a.Alert.ID).Scan(&pks[i]); err != nil {
				return res, fmt.Errorf("alert %q: find existing: %w", a.Alert.ID, err)
			}
		default:
			return res, fmt.Errorf("alert %q: add: %w", a.Alert.ID, err)
		}
		if _, err := tx.exec(ctx, `INSERT INTO receipt_alerts (receipt_id, alert_pk) VALUES (?, ?) ON CONFLICT DO NOTHING`, receipt, pks[i]); err != nil {
			return res, fmt.Errorf("alert %q: link receipt: %w", a.Alert.ID, err)
		}
	}

	res.Duplicate = len(alerts) > 0
	for i, a := range alerts {
		if !isNew[i] {
			stored, err := storedOutcomes(ctx, tx, pks[i])
			if err != nil {
				return res, fmt.Errorf("alert %q: stored decisions: %w", a.Alert.ID, err)
			}
			res.Decisions = append(res.Decisions, stored...)
			continue
		}
		res.Duplicate = false
		for seq, dec := range a.Decisions {
			out, err := s.decide(ctx, tx, now, pks[i], source, a.Alert.ID, ipTime(a.Alert.Time, received), seq, dec)
			if err != nil {
				return res, fmt.Errorf("alert %q decision %d: %w", a.Alert.ID, seq, err)
			}
			res.Decisions = append(res.Decisions, out)
		}
	}
	return res, nil
}

// decide finalizes one decision under the device's lock and records it.
func (s *sqlStore) decide(ctx context.Context, tx q, now time.Time, alertPK int64, source, alertID string, ipAt time.Time, seq int, in DecisionInput) (DecisionOutcome, error) {
	out := DecisionOutcome{AlertID: alertID, Rule: clean(in.Rule), Scan: in.Scan}
	var dev alert.Device
	if in.Device != nil {
		dev = alert.Device{ID: clean(in.Device.ID), DNSName: clean(in.Device.DNSName), AADDeviceID: clean(in.Device.AADDeviceID), IP: clean(in.Device.IP)}
		out.Device = &dev
	}
	ruleReason := clean(in.Reason)
	comment := clean(in.Comment)
	key := ""
	if out.Device != nil {
		key = dev.Key()
	}

	switch {
	case in.Scan == domain.ScanNone:
		out.Status, out.Reason = domain.StatusSkipped, ruleReason
		if out.Reason == "" {
			out.Reason = "scan: none"
		}
	case out.Device == nil:
		out.Status, out.Reason = domain.StatusSkipped, "no usable device to scan"
		if ruleReason != "" {
			out.Reason += " (" + ruleReason + ")"
		}
	case in.DryRun:
		out.Status, out.Reason = domain.StatusDryRun, "dry run: would queue a "+in.Scan+" scan"
		if ruleReason != "" {
			out.Reason += " (" + ruleReason + ")"
		}
	default:
		if err := s.decideScan(ctx, tx, now, alertPK, source, alertID, key, dev, ipAt, in.Scan, comment, ruleReason, in.Cooldown, &out); err != nil {
			return out, err
		}
	}

	hasDev := 0
	if out.Device != nil {
		hasDev = 1
	}
	var jobID any
	if out.JobID != 0 {
		jobID = out.JobID
	}
	if _, err := tx.exec(ctx, `INSERT INTO decisions (alert_pk, seq, source, alert_id, device_key, device_id, device_dns, device_aad, device_ip,
			has_device, rule, scan, comment, rule_reason, cooldown_us, dry_run, status, reason, job_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		alertPK, seq, source, alertID, key, dev.ID, dev.DNSName, dev.AADDeviceID, dev.IP,
		hasDev, out.Rule, out.Scan, comment, ruleReason, in.Cooldown.Microseconds(), boolInt(in.DryRun),
		out.Status, out.Reason, jobID, now.UnixMicro()); err != nil {
		return out, fmt.Errorf("record decision: %w", err)
	}
	return out, nil
}

// decideScan applies "one open scan per device", the Full-upgrades-Quick
// rule and the cooldown, and queues a job when none of them stops it. A Full
// decided while the open Quick has already been claimed or reached Defender
// becomes the device's one waiting job, queued when the Quick's job closes
// (promoteWaiting), so an escalation is never lost to a running Quick.
func (s *sqlStore) decideScan(ctx context.Context, tx q, now time.Time, alertPK int64, source, alertID, key string, dev alert.Device, ipAt time.Time,
	scan, comment, ruleReason string, cooldown time.Duration, out *DecisionOutcome) error {
	var (
		openID           int64
		openScan, openSt string
		openCalling      int
		waitFor          int64
	)
	err := tx.row(ctx, `SELECT id, scan, state, calling FROM jobs WHERE device_key = ? AND open = 1 ORDER BY id LIMIT 1`, key).
		Scan(&openID, &openScan, &openSt, &openCalling)
	switch {
	case err == nil:
		// A job that has not reached Defender yet can still become Full.
		if openScan == domain.ScanQuick && scan == domain.ScanFull && openCalling == 0 && (openSt == domain.JobQueued || openSt == domain.JobRetry) {
			r, err := tx.exec(ctx, `UPDATE jobs SET scan = ?, comment = ?, updated_at = ?
				WHERE id = ? AND scan = ? AND calling = 0 AND state IN (?, ?)`,
				domain.ScanFull, comment, now.UnixMicro(), openID, domain.ScanQuick, domain.JobQueued, domain.JobRetry)
			if err != nil {
				return fmt.Errorf("upgrade job %d: %w", openID, err)
			}
			// On PostgreSQL a dispatcher may have claimed it since we read.
			if n, _ := r.RowsAffected(); n == 1 {
				out.Status = domain.StatusQueued
				out.JobID = openID
				out.Reason = fmt.Sprintf("upgraded queued Quick scan (job %d) to Full", openID)
				return nil
			}
			openSt = "claimed"
		}
		// A waiting Full is the strongest scan the device has coming: every
		// later decision is a duplicate of it.
		var waitID int64
		err := tx.row(ctx, `SELECT id FROM jobs WHERE device_key = ? AND state = ? ORDER BY id LIMIT 1`, key, domain.JobWaiting).Scan(&waitID)
		switch {
		case err == nil:
			out.Status = domain.StatusDuplicate
			out.Reason = fmt.Sprintf("device already has a Full scan (job %d, %s) to run after its open %s scan (job %d, %s)",
				waitID, domain.JobWaiting, openScan, openID, openSt)
			return nil
		case errors.Is(err, sql.ErrNoRows):
		default:
			return fmt.Errorf("find waiting job: %w", err)
		}
		if openScan != domain.ScanQuick || scan != domain.ScanFull {
			out.Status = domain.StatusDuplicate
			out.Reason = fmt.Sprintf("device already has an open %s scan (job %d, %s)", openScan, openID, openSt)
			return nil
		}
		waitFor = openID
	case errors.Is(err, sql.ErrNoRows):
	default:
		return fmt.Errorf("find open job: %w", err)
	}

	if cooldown > 0 {
		var qAt, qJob, fAt, fJob sql.NullInt64
		if err := tx.row(ctx, `SELECT last_quick_at, last_quick_job, last_full_at, last_full_job FROM devices WHERE key = ?`, key).
			Scan(&qAt, &qJob, &fAt, &fJob); err != nil {
			return fmt.Errorf("read device %q: %w", key, err)
		}
		since := now.Add(-cooldown).UnixMicro()
		var at, job int64
		last := ""
		// Full counts against any new scan; Quick only against a Quick.
		if fAt.Valid && fAt.Int64 > since {
			at, job, last = fAt.Int64, fJob.Int64, domain.ScanFull
		}
		if scan == domain.ScanQuick && qAt.Valid && qAt.Int64 > since && qAt.Int64 > at {
			at, job, last = qAt.Int64, qJob.Int64, domain.ScanQuick
		}
		if last != "" {
			t := time.UnixMicro(at).UTC()
			out.Status = domain.StatusCooldown
			out.Reason = fmt.Sprintf("a %s scan was requested for this device at %s (job %d); cooldown %s until %s",
				last, t.Format(time.RFC3339), job, cooldown, t.Add(cooldown).Format(time.RFC3339))
			return nil
		}
	}

	state, open := domain.JobQueued, 1
	if waitFor != 0 {
		// Not open: the device keeps exactly one open job, the Quick.
		state, open = domain.JobWaiting, 0
	}
	var id int64
	ipAtUS := int64(0)
	if dev.IP != "" {
		ipAtUS = ipAt.UnixMicro()
	}
	if err := tx.row(ctx, `INSERT INTO jobs (alert_pk, source, alert_id, device_key, device_id, device_dns, device_aad, device_ip, device_ip_at,
			scan, comment, state, open, calling, attempts, due_at, machine_id, last_error, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, '', ?, ?) RETURNING id`,
		alertPK, source, alertID, key, dev.ID, dev.DNSName, dev.AADDeviceID, dev.IP, ipAtUS, scan, comment,
		state, open, now.UnixMicro(), dev.ID, now.UnixMicro(), now.UnixMicro()).Scan(&id); err != nil {
		return fmt.Errorf("add job: %w", err)
	}
	out.Status = domain.StatusQueued
	out.JobID = id
	if waitFor != 0 {
		out.Reason = fmt.Sprintf("queued %s scan (job %d) to run after the open %s scan (job %d) ends", scan, id, openScan, waitFor)
		if ruleReason != "" {
			out.Reason += " (" + ruleReason + ")"
		}
		return nil
	}
	out.Reason = ruleReason
	if out.Reason == "" {
		out.Reason = "queued " + scan + " scan (job " + strconv.FormatInt(id, 10) + ")"
	}
	return nil
}

func storedOutcomes(ctx context.Context, tx q, alertPK int64) ([]DecisionOutcome, error) {
	rows, err := tx.query(ctx, `SELECT alert_id, has_device, device_id, device_dns, device_aad, device_ip, rule, scan, status, reason, job_id
		FROM decisions WHERE alert_pk = ? ORDER BY seq`, alertPK)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var outs []DecisionOutcome
	for rows.Next() {
		var (
			o      DecisionOutcome
			hasDev int
			dev    alert.Device
			jobID  sql.NullInt64
		)
		if err := rows.Scan(&o.AlertID, &hasDev, &dev.ID, &dev.DNSName, &dev.AADDeviceID, &dev.IP, &o.Rule, &o.Scan, &o.Status, &o.Reason, &jobID); err != nil {
			return nil, err
		}
		if hasDev == 1 {
			o.Device = &dev
		}
		o.JobID = jobID.Int64
		outs = append(outs, o)
	}
	return outs, rows.Err()
}

// ipTime is when an alert saw its devices' IP addresses, for Defender's
// findbyip: the alert's own time, unless it has none or claims a time after
// it was received, then the time it was received.
func ipTime(alertTime, received time.Time) time.Time {
	if alertTime.IsZero() || alertTime.After(received) {
		return received
	}
	return alertTime
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
