// The JSON bodies of the webhook and read endpoints, and their conversion
// from the store's types: the wire format is defined here, not by the store.

package handlers

import (
	"encoding/json"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/store"
)

// webhookResponse is the 202 body of the webhook contract (README, "HTTP API").
type webhookResponse struct {
	Receipt   string         `json:"receipt"`
	Duplicate bool           `json:"duplicate"`
	Decisions []decisionJSON `json:"decisions"`
}

type decisionJSON struct {
	AlertID string        `json:"alert_id"`
	Device  *alert.Device `json:"device"`
	Rule    string        `json:"rule"`
	Scan    string        `json:"scan"`
	Status  string        `json:"status"`
	Reason  string        `json:"reason"`
}

// receiptResponse is the body of GET /v1/receipts/{receipt}.
type receiptResponse struct {
	Receipt    string             `json:"receipt"`
	Source     string             `json:"source"`
	ReceivedAt time.Time          `json:"received_at"`
	Alerts     []receiptAlertJSON `json:"alerts"`
	Jobs       []jobDetailJSON    `json:"jobs"`
	Actions    []actionJSON       `json:"actions"`
}

type receiptAlertJSON struct {
	Alert      alert.Alert          `json:"alert"`
	Raw        json.RawMessage      `json:"raw"`
	ReceivedAt time.Time            `json:"received_at"`
	Receipt    string               `json:"first_receipt"`
	Decisions  []decisionRecordJSON `json:"decisions"`
}

type decisionRecordJSON struct {
	AlertID    string        `json:"alert_id"`
	Device     *alert.Device `json:"device"`
	Rule       string        `json:"rule"`
	Scan       string        `json:"scan"`
	Comment    string        `json:"comment,omitempty"`
	Status     string        `json:"status"`
	Reason     string        `json:"reason"`
	RuleReason string        `json:"rule_reason,omitempty"`
	Cooldown   string        `json:"cooldown,omitempty"`
	DryRun     bool          `json:"dry_run,omitempty"`
	JobID      int64         `json:"job_id,omitempty"`
	CreatedAt  time.Time     `json:"created_at"`
}

// jobJSON is a store.Job.
type jobJSON struct {
	ID         int64        `json:"id"`
	AlertID    string       `json:"alert_id"`
	Source     string       `json:"source"`
	Device     alert.Device `json:"device"`
	Scan       string       `json:"scan"`
	Comment    string       `json:"comment"`
	Attempts   int          `json:"attempts"`
	State      string       `json:"state"`
	CreatedAt  time.Time    `json:"created_at"`
	LastError  string       `json:"last_error,omitempty"`
	IPSeenAt   time.Time    `json:"ip_seen_at,omitzero"`
	MachineID  string       `json:"machine_id,omitempty"`
	Calling    bool         `json:"calling"`
	LeaseUntil time.Time    `json:"lease_until,omitzero"`
}

// jobDetailJSON is a job of a receipt with its attempt history; the job's
// fields come first, at the top level.
type jobDetailJSON struct {
	jobJSON
	UpdatedAt time.Time     `json:"updated_at"`
	ActionID  string        `json:"action_id,omitempty"`
	History   []attemptJSON `json:"history"`
}

type attemptJSON struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Owner   string    `json:"owner"`
	Outcome string    `json:"outcome"`
	Error   string    `json:"error,omitempty"`
}

type actionJSON struct {
	ID           string    `json:"id"`
	JobID        int64     `json:"job_id"`
	MachineID    string    `json:"machine_id"`
	Status       string    `json:"status"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
	LastPolledAt time.Time `json:"last_polled_at,omitzero"`
}

// scansResponse is the body of GET /v1/scans.
type scansResponse struct {
	Scans []scanJSON `json:"scans"`
}

// scanJSON is one decision of the audit trail.
type scanJSON struct {
	Time           time.Time     `json:"time"`
	AlertID        string        `json:"alert_id"`
	Source         string        `json:"source"`
	Receipt        string        `json:"receipt"`
	Device         *alert.Device `json:"device"`
	Rule           string        `json:"rule"`
	Scan           string        `json:"scan"`
	Status         string        `json:"status"`
	DecisionStatus string        `json:"decision_status"`
	JobState       string        `json:"job_state,omitempty"`
	ActionStatus   string        `json:"action_status,omitempty"`
	Reason         string        `json:"reason"`
	JobID          int64         `json:"job_id,omitempty"`
	ActionID       string        `json:"action_id,omitempty"`
	MachineID      string        `json:"machine_id,omitempty"`
	Attempts       int           `json:"attempts,omitempty"`
	LastError      string        `json:"last_error,omitempty"`
	UpdatedAt      time.Time     `json:"updated_at"`
	KnownAs        []string      `json:"known_as,omitempty"`
}

// convertAll maps a slice, keeping nil as nil so that an absent list still
// encodes as null and an empty one as [].
func convertAll[S, W any](in []S, conv func(S) W) []W {
	if in == nil {
		return nil
	}
	out := make([]W, len(in))
	for i, v := range in {
		out[i] = conv(v)
	}
	return out
}

// webhookBody is the 202 answer to an ingested delivery. Its decisions are
// never null, even for a delivery with no alerts.
func webhookBody(res store.IngestResult) webhookResponse {
	out := webhookResponse{Receipt: res.Receipt, Duplicate: res.Duplicate, Decisions: make([]decisionJSON, len(res.Decisions))}
	for i, o := range res.Decisions {
		out.Decisions[i] = decisionJSON{AlertID: o.AlertID, Device: o.Device, Rule: o.Rule, Scan: o.Scan, Status: o.Status, Reason: o.Reason}
	}
	return out
}

func receiptBody(d *store.ReceiptDetail) receiptResponse {
	return receiptResponse{
		Receipt:    d.Receipt,
		Source:     d.Source,
		ReceivedAt: d.ReceivedAt,
		Alerts:     convertAll(d.Alerts, receiptAlertBody),
		Jobs:       convertAll(d.Jobs, jobBody),
		Actions:    convertAll(d.Actions, actionBody),
	}
}

func receiptAlertBody(a store.ReceiptAlert) receiptAlertJSON {
	return receiptAlertJSON{
		Alert:      a.Alert,
		Raw:        a.Raw,
		ReceivedAt: a.ReceivedAt,
		Receipt:    a.Receipt,
		Decisions:  convertAll(a.Decisions, decisionRecordBody),
	}
}

// decisionRecordBody, jobBody, attemptBody, actionBody and scanBody use Go
// struct conversions: each wire type lists its store type's fields with the
// same names and types in the same order, so a field added to or changed in
// the store stops the build here rather than silently reaching the API or
// dropping out of it.

func decisionRecordBody(d store.DecisionRecord) decisionRecordJSON { return decisionRecordJSON(d) }

func jobBody(j store.JobDetail) jobDetailJSON {
	return jobDetailJSON{
		jobJSON:   jobJSON(j.Job),
		UpdatedAt: j.UpdatedAt,
		ActionID:  j.ActionID,
		History:   convertAll(j.History, attemptBody),
	}
}

func attemptBody(a store.Attempt) attemptJSON { return attemptJSON(a) }

func actionBody(a store.Action) actionJSON { return actionJSON(a) }

func scansBody(recs []store.ScanRecord) scansResponse {
	return scansResponse{Scans: convertAll(recs, scanBody)}
}

func scanBody(r store.ScanRecord) scanJSON { return scanJSON(r) }
