// Package rules owns scanhook's rule engine: it loads a YAML rule file
// (strictly, reporting every problem as FILE:LINE:COL) and turns a
// normalized alert into one Decision per device: which rule matched, which
// scan to ask for, the comment Defender shows, and why.
//
// It is pure: no storage, no HTTP, no Defender. A Ruleset is immutable
// after Load and safe for concurrent use.
package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"go.yaml.in/yaml/v3"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/yamlpos"
)

// scanSetting is a rule's `scan:` as written: exactly Quick, Full or none
// (domain.Scans), with a near miss ("full", "quik") named in the error.
type scanSetting string

// UnmarshalYAMLPos implements yamlpos.Unmarshaler.
func (s *scanSetting) UnmarshalYAMLPos(n *yaml.Node, file string) yamlpos.ErrorList {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return yamlpos.ErrorList{yamlpos.At(file, n, "scan must be Quick, Full or none, got %s", yamlpos.Describe(n))}
	}
	if slices.Contains(domain.Scans(), n.Value) {
		*s = scanSetting(n.Value)
		return nil
	}
	if sug := yamlpos.Suggest(n.Value, domain.Scans()); sug != "" {
		return yamlpos.ErrorList{yamlpos.At(file, n, "scan %q is not valid (did you mean %q?); use Quick, Full or none", n.Value, sug)}
	}
	return yamlpos.ErrorList{yamlpos.At(file, n, "scan %q is not valid; use Quick, Full or none", n.Value)}
}

// Options tune Load.
type Options struct {
	// MaxCommentLen caps a rendered comment, in runes (0 means 1000).
	MaxCommentLen int
	// WhenFailed, when set, is told of every `when` evaluation that
	// failed: rule is the rule's name, costLimit whether it was stopped
	// by the runtime cost limit (otherwise it was a runtime error, such as
	// an index out of range). It is called from Evaluate, concurrently.
	WhenFailed func(rule string, costLimit bool)

	// celCostLimit replaces celRuntimeCostLimit when not 0 (tests).
	celCostLimit uint64
}

// DefaultMaxCommentLen is the comment cap when Options.MaxCommentLen is 0.
const DefaultMaxCommentLen = 1000

// MaxRules bounds a rule file; every alert is evaluated against all of
// them in the worst case.
const MaxRules = 10_000

// maxLoadErrors stops checking a file that is clearly not a rule file.
const maxLoadErrors = 100

// DefaultCooldown applies when the file sets no defaults.cooldown.
const DefaultCooldown = 6 * time.Hour

// DefaultComment is the comment template when the file sets no
// defaults.comment. It reads well in Defender's action center: the alert
// as people know it (.Alert.Ref, such as "Sentinel incident #1042", rather
// than a long resource id), its title, severity, the rule and one link, as
// in `scanhook: Sentinel incident #1042 "Ransomware activity" (high)
// matched rule ransomware-full. https://portal.azure.com/...`.
const DefaultComment = `scanhook: {{.Alert.Ref}}{{with .Alert.Title}} "{{.}}"{{end}} ({{.Alert.Severity}}) matched rule {{.Rule}}.{{with .Alert.URL}} {{.}}{{end}}`

// Decision is what the rules say about one device of one alert.
type Decision struct {
	AlertID string
	Source  string
	// Device is nil when the alert has no usable device, and for the
	// decisions that explain a dropped device.
	Device *alert.Device
	// Rule is the matching rule's name; "" when none matched or the alert
	// was skipped.
	Rule string
	Scan string // domain.ScanQuick, ScanFull or ScanNone
	// Comment is the rendered comment for Defender (control characters
	// stripped, capped); "" when Scan is none.
	Comment string
	// Reason explains the decision to a human.
	Reason string
	// Cooldown and DryRun come from the matching rule (or the defaults);
	// they are zero when Scan is none.
	Cooldown time.Duration
	DryRun   bool
}

// Ruleset is a loaded rule file.
type Ruleset struct {
	rules       []*rule
	digest      string
	maxComment  int
	usesCEL     bool
	rawPaths    [][]string // the distinct raw.<path>s, indexed by cond.raw
	defaultTmpl *commentTmpl
	builtinTmpl *commentTmpl
	adapter     types.Adapter
	// whenFailed is Options.WhenFailed; celCostLimit is what a costly
	// `when` may spend at runtime.
	whenFailed   func(rule string, costLimit bool)
	celCostLimit uint64
}

type rule struct {
	name     string
	conds    []cond
	when     cel.Program
	whenText string
	// whenQuoted is whenText as a reason quotes it, computed at load.
	whenQuoted string
	scan       string
	comment    *commentTmpl
	cooldown   time.Duration
	dryRun     bool
}

// Len reports how many rules the set holds.
func (rs *Ruleset) Len() int { return len(rs.rules) }

// Digest is the hex sha256 of the rule file's bytes, so that operators can
// tell which version of the rules a replica runs.
func (rs *Ruleset) Digest() string { return rs.digest }

// Names lists the rule names in evaluation order.
func (rs *Ruleset) Names() []string {
	out := make([]string, len(rs.rules))
	for i, r := range rs.rules {
		out[i] = r.name
	}
	return out
}

// LoadFile reads and loads a rule file.
func LoadFile(path string, opts Options) (*Ruleset, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	return Load(path, data, opts)
}

type fileSpec struct {
	Defaults defaultsSpec            `yaml:"defaults"`
	Rules    yamlpos.Pos[[]ruleSpec] `yaml:"rules"`
}

type defaultsSpec struct {
	Cooldown yamlpos.Pos[time.Duration] `yaml:"cooldown"`
	Comment  yamlpos.Pos[string]        `yaml:"comment"`
	DryRun   bool                       `yaml:"dry_run"`
}

type ruleSpec struct {
	Name     yamlpos.Pos[string]        `yaml:"name"`
	Match    *yaml.Node                 `yaml:"match"`
	When     yamlpos.Pos[string]        `yaml:"when"`
	Scan     yamlpos.Pos[scanSetting]   `yaml:"scan"`
	Comment  yamlpos.Pos[string]        `yaml:"comment"`
	Cooldown yamlpos.Pos[time.Duration] `yaml:"cooldown"`
	DryRun   *bool                      `yaml:"dry_run"`
}

// Load parses and checks a rule file. On failure the error is a
// yamlpos.ErrorList holding every problem found, each with its position.
func Load(filename string, data []byte, opts Options) (*Ruleset, error) {
	sum := sha256.Sum256(data)
	rs := &Ruleset{digest: hex.EncodeToString(sum[:]), maxComment: opts.MaxCommentLen,
		whenFailed: opts.WhenFailed, celCostLimit: opts.celCostLimit}
	if rs.celCostLimit == 0 {
		rs.celCostLimit = celRuntimeCostLimit
	}
	if rs.maxComment <= 0 {
		rs.maxComment = DefaultMaxCommentLen
	}
	root, errs := yamlpos.Parse(filename, data)
	if errs != nil {
		return nil, errs.Err()
	}
	var spec fileSpec
	errs = yamlpos.Decode(filename, root, &spec)
	l := &loader{file: filename, errs: errs, rs: rs, rawIndex: map[string]int{}}

	defCooldown := DefaultCooldown
	if spec.Defaults.Cooldown.Set() {
		defCooldown = spec.Defaults.Cooldown.V
		l.checkCooldown(spec.Defaults.Cooldown)
	}
	defText := DefaultComment
	defNode := spec.Defaults.Comment.Node
	if spec.Defaults.Comment.Set() {
		defText = spec.Defaults.Comment.V
	}
	rs.defaultTmpl = l.template("defaults.comment", defText, defNode)
	rs.builtinTmpl = newCommentTmpl(template.Must(template.New("builtin").Parse(DefaultComment)))

	if !spec.Rules.Set() {
		if !hasKey(root, "rules") {
			l.errorf(root, "missing rules: a rule file needs a list of rules")
		} else {
			l.errorf(keyValue(root, "rules"), "rules: the list is empty; add at least one rule")
		}
	} else if len(spec.Rules.V) == 0 && spec.Rules.Node.Kind == yaml.SequenceNode {
		l.errorf(spec.Rules.Node, "rules: the list is empty; add at least one rule")
	}

	env, err := newCELEnv()
	if err != nil {
		// The environment is fixed by this package; failing here is a bug.
		return nil, fmt.Errorf("rules: build CEL environment: %w", err)
	}
	rs.adapter = env.CELTypeAdapter()
	names := map[string]*yaml.Node{}
	var catchAll *rule
	var catchAllNode *yaml.Node
	if n := len(spec.Rules.V); n > MaxRules {
		l.errorf(spec.Rules.Node, "rules: %d rules, more than the %d allowed", n, MaxRules)
		return nil, l.errs.Err()
	}
	for i := range spec.Rules.V {
		if len(l.errs) >= maxLoadErrors {
			// Placed after every other problem, so that it reads last.
			last := &yamlpos.Error{File: l.file, Line: 1, Col: 1, Msg: "too many errors; stopping here"}
			for _, e := range l.errs {
				if e.Line > last.Line || (e.Line == last.Line && e.Col > last.Col) {
					last.Line, last.Col = e.Line, e.Col
				}
			}
			l.errs = append(l.errs, last)
			break
		}
		rsp := &spec.Rules.V[i]
		var node *yaml.Node
		if spec.Rules.Node != nil && i < len(spec.Rules.Node.Content) {
			node = deref(spec.Rules.Node.Content[i])
		}
		r := l.rule(env, rsp, node, names, defCooldown, spec.Defaults.DryRun)
		if r == nil {
			continue
		}
		if catchAll != nil {
			l.errorf(node, "rule %q can never match: rule %q (line %d) before it matches every alert", r.name, catchAll.name, catchAllNode.Line)
		}
		if catchAll == nil && len(r.conds) == 0 && r.when == nil {
			catchAll, catchAllNode = r, node
		}
		rs.rules = append(rs.rules, r)
	}
	if len(rs.rules) == 0 && len(l.errs) == 0 {
		// Unreachable by construction; kept so that Load never returns an
		// empty Ruleset without saying why.
		l.errorf(root, "no usable rules")
	}
	if err := l.errs.Err(); err != nil {
		return nil, err
	}
	return rs, nil
}

type loader struct {
	file     string
	errs     yamlpos.ErrorList
	rs       *Ruleset
	rawIndex map[string]int
	// matcherNodes counts compiled conditions, see maxMatcherNodes.
	matcherNodes int
}

func (l *loader) errorf(n *yaml.Node, format string, args ...any) {
	l.errs = append(l.errs, yamlpos.At(l.file, n, format, args...))
}

func (l *loader) checkCooldown(p yamlpos.Pos[time.Duration]) {
	if p.V < 0 {
		l.errorf(p.Node, "cooldown must not be negative, got %s", p.V)
	}
}

func hasKey(m *yaml.Node, key string) bool { return keyNode(m, key) != nil }

func keyNode(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i]
		}
	}
	return nil
}

func keyValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return m
}

// rule checks one rule spec; it returns nil when the rule is unusable (its
// problems are recorded) so that later rules are still checked.
func (l *loader) rule(env *cel.Env, sp *ruleSpec, node *yaml.Node, names map[string]*yaml.Node, defCooldown time.Duration, defDryRun bool) *rule {
	before := len(l.errs)
	if node != nil && node.Kind == yaml.ScalarNode && node.ShortTag() == "!!null" {
		l.errorf(node, "empty rule; a rule needs at least a name and a scan")
		return nil
	}
	if node != nil && node.Kind != yaml.MappingNode {
		// yamlpos already reported the wrong type.
		return nil
	}
	r := &rule{name: strings.TrimSpace(sp.Name.V), cooldown: defCooldown, dryRun: defDryRun}
	switch {
	case !sp.Name.Set() || r.name == "":
		l.errorf(node, "rule has no name; every rule needs a unique name")
	case len([]rune(r.name)) > 100:
		l.errorf(sp.Name.Node, "rule name is longer than 100 characters")
	default:
		if first, dup := names[strings.ToLower(r.name)]; dup {
			l.errorf(sp.Name.Node, "duplicate rule name %q (first at line %d)", r.name, first.Line)
		} else {
			names[strings.ToLower(r.name)] = sp.Name.Node
		}
	}
	if !sp.Scan.Set() {
		if !hasKey(node, "scan") {
			l.errorf(node, "rule %q has no scan; use Quick, Full or none", r.name)
		}
	} else {
		r.scan = string(sp.Scan.V)
	}
	if sp.Match != nil {
		r.conds = l.match(sp.Match)
	}
	if sp.When.Set() {
		prg, msg := compileWhen(env, r.name, sp.When.V, l.rs.celCostLimit)
		if msg != "" {
			l.errorf(sp.When.Node, "%s", msg)
		} else {
			r.when, r.whenText = prg, sp.When.V
			r.whenQuoted = strconv.Quote(sp.When.V)
			l.rs.usesCEL = true
		}
	}
	if sp.Comment.Set() {
		r.comment = l.template("comment", sp.Comment.V, sp.Comment.Node)
	}
	if sp.Cooldown.Set() {
		l.checkCooldown(sp.Cooldown)
		r.cooldown = sp.Cooldown.V
	}
	if sp.DryRun != nil {
		r.dryRun = *sp.DryRun
	}
	if len(l.errs) != before {
		return nil
	}
	return r
}

// template parses a comment template and runs it once against a sample
// alert, so a misspelt field is a load error rather than a failed scan.
func (l *loader) template(what, text string, n *yaml.Node) *commentTmpl {
	t, err := template.New(what).Option("missingkey=error").Parse(text)
	if err != nil {
		l.errorf(n, "%s: bad template: %s", what, trimTemplateErr(err))
		return nil
	}
	ct := newCommentTmpl(t)
	var sb strings.Builder
	if err := t.Execute(&limitWriter{w: &sb, n: 4 * l.rs.maxComment * utf8.UTFMax}, sampleData()); err != nil && !errors.Is(err, errCommentFull) {
		l.errorf(n, "%s: template fails: %s", what, trimTemplateErr(err))
		return nil
	}
	return ct
}

func trimTemplateErr(err error) string {
	s := err.Error()
	return strings.TrimPrefix(s, "template: ")
}
