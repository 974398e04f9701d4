package alert

import (
	"strings"

	"github.com/scanhook/scanhook/internal/domain"
)

// Severity words per source (lower-cased), from the table in sources.md.
// Every source also understands the five normalized names themselves;
// anything unrecognized is informational (it is still recorded and explained,
// and rules can still match it through raw.<path>).
var (
	commonSeverities = map[string]domain.Severity{
		"informational": domain.SeverityInformational, "info": domain.SeverityInformational,
		"low": domain.SeverityLow, "medium": domain.SeverityMedium, "high": domain.SeverityHigh, "critical": domain.SeverityCritical,
	}
	defenderSeverities = map[string]domain.Severity{"unspecified": domain.SeverityInformational}
	graphSeverities    = map[string]domain.Severity{"unknown": domain.SeverityInformational}
	azureSeverities    = map[string]domain.Severity{
		"sev0": domain.SeverityCritical, "sev1": domain.SeverityHigh, "sev2": domain.SeverityMedium, "sev3": domain.SeverityLow, "sev4": domain.SeverityInformational,
	}
	// Splunk: ES urgency words, and 1-5 for searches that compute a
	// numeric severity (1 lowest).
	splunkSeverities = map[string]domain.Severity{
		"1": domain.SeverityInformational, "2": domain.SeverityLow, "3": domain.SeverityMedium, "4": domain.SeverityHigh, "5": domain.SeverityCritical,
	}
	// Alertmanager: the usual severity label values of Prometheus rules.
	alertmanagerSeverities = map[string]domain.Severity{
		"none": domain.SeverityInformational, "debug": domain.SeverityInformational, "notice": domain.SeverityLow,
		"minor": domain.SeverityMedium, "warning": domain.SeverityMedium, "warn": domain.SeverityMedium,
		"major": domain.SeverityHigh, "error": domain.SeverityHigh,
		"page": domain.SeverityCritical, "emergency": domain.SeverityCritical, "fatal": domain.SeverityCritical,
	}
)

func normSeverity(table map[string]domain.Severity, word string) domain.Severity {
	w := strings.ToLower(strings.TrimSpace(word))
	if s, ok := table[w]; ok {
		return s
	}
	if s, ok := commonSeverities[w]; ok {
		return s
	}
	return domain.SeverityInformational
}
