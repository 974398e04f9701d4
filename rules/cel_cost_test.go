package rules

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestWhenCostLimitIsADecisionError checks that a `when` stopped by the
// runtime cost limit is a failed evaluation: the rule does not match, the
// decision's reason says why (even when a later rule matches) and
// Options.WhenFailed hears of it.
func TestWhenCostLimitIsADecisionError(t *testing.T) {
	var mu sync.Mutex
	var failed []string
	opts := Options{
		WhenFailed: func(rule string, costLimit bool) {
			mu.Lock()
			defer mu.Unlock()
			failed = append(failed, fmt.Sprintf("%s %v", rule, costLimit))
		},
		// Low enough for a dozen tags; the expression's estimate is above
		// celTrackCost, so it runs with the limit.
		celCostLimit: 50,
	}
	rs, err := Load("t.yaml", []byte(`rules:
  - name: costly
    when: 'alert.tags.exists(t, t.lowerAscii() == "never")'
    scan: Full
  - name: fallback
    scan: Quick
`), opts)
	if err != nil {
		t.Fatal(err)
	}
	a := sampleAlert()
	for i := range 30 {
		a.Tags = append(a.Tags, fmt.Sprintf("Tag-%d", i))
	}
	d := rs.Evaluate(a)[0]
	if d.Rule != "fallback" {
		t.Fatalf("want the fallback rule to match, got %+v", d)
	}
	if want := `rule "costly": when failed: stopped at the cost limit (50) for this alert`; !strings.Contains(d.Reason, want) {
		t.Errorf("reason %q does not contain %q", d.Reason, want)
	}
	if got := strings.Join(failed, ","); got != "costly true" {
		t.Errorf("WhenFailed calls: %q, want %q", got, "costly true")
	}

	// A short list stays under the limit.
	failed = nil
	a.Tags = []string{"a"}
	if d := rs.Evaluate(a)[0]; d.Rule != "fallback" || strings.Contains(d.Reason, "when failed") || len(failed) != 0 {
		t.Errorf("short list: %+v, WhenFailed calls %q", d, failed)
	}
}

// TestWhenRuntimeErrorReported checks that other runtime errors reach
// WhenFailed too, as not a cost limit.
func TestWhenRuntimeErrorReported(t *testing.T) {
	var got []string
	rs, err := Load("t.yaml", []byte("rules:\n  - name: r\n    when: 'alert.tags[5] == \"x\"'\n    scan: Full\n"),
		Options{WhenFailed: func(rule string, costLimit bool) { got = append(got, fmt.Sprintf("%s %v", rule, costLimit)) }})
	if err != nil {
		t.Fatal(err)
	}
	rs.Evaluate(sampleAlert())
	if strings.Join(got, ",") != "r false" {
		t.Errorf("WhenFailed calls %q, want [r false]", got)
	}
}

// TestCheapWhenIsNotTracked pins that the usual expressions run without a
// cost tracker (it costs allocations per evaluation, see
// cel_alloc_test.go): their estimated worst case stays under celTrackCost.
func TestCheapWhenIsNotTracked(t *testing.T) {
	env, err := newCELEnv()
	if err != nil {
		t.Fatal(err)
	}
	for _, expr := range []string{
		`alert.severity_rank >= 3 && alert.tags.exists(t, t == "nope-1")`,
		`alert.tags.exists(t, t == "crown-jewel") && device.dns_name.endsWith(".corp.example")`,
		`alert.title.matches("(?i)ransom")`,
	} {
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatal(iss.Err())
		}
		est, err := env.EstimateCost(ast, celEstimator{})
		if err != nil {
			t.Fatal(err)
		}
		if est.Max > celTrackCost {
			t.Errorf("%s: estimated %d, above celTrackCost %d", expr, est.Max, celTrackCost)
		}
	}
}
