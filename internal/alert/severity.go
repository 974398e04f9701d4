package alert

import "strings"

// Severity words per source (lower-cased), from the table in sources.md.
// Every source also understands the five normalized names themselves;
// anything unrecognized is informational (it is still recorded and explained,
// and rules can still match it through raw.<path>).
var (
	commonSeverities = map[string]Severity{
		"informational": Informational, "info": Informational,
		"low": Low, "medium": Medium, "high": High, "critical": Critical,
	}
	defenderSeverities = map[string]Severity{"unspecified": Informational}
	graphSeverities    = map[string]Severity{"unknown": Informational}
	azureSeverities    = map[string]Severity{
		"sev0": Critical, "sev1": High, "sev2": Medium, "sev3": Low, "sev4": Informational,
	}
	// Splunk: ES urgency words, and 1-5 for searches that compute a
	// numeric severity (1 lowest).
	splunkSeverities = map[string]Severity{
		"1": Informational, "2": Low, "3": Medium, "4": High, "5": Critical,
	}
	// Alertmanager: the usual severity label values of Prometheus rules.
	alertmanagerSeverities = map[string]Severity{
		"none": Informational, "debug": Informational, "notice": Low,
		"minor": Medium, "warning": Medium, "warn": Medium,
		"major": High, "error": High,
		"page": Critical, "emergency": Critical, "fatal": Critical,
	}
)

func normSeverity(table map[string]Severity, word string) Severity {
	w := strings.ToLower(strings.TrimSpace(word))
	if s, ok := table[w]; ok {
		return s
	}
	if s, ok := commonSeverities[w]; ok {
		return s
	}
	return Informational
}
