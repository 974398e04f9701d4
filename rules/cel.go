package rules

import (
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/overloads"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/ext"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// celAlert declares what a `when` expression sees as `alert` (at runtime
// it is a celAlertObj, see cel_values.go); severity_rank saves expressions
// from spelling out lists of severities (informational 0, low 1, medium 2,
// high 3, critical 4, -1 when unknown).
type celAlert struct {
	ID              string      `cel:"id"`
	Source          string      `cel:"source"`
	Severity        string      `cel:"severity"`
	SeverityRank    int64       `cel:"severity_rank"`
	Title           string      `cel:"title"`
	Description     string      `cel:"description"`
	Category        string      `cel:"category"`
	DetectionSource string      `cel:"detection_source"`
	ThreatFamily    string      `cel:"threat_family"`
	Status          string      `cel:"status"`
	MitreTechniques []string    `cel:"mitre_techniques"`
	Tags            []string    `cel:"tags"`
	TenantID        string      `cel:"tenant_id"`
	URL             string      `cel:"url"`
	Devices         []celDevice `cel:"devices"`
}

// celDevice is what a `when` expression sees as `device` (and as the items
// of alert.devices).
type celDevice struct {
	ID          string `cel:"id"`
	DNSName     string `cel:"dns_name"`
	AADDeviceID string `cel:"aad_device_id"`
}

// Expressions are the operator's, but the lists and strings they read
// come from alerts. Rather than tracking cost at every evaluation (which
// triples its price), an expression's worst case is estimated at load with
// the largest value each field can hold (internal/alert caps them), and
// refused above maxCELCost: one loop over alert.tags (even lowering each
// tag) passes, as does comparing every tag with every tag; searching the
// description once per tag does not. Only an
// expression whose estimate is above celTrackCost runs with a runtime cost
// limit as well (celRuntimeCostLimit), so that an estimate that turns out
// low ends the evaluation with an error rather than stalling the request.
const (
	maxCELCost          = 500_000
	celTrackCost        = 10_000
	celRuntimeCostLimit = maxCELCost
)

// celFieldSizes is the largest size of each alert and device field, by
// its CEL path. A string's size counts code points, of which a field holds
// at most as many as its cap in bytes.
var celFieldSizes = map[string]uint64{
	"alert.id":                           alert.MaxIDLen,
	"alert.source":                       alert.MaxFieldLen,
	"alert.severity":                     alert.MaxFieldLen,
	"alert.title":                        alert.MaxTitleLen,
	"alert.description":                  alert.MaxDescriptionLen,
	"alert.category":                     alert.MaxFieldLen,
	"alert.detection_source":             alert.MaxFieldLen,
	"alert.threat_family":                alert.MaxFieldLen,
	"alert.status":                       alert.MaxFieldLen,
	"alert.mitre_techniques":             alert.MaxListLen,
	"alert.mitre_techniques.@items":      alert.MaxFieldLen,
	"alert.tags":                         alert.MaxListLen,
	"alert.tags.@items":                  alert.MaxFieldLen,
	"alert.tenant_id":                    alert.MaxFieldLen,
	"alert.url":                          alert.MaxURLLen,
	"alert.devices":                      alert.MaxDevicesPerAlert,
	"alert.devices.@items.id":            celDeviceFieldLen,
	"alert.devices.@items.dns_name":      celDeviceFieldLen,
	"alert.devices.@items.aad_device_id": celDeviceFieldLen,
	"device.id":                          celDeviceFieldLen,
	"device.dns_name":                    celDeviceFieldLen,
	"device.aad_device_id":               celDeviceFieldLen,
}

// celDeviceFieldLen bounds a device's id (40), DNS name (253) and Azure AD
// device id (36), all checked by internal/alert.
const celDeviceFieldLen = 253

// celStringHint and celListHint size what has no path (the result of a
// function CEL has no size model for): the longest field, the longest list.
const (
	celStringHint = alert.MaxDescriptionLen
	celListHint   = alert.MaxDevicesPerAlert
)

type celEstimator struct{}

func (celEstimator) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

func (celEstimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	if p := n.Path(); len(p) > 0 {
		if size, ok := celFieldSizes[strings.Join(p, ".")]; ok {
			return &cost.SizeEstimate{Min: 0, Max: size}
		}
	}
	if n.Type() != nil && n.Type().Kind() == types.ListKind {
		return &cost.SizeEstimate{Min: 0, Max: celListHint}
	}
	return &cost.SizeEstimate{Min: 0, Max: celStringHint}
}

// newCELEnv builds the environment every `when` is checked in. It is built
// per Load (no package state) and is cheap next to compiling the rules. Its
// type adapter is a *celTypes, which Evaluate relies on.
func newCELEnv() (*cel.Env, error) {
	return cel.NewEnv(
		ext.NativeTypes(
			types.ParseStructTags(true),
			types.NativeTypeFor[celAlert](types.NativeTypeAlias("scanhook.Alert")),
			types.NativeTypeFor[celDevice](types.NativeTypeAlias("scanhook.Device")),
		),
		celFastObjects(),
		cel.Variable("alert", cel.ObjectType("scanhook.Alert")),
		cel.Variable("device", cel.ObjectType("scanhook.Device")),
		ext.Strings(),
		cel.Function("severity_rank",
			cel.Overload("severity_rank_string", []*cel.Type{cel.StringType}, cel.IntType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, ok := v.(types.String)
					if !ok {
						return types.NewErr("severity_rank: want a string, got %s", v.Type().TypeName())
					}
					return types.Int(domain.Severity(strings.ToLower(string(s))).Rank())
				}))),
	)
}

// compileWhen type-checks expr and returns its program, or a message that
// names what is wrong (CEL's own words, without its ASCII-art snippet).
// Programs whose estimated worst case is above celTrackCost stop at
// runtimeLimit.
func compileWhen(env *cel.Env, rule, expr string, runtimeLimit uint64) (cel.Program, string) {
	if strings.TrimSpace(expr) == "" {
		return nil, "when: expression is empty"
	}
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		var msgs []string
		for _, e := range iss.Errors() {
			loc := e.Location
			m := e.Message
			if loc != nil && loc.Line() > 0 {
				m = fmt.Sprintf("%s (expression line %d, column %d)", m, loc.Line(), loc.Column()+1)
			}
			msgs = append(msgs, m)
		}
		return nil, "when: " + strings.Join(msgs, "; ")
	}
	if msg := checkRegexPatterns(ast, rule); msg != "" {
		return nil, msg
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Sprintf("when: expression must return bool, not %s", ast.OutputType())
	}
	est, err := env.EstimateCost(ast, celEstimator{})
	if err != nil {
		return nil, "when: " + err.Error()
	}
	if est.Max > maxCELCost {
		return nil, fmt.Sprintf("when: expression too expensive (estimated worst case %d, limit %d); avoid loops nested in loops over alert lists", est.Max, maxCELCost)
	}
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	if est.Max > celTrackCost {
		opts = append(opts, cel.CostLimit(runtimeLimit))
	}
	prg, err := env.Program(ast, opts...)
	if err != nil {
		return nil, "when: " + err.Error()
	}
	return prg, ""
}

// checkRegexPatterns refuses matches() with a pattern that is not a string
// literal: a pattern taken from the alert (alert.description.matches(
// alert.title)) is compiled on every evaluation, at a price the cost
// estimate does not see, and lets the sender choose it. A literal pattern
// is compiled once, when the program is built.
func checkRegexPatterns(checked *cel.Ast, rule string) string {
	native := checked.NativeRep()
	var msg string
	celast.PreOrderVisit(native.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if msg != "" || e.Kind() != celast.CallKind {
			return
		}
		call := e.AsCall()
		if call.FunctionName() != overloads.Matches {
			return
		}
		args := call.Args()
		pattern := 1 // matches(text, pattern)
		if call.IsMemberFunction() {
			pattern = 0 // text.matches(pattern)
		}
		if pattern >= len(args) {
			return
		}
		p := args[pattern]
		if p.Kind() == celast.LiteralKind {
			if _, ok := p.AsLiteral().(types.String); ok {
				return
			}
		}
		msg = fmt.Sprintf("when: rule %q: matches() needs a constant pattern (a quoted string), not one computed from the alert", rule)
		if loc := native.SourceInfo().GetStartLocation(p.ID()); loc.Line() > 0 {
			msg += fmt.Sprintf(" (expression line %d, column %d)", loc.Line(), loc.Column()+1)
		}
	}))
	return msg
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
