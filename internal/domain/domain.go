// Package domain owns the vocabulary that every stage of scanhook shares:
// the webhook sources, the normalized severities, the scan types, the
// decision statuses, the job states and Defender's action statuses. Each is
// defined once here, so that a value cannot be accepted by one stage and
// refused by another. It imports nothing of scanhook.
package domain

import (
	"fmt"
	"slices"
	"strings"
)

// Webhook sources: the {source} of POST /v1/webhooks/{source}, in the order
// the docs list them.
const (
	SourceDefender     = "defender"
	SourceGraph        = "graph"
	SourceSentinel     = "sentinel"
	SourceAzureMonitor = "azuremonitor"
	SourceSplunk       = "splunk"
	SourceElastic      = "elastic"
	SourceAlertmanager = "alertmanager"
	SourceGeneric      = "generic"
)

// Sources returns the source names in the order the docs list them.
func Sources() []string {
	return []string{SourceDefender, SourceGraph, SourceSentinel, SourceAzureMonitor,
		SourceSplunk, SourceElastic, SourceAlertmanager, SourceGeneric}
}

// IsSource reports whether s is a source name.
func IsSource(s string) bool { return slices.Contains(Sources(), s) }

// Severity is an alert's normalized severity. Its order matters: rules
// compare severities with gte and lte.
type Severity string

// The normalized severities, lowest first.
const (
	SeverityInformational Severity = "informational"
	SeverityLow           Severity = "low"
	SeverityMedium        Severity = "medium"
	SeverityHigh          Severity = "high"
	SeverityCritical      Severity = "critical"
)

var severities = [...]Severity{SeverityInformational, SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// Severities returns the normalized severities, lowest first.
func Severities() []Severity { s := severities; return s[:] }

// Rank orders severities: informational 0 … critical 4, and -1 for anything
// that is not a normalized severity.
func (s Severity) Rank() int {
	for i, v := range severities {
		if v == s {
			return i
		}
	}
	return -1
}

// Valid reports whether s is one of the normalized severities.
func (s Severity) Valid() bool { return s.Rank() >= 0 }

// The antivirus scan a decision asks for: Defender's two ScanType
// spellings, or none.
const (
	ScanQuick = "Quick"
	ScanFull  = "Full"
	ScanNone  = "none"
)

// Scans returns the scan types a rule may ask for.
func Scans() []string { return []string{ScanQuick, ScanFull, ScanNone} }

// ParseScanType accepts Defender's scan types, Quick or Full, in any letter
// case (a person typing a command), and returns the canonical spelling.
func ParseScanType(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "quick":
		return ScanQuick, nil
	case "full":
		return ScanFull, nil
	}
	return "", fmt.Errorf("scan type %q: want Quick or Full", s)
}

// Decision statuses: what happened to one (alert, device) decision, as the
// webhook's 202 and the audit trail report it.
const (
	StatusQueued          = "queued"
	StatusSkipped         = "skipped"
	StatusDuplicate       = "duplicate"
	StatusCooldown        = "cooldown"
	StatusAlreadyScanning = "already_scanning"
	StatusDryRun          = "dry_run"
)

// DecisionStatuses returns every decision status.
func DecisionStatuses() []string {
	return []string{StatusQueued, StatusSkipped, StatusDuplicate, StatusCooldown, StatusAlreadyScanning, StatusDryRun}
}

// Job states: where a scan job is on its way to Defender (docs/architecture.md
// draws the machine).
const (
	// JobQueued: waiting for its first claim (or handed back before any
	// Defender call).
	JobQueued = "queued"
	// JobWaiting: a Full scan decided while the device's open Quick scan
	// had already reached Defender; not open and never claimed, it becomes
	// queued (and open) in the transaction that closes the Quick's job. At
	// most one per device.
	JobWaiting = "waiting"
	// JobLeased: claimed by a dispatcher, no Defender call recorded in this lease.
	JobLeased = "leased"
	// JobCalling: the lease holder said a Defender call is in flight.
	JobCalling = "calling"
	// JobRetry: an attempt failed; due again at its next attempt time.
	JobRetry = "retry"
	// JobSubmitted: Defender accepted the scan; the job stays open until
	// its action is final.
	JobSubmitted = "submitted"
	// JobAlreadyScanning: Defender refused because a scan was already
	// pending on the machine; open until that action (if known) is final.
	JobAlreadyScanning = "already_scanning"
	// JobDead: given up; kept for the audit trail.
	JobDead = "dead"
	// JobDeduplicated: closed before any Defender call because the machine
	// its device resolved to (under another name than the one its decision
	// was made for) already had an open scan or was in its cooldown; its
	// decision says duplicate or cooldown, and why.
	JobDeduplicated = "deduplicated"
)

// JobStates returns every job state.
func JobStates() []string {
	return []string{JobQueued, JobWaiting, JobLeased, JobCalling, JobRetry, JobSubmitted, JobAlreadyScanning, JobDead, JobDeduplicated}
}

// Defender MachineAction statuses; the last four are final.
const (
	ActionPending    = "Pending"
	ActionInProgress = "InProgress"
	ActionSucceeded  = "Succeeded"
	ActionFailed     = "Failed"
	ActionTimeOut    = "TimeOut"
	ActionCancelled  = "Cancelled"
)

// ActionStatuses returns every MachineAction status.
func ActionStatuses() []string {
	return []string{ActionPending, ActionInProgress, ActionSucceeded, ActionFailed, ActionTimeOut, ActionCancelled}
}

// ActionFinal reports whether a MachineAction status is final.
func ActionFinal(status string) bool {
	switch status {
	case ActionSucceeded, ActionFailed, ActionTimeOut, ActionCancelled:
		return true
	}
	return false
}
