package rules

import (
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/ext"

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

// Expressions are the operator's, but the lists they iterate come from
// alerts. Rather than tracking cost at every evaluation (which triples its
// price), an expression's worst case is estimated at load, assuming lists
// of up to celListHint elements and strings of up to celStringHint bytes,
// and refused above maxCELCost: one loop over alert.tags (even lowering
// each tag) passes, a loop nested in a loop over alert lists does not.
const (
	celListHint   = 100
	celStringHint = 1000
	maxCELCost    = 500_000
)

type celEstimator struct{}

func (celEstimator) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

func (celEstimator) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
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
func compileWhen(env *cel.Env, expr string) (cel.Program, string) {
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
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, "when: " + err.Error()
	}
	return prg, ""
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
