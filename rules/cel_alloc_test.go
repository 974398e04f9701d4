package rules

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/ext"

	"github.com/scanhook/scanhook/internal/alert"
)

// These tests bound what scanhook adds to cel-go, not what cel-go
// allocates: each measures, in the same run, plain cel-go evaluating the
// same expressions against values built beforehand (reading them costs
// nothing), and allows Evaluate only that plus scanhook's own allocations.
// A cel-go release that allocates more or less per evaluation moves both
// counts alike.

// maxCELEvalAllocs bounds what scanhook's Evaluate allocates beyond cel-go
// for the benchmark's alert (one device) against rules that use CEL: the
// decisions and their device copy (1), the reason and the comment (2), the
// CEL state (1), alert.tags as a list with its two elements (3) and
// device.dns_name (1).
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
		src := benchRules(100, celEvery)
		rs := mustLoad(t, src)
		if d := rs.Evaluate(a); d[0].Rule != "last" {
			t.Fatalf("celEvery %d: want the last rule to match, got %+v", celEvery, d)
		}
		got := testing.AllocsPerRun(200, func() { rs.Evaluate(a) })
		base := plainCELAllocs(t, whens(t, src), a, 200)
		t.Logf("rules with a when every %d: Evaluate %.1f allocations, plain cel-go %.1f", celEvery, got, base)
		if got > base+maxCELEvalAllocs {
			t.Errorf("rules with a when every %d: Evaluate allocates %.1f times, plain cel-go %.1f: scanhook adds %.1f, want at most %d",
				celEvery, got, base, got-base, maxCELEvalAllocs)
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
	base := plainCELAllocs(t, whens(t, src.String()), a, 100)
	// The decision (1), the CEL state (1); 7 string fields (severity_rank
	// is a small int, boxed for free), two lists of two strings (6), the
	// list of devices (1) and the device's id and dns_name (2).
	const want = 1 + 1 + 7 + 6 + 1 + 2
	t.Logf("Evaluate %.1f allocations, plain cel-go %.1f", got, base)
	if got > base+want {
		t.Errorf("Evaluate allocates %.1f times, plain cel-go %.1f: scanhook adds %.1f, want at most %d", got, base, got-base, want)
	}
}

// whens are the `when` expressions of a rules file, in order (quoted on
// one line, as the tests write them).
func whens(t *testing.T, src string) []string {
	t.Helper()
	var out []string
	for _, m := range whenLine.FindAllStringSubmatch(src, -1) {
		out = append(out, m[2])
	}
	if len(out) == 0 {
		t.Fatal("no when expressions")
	}
	return out
}

var whenLine = regexp.MustCompile(`(?m)^\s+when: (['"])(.*)['"]$`)

// plainCELAllocs is what cel-go alone allocates evaluating exprs, as
// Evaluate would for a (every expression, for its first device), with
// the alert and device given as maps of values built before the count:
// the same expressions and evaluation options as scanhook's, none of
// scanhook's activation.
func plainCELAllocs(t *testing.T, exprs []string, a *alert.Alert, runs int) float64 {
	t.Helper()
	env, err := cel.NewEnv(
		cel.Variable("alert", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("device", cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
	)
	if err != nil {
		t.Fatal(err)
	}
	var prgs []cel.Program
	for _, e := range exprs {
		ast, iss := env.Compile(e)
		if iss.Err() != nil {
			t.Fatalf("plain cel-go: %s: %v", e, iss.Err())
		}
		prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			t.Fatal(err)
		}
		prgs = append(prgs, prg)
	}
	reg := types.DefaultTypeAdapter
	strs := func(ss []string) ref.Val {
		vs := make([]ref.Val, len(ss))
		for i, s := range ss {
			vs[i] = types.String(s)
		}
		return types.NewRefValList(reg, vs)
	}
	obj := func(m map[string]ref.Val) ref.Val {
		mv := make(map[ref.Val]ref.Val, len(m))
		for k, v := range m {
			mv[types.String(k)] = v
		}
		return types.NewRefValMap(reg, mv)
	}
	devs := make([]ref.Val, len(a.Devices))
	for i, d := range a.Devices {
		devs[i] = obj(map[string]ref.Val{"id": types.String(d.ID), "dns_name": types.String(d.DNSName), "aad_device_id": types.String(d.AADDeviceID)})
	}
	vars := map[string]any{
		"alert": obj(map[string]ref.Val{
			"id": types.String(a.ID), "source": types.String(a.Source), "severity": types.String(string(a.Severity)),
			"severity_rank": types.Int(a.Severity.Rank()), "title": types.String(a.Title), "description": types.String(a.Description),
			"category": types.String(a.Category), "detection_source": types.String(a.DetectionSource),
			"threat_family": types.String(a.ThreatFamily), "status": types.String(a.Status),
			"mitre_techniques": strs(a.MitreTechniques), "tags": strs(a.Tags), "tenant_id": types.String(a.TenantID),
			"url": types.String(a.URL), "devices": types.NewRefValList(reg, devs),
		}),
		"device": devs[0],
	}
	act, err := cel.NewActivation(vars)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range prgs {
		if _, _, err := p.Eval(act); err != nil {
			t.Fatalf("plain cel-go: %v", err)
		}
	}
	return testing.AllocsPerRun(runs, func() {
		for _, p := range prgs {
			_, _, _ = p.Eval(act)
		}
	})
}
