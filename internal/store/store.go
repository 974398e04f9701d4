// Package store owns scanhook's durable state: received alerts with their raw
// bodies, the per-device decisions made for them, the scan jobs the
// dispatcher works through, the Defender machine actions those jobs created,
// and the audit trail over all of it.
//
// Two backends share one schema and one set of queries: SQLite
// (modernc.org/sqlite, WAL, one process) and PostgreSQL (pgx, several
// replicas). The store keeps the two promises scanhook makes: an alert is
// committed before Ingest returns (so before the HTTP 202), and a device gets
// at most one open scan, decided inside the ingest transaction under a lock
// on the device's row, so that goroutines and replicas cannot race.
//
// On SQLite one writer goroutine owns the write connection and commits
// concurrent calls together (group commit, a SAVEPOINT per call), in WAL mode
// with synchronous=FULL: one fsync per batch, and an acknowledged call
// survives a killed process and a power cut alike. WAL checkpoints run on a
// connection of their own, off the writer's commits (checkpoint.go). All
// times are stored as Unix microseconds so both dialects share every query.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
)

// Errors callers branch on.
var (
	// ErrNotFound: no receipt, job or action with that id.
	ErrNotFound = errors.New("not found")
	// ErrLeaseLost: the job is no longer leased by the caller (its lease
	// expired and another owner claimed it, or it was released or finished).
	ErrLeaseLost = errors.New("job lease lost")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// Outcome is what happened to a leased job.
type Outcome string

// Job outcomes for CompleteJob.
const (
	OutcomeSubmitted       Outcome = "submitted"
	OutcomeAlreadyScanning Outcome = "already_scanning"
	OutcomeRetry           Outcome = "retry"
	OutcomeDead            Outcome = "dead"
)

// OutcomeNotAttempted is the history entry (JobDetail.History) of a retry
// whose attempt was given back (JobResult.NotAttempted); not an Outcome to
// pass to CompleteJob.
const OutcomeNotAttempted = "not_attempted"

// Deps are what the store uses from outside.
type Deps struct {
	Logger *slog.Logger
	// Now is the clock (defaults to time.Now). Every time the store records
	// or compares comes from it, so tests can move time.
	Now func() time.Time
}

// Store is scanhook's durable state. Every method is safe for concurrent use.
type Store interface {
	// Ingest records a delivery and finalizes its decisions in one
	// transaction; when it returns nil the delivery is committed.
	Ingest(ctx context.Context, d Delivery) (IngestResult, error)
	// Receipt returns what a receipt covers; ErrNotFound if unknown.
	Receipt(ctx context.Context, id string) (*ReceiptDetail, error)
	// ListScans is the audit trail, newest decision first.
	ListScans(ctx context.Context, q ScanQuery) ([]ScanRecord, error)
	// ClaimJobs leases up to limit due jobs to owner for lease.
	ClaimJobs(ctx context.Context, owner string, limit int, lease time.Duration) ([]Job, error)
	// MarkCalling records, before the call, that owner is about to call
	// Defender for the job's current attempt. ErrLeaseLost if owner does not
	// hold an unexpired lease.
	MarkCalling(ctx context.Context, jobID int64, owner string) error
	// CompleteJob records an attempt's outcome; ErrLeaseLost if r.Owner no
	// longer holds the job.
	CompleteJob(ctx context.Context, r JobResult) error
	// BindMachine records the machine id a leased job resolved to and
	// checks the machine's open scan and cooldown, whatever name the job
	// was decided under; a duplicate or cooldown closes the job.
	BindMachine(ctx context.Context, jobID int64, owner, machineID string) (MachineCheck, error)
	// MachineByName and RememberMachineName share resolved names (the
	// dispatcher's cache keys) between replicas.
	MachineByName(ctx context.Context, name string, maxAge time.Duration) (id string, at time.Time, ok bool, err error)
	RememberMachineName(ctx context.Context, name, machineID string) error
	// ReleaseJobs hands owner's leased jobs back, due now.
	ReleaseJobs(ctx context.Context, owner string) error
	// OpenActions lists Defender actions that are not final, least
	// recently polled first.
	OpenActions(ctx context.Context, limit int) ([]Action, error)
	// UpdateActions records polled action statuses. Unknown ids are skipped.
	UpdateActions(ctx context.Context, updates []ActionUpdate) error
	// Stats summarizes the queue for metrics and readiness.
	Stats(ctx context.Context) (Stats, error)
	// Ping checks the database is reachable.
	Ping(ctx context.Context) error
	// Close stops the writer and closes the database.
	Close() error
}

// Delivery is one accepted webhook call: the alerts decoded from its body
// and the rules' decisions for each.
type Delivery struct {
	Source     string
	ReceivedAt time.Time // zero: the store's clock
	Alerts     []AlertInput
}

// AlertInput is one alert of a delivery.
type AlertInput struct {
	Alert alert.Alert
	// Raw is the alert's part of the body as sent; nil means Alert.Raw.
	Raw       json.RawMessage
	Decisions []DecisionInput
}

// DecisionInput is what the rules decided for one device of an alert.
type DecisionInput struct {
	Device   *alert.Device // nil: the alert names no usable device
	Rule     string
	Scan     string // Quick | Full | none
	Comment  string
	Reason   string
	Cooldown time.Duration
	DryRun   bool
}

// IngestResult is the answer to a delivery.
type IngestResult struct {
	Receipt   string
	Duplicate bool
	Decisions []DecisionOutcome
}

// DecisionOutcome is the finalized decision for one (alert, device).
type DecisionOutcome struct {
	AlertID string
	Device  *alert.Device
	Rule    string
	Scan    string
	Status  string
	Reason  string
	// JobID is the job this decision created or upgraded (0: none).
	JobID int64
}

// Job is a scan job as the dispatcher sees it.
type Job struct {
	ID        int64
	AlertID   string
	Source    string
	Device    alert.Device
	Scan      string
	Comment   string
	Attempts  int // claims so far, this one included
	State     string
	CreatedAt time.Time
	LastError string
	// IPSeenAt is when the alert saw Device.IP (zero without one): the
	// timestamp a lookup by IP asks Defender about.
	IPSeenAt time.Time
	// MachineID is the resolved Defender machine id, once known.
	MachineID string
	// Calling: a previous attempt was marked as calling Defender and may
	// have reached it; the dispatcher must look for an existing action
	// before calling again.
	Calling    bool
	LeaseUntil time.Time
}

// JobResult is the outcome of one attempt at a job.
type JobResult struct {
	JobID   int64
	Owner   string
	Outcome Outcome
	// MachineID is the resolved machine id; recorded with any outcome
	// when set (required for Submitted).
	MachineID string
	// ActionID and ActionStatus: the Defender action (required for
	// Submitted; optional for AlreadyScanning, the action already pending).
	ActionID     string
	ActionStatus string
	// Reason explains AlreadyScanning.
	Reason string
	// RetryAt is when a Retry is due again (zero: now).
	RetryAt time.Time
	// Err is the attempt's error (Retry, Dead).
	Err string
	// NotAttempted gives the attempt back: ClaimJobs counted it, but
	// Defender was never asked (scanhook's own rate limit held the call),
	// so it must not bring the job closer to max_attempts. Retry only.
	NotAttempted bool
	// NothingCreated says the attempt proved that no Defender action exists
	// for the job: every call that could have created one (this attempt's,
	// and a crashed earlier one's, looked up first) was answered with a
	// refusal or never sent. The job's calling flag is then cleared, so the
	// next attempt skips the look-up. Leave it false whenever in doubt.
	NothingCreated bool
}

// Action is a Defender machine action scanhook tracks.
type Action struct {
	ID           string
	JobID        int64
	MachineID    string
	Status       string
	CreatedAt    time.Time
	UpdatedAt    time.Time
	LastPolledAt time.Time
}

// ActionUpdate is a polled action status.
type ActionUpdate struct {
	ID     string
	Status string
}

// Stats summarizes the queue.
type Stats struct {
	JobsByState map[string]int64
	// QueueDepth counts jobs due now (claimable); waiting jobs are not due
	// and show only under JobsByState["waiting"].
	QueueDepth int64
	// OldestDue is how long the oldest due job has been due (0: none).
	OldestDue   time.Duration
	OpenActions int64
}

// ScanQuery filters the audit trail.
type ScanQuery struct {
	// Device matches the decision's machine id, DNS name, AAD device id or
	// IP address, or the machine id its job resolved to, or any machine
	// the name was resolved to (case-insensitive): every record of a
	// machine, whatever the alert called it.
	Device string
	// Status matches the decision status, the job state or the action
	// status (case-insensitive), so "cooldown", "dead" and "succeeded"
	// all work.
	Status string
	// Limit defaults to 100 and is capped at 1000.
	Limit int
}

// ScanRecord is one decision of the audit trail with its job and action.
//
// Status is the furthest point reached: the action's status when Defender
// created one, else the job's state when a job exists, else the decision's
// status. The three stages are also given separately.
type ScanRecord struct {
	Time           time.Time
	AlertID        string
	Source         string
	Receipt        string
	Device         *alert.Device
	Rule           string
	Scan           string
	Status         string
	DecisionStatus string
	JobState       string
	ActionStatus   string
	Reason         string
	JobID          int64
	ActionID       string
	MachineID      string
	Attempts       int
	LastError      string
	UpdatedAt      time.Time
	// KnownAs is every name the machine's jobs named it by (with MachineID).
	KnownAs []string
}

// ReceiptDetail is everything a receipt covers (what GET /v1/receipts/{id}
// answers, in the handlers' wire format).
type ReceiptDetail struct {
	Receipt    string
	Source     string
	ReceivedAt time.Time
	Alerts     []ReceiptAlert
	Jobs       []JobDetail
	Actions    []Action
}

// ReceiptAlert is one alert of a receipt with its decisions.
type ReceiptAlert struct {
	Alert      alert.Alert
	Raw        json.RawMessage
	ReceivedAt time.Time
	Receipt    string
	Decisions  []DecisionRecord
}

// DecisionRecord is a stored decision.
type DecisionRecord struct {
	AlertID    string
	Device     *alert.Device
	Rule       string
	Scan       string
	Comment    string
	Status     string
	Reason     string
	RuleReason string
	Cooldown   string
	DryRun     bool
	JobID      int64
	CreatedAt  time.Time
}

// JobDetail is a job with its attempt history.
type JobDetail struct {
	Job
	UpdatedAt time.Time
	ActionID  string
	History   []Attempt
}

// Attempt is one recorded attempt outcome.
type Attempt struct {
	Attempt int
	At      time.Time
	Owner   string
	Outcome string
	Error   string
}
