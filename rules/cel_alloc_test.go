package rules

import (
	"fmt"
	"strings"
	"testing"
)

// maxCELEvalAllocs bounds what Evaluate allocates for the benchmark's alert
// (one device) against rules that use CEL: the decisions and their device
// copy (1), the reason and the comment (2), the CEL state (1), alert.tags
// as a list with its two elements (3) and device.dns_name (1).
const maxCELEvalAllocs = 8

// TestEvaluateWithCELAllocs fails when evaluating `when` expressions starts
// allocating per rule again (it used to cost about four allocations per
// CEL rule: a fresh list of tags, each tag boxed on every iteration, and
// reflection on every field access).
func TestEvaluateWithCELAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	a := benchAlert()
	for _, celEvery := range []int{10, 2, 1} {
		rs := mustLoad(t, benchRules(100, celEvery))
		if d := rs.Evaluate(a); d[0].Rule != "last" {
			t.Fatalf("celEvery %d: want the last rule to match, got %+v", celEvery, d)
		}
		got := testing.AllocsPerRun(200, func() { rs.Evaluate(a) })
		if got > maxCELEvalAllocs {
			t.Errorf("rules with a when every %d: Evaluate allocates %.1f times, want at most %d", celEvery, got, maxCELEvalAllocs)
		}
	}
}

// TestEvaluateCELFieldValuesShared checks that expressions reading every
// field of alert and device, over and over, still allocate once per field
// (and list element) per Evaluate, not once per read.
func TestEvaluateCELFieldValuesShared(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	const when = `alert.id != '' && alert.source != '' && alert.severity != '' && alert.severity_rank >= 0 && alert.title != '' && alert.category != '' && alert.tenant_id != '' && alert.url != '' && !alert.tags.exists(t, t == 'x') && alert.mitre_techniques.all(m, m != 'x') && !alert.devices.exists(d, d.dns_name == 'x' || d.id == 'x') && device.id != 'x' && alert.title == 'never'`
	var src strings.Builder
	src.WriteString("rules:\n")
	for i := range 20 {
		fmt.Fprintf(&src, "  - name: r%d\n    when: \"%s\"\n    scan: Quick\n", i, when)
	}
	rs := mustLoad(t, src.String())
	a := sampleAlert()
	if d := rs.Evaluate(a); d[0].Rule != "" {
		t.Fatalf("want no rule to match, got %+v", d)
	}
	got := testing.AllocsPerRun(100, func() { rs.Evaluate(a) })
	// The decision (1), the CEL state (1); 7 string fields (severity_rank
	// is a small int, boxed for free), two lists of two strings (6), the
	// list of devices (1) and the device's id and dns_name (2).
	const want = 1 + 1 + 7 + 6 + 1 + 2
	t.Logf("%.1f allocations", got)
	if got > want {
		t.Errorf("Evaluate allocates %.1f times, want at most %d", got, want)
	}
}
