package rules

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/yamlpos"
)

// field is a matchable alert field.
type field int

const (
	fSource field = iota
	fSeverity
	fTitle
	fCategory
	fDetectionSource
	fThreatFamily
	fStatus
	fMitreTechniques
	fTags
	fTenantID
	fDeviceDNSName
	fDeviceID
	fRaw
)

// fieldNames are the keys `match` accepts (raw.<path> aside).
var fieldNames = []string{
	fSource: "source", fSeverity: "severity", fTitle: "title", fCategory: "category",
	fDetectionSource: "detection_source", fThreatFamily: "threat_family", fStatus: "status",
	fMitreTechniques: "mitre_techniques", fTags: "tags", fTenantID: "tenant_id",
	fDeviceDNSName: "device.dns_name", fDeviceID: "device.id",
}

var operators = []string{"regex", "glob", "not", "gte", "lte"}

// values is the text of one field for one evaluation: a single value or,
// for list fields (and raw paths), any number. A leaf matcher holds when
// any of the values satisfies it; `not` negates the whole test, so
// `tags: {not: x}` means "has no tag x".
type values struct {
	one    string
	many   []string
	isList bool
}

func (v values) any(f func(string) bool) bool {
	if !v.isList {
		return f(v.one)
	}
	for _, s := range v.many {
		if f(s) {
			return true
		}
	}
	return false
}

// write quotes the values into a reason: at most 8 elements, each clipped.
func (v values) write(b *strings.Builder) {
	if !v.isList {
		writeQuoted(b, v.one)
		return
	}
	b.WriteByte('[')
	for i, s := range v.many {
		if i == 8 {
			b.WriteString(" …")
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		writeQuoted(b, s)
	}
	b.WriteByte(']')
}

// writeQuoted writes s as strconv.Quote would, clipped to clipRunes,
// without intermediate strings when s is plain printable ASCII (the usual
// case).
func writeQuoted(b *strings.Builder, s string) {
	cut := len(s)
	if len(s) > clipRunes {
		cut = runeOffset(s, clipRunes)
	}
	for i := 0; i < cut; i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b.WriteString(strconv.Quote(clip(s)))
			return
		}
	}
	b.WriteByte('"')
	b.WriteString(s[:cut])
	if cut < len(s) {
		b.WriteString("…")
	}
	b.WriteByte('"')
}

// clipRunes is how much of an alert value a reason quotes.
const clipRunes = 80

// runeOffset is the byte offset of rune n of s (len(s) when s is shorter).
func runeOffset(s string, n int) int {
	for i := range s {
		if n == 0 {
			return i
		}
		n--
	}
	return len(s)
}

// clip shortens a value quoted in a reason; alert text can be long.
func clip(s string) string {
	if len(s) <= clipRunes {
		return s
	}
	if cut := runeOffset(s, clipRunes); cut < len(s) {
		return s[:cut] + "…"
	}
	return s
}

type matcher interface {
	match(v values) bool
	// describe says what the matcher tests, for reasons ("in [a b]").
	describe() string
}

type cond struct {
	field field
	name  string // the key as written, for reasons
	desc  string // m.describe(), computed at load
	raw   int    // index into Ruleset.rawPaths when field == fRaw
	m     matcher
	// sevMask has bit r set when the matcher holds for the normalized
	// severity of rank r; severity conditions are then one AND at
	// evaluation (the matcher still decides for a non-normalized value).
	sevMask uint8
	// in holds the values of a plain value-or-list condition on a
	// non-severity field (the common case), tested without going through
	// the matcher interface.
	in []string
}

type eqMatcher struct{ want string }

func (m eqMatcher) match(v values) bool {
	if !v.isList {
		return strings.EqualFold(v.one, m.want)
	}
	for _, s := range v.many {
		if strings.EqualFold(s, m.want) {
			return true
		}
	}
	return false
}
func (m eqMatcher) describe() string { return "= " + strconv.Quote(m.want) }

// inMatcher is a list of plain values, the common case, kept flat so that
// matching does not go through an interface per element.
type inMatcher struct{ wants []string }

func (m inMatcher) match(v values) bool {
	if !v.isList {
		return m.has(v.one)
	}
	for _, s := range v.many {
		if m.has(s) {
			return true
		}
	}
	return false
}

func (m inMatcher) has(s string) bool {
	for _, w := range m.wants {
		if strings.EqualFold(s, w) {
			return true
		}
	}
	return false
}
func (m inMatcher) describe() string { return "in [" + strings.Join(m.wants, " ") + "]" }

type anyMatcher struct{ ms []matcher }

func (m anyMatcher) match(v values) bool {
	for _, x := range m.ms {
		if x.match(v) {
			return true
		}
	}
	return false
}
func (m anyMatcher) describe() string {
	parts := make([]string, len(m.ms))
	for i, x := range m.ms {
		parts[i] = x.describe()
	}
	return "any of (" + strings.Join(parts, ", ") + ")"
}

type allMatcher struct{ ms []matcher }

func (m allMatcher) match(v values) bool {
	for _, x := range m.ms {
		if !x.match(v) {
			return false
		}
	}
	return true
}
func (m allMatcher) describe() string {
	parts := make([]string, len(m.ms))
	for i, x := range m.ms {
		parts[i] = x.describe()
	}
	return strings.Join(parts, " and ")
}

type regexMatcher struct {
	re   *regexp.Regexp
	text string
	op   string // "regex" or "glob", for reasons
}

func (m regexMatcher) match(v values) bool { return v.any(m.re.MatchString) }
func (m regexMatcher) describe() string {
	if m.op == "glob" {
		return "matches glob " + strconv.Quote(m.text)
	}
	return "matches /" + m.text + "/"
}

type notMatcher struct{ m matcher }

func (m notMatcher) match(v values) bool { return !m.m.match(v) }
func (m notMatcher) describe() string    { return "not " + m.m.describe() }

type rankMatcher struct {
	rank int
	gte  bool
	name domain.Severity
}

func (m rankMatcher) match(v values) bool {
	return v.any(func(s string) bool {
		r := domain.Severity(strings.ToLower(s)).Rank()
		if r < 0 {
			return false
		}
		if m.gte {
			return r >= m.rank
		}
		return r <= m.rank
	})
}
func (m rankMatcher) describe() string {
	if m.gte {
		return ">= " + string(m.name)
	}
	return "<= " + string(m.name)
}

// match compiles a rule's `match:` mapping.
func (l *loader) match(n *yaml.Node) []cond {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		l.errorf(n, "match must be a mapping of field: condition, got %s", yamlpos.Describe(n))
		return nil
	}
	var conds []cond
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			l.errorf(k, "match: field name must be a string, got %s", yamlpos.Describe(k))
			continue
		}
		key := k.Value
		if line, dup := seen[key]; dup {
			l.errorf(k, "match: duplicate key %q (first at line %d)", key, line)
			continue
		}
		seen[key] = k.Line
		c := cond{name: key, field: -1}
		if path, ok := strings.CutPrefix(key, "raw."); ok {
			segs := strings.Split(path, ".")
			bad := false
			for _, s := range segs {
				if s == "" {
					bad = true
				}
			}
			if bad {
				l.errorf(k, "match: %q is not a valid raw path; use raw.<key>.<key>, e.g. raw.properties.severity", key)
				continue
			}
			c.field = fRaw
			idx, ok := l.rawIndex[path]
			if !ok {
				idx = len(l.rs.rawPaths)
				l.rawIndex[path] = idx
				l.rs.rawPaths = append(l.rs.rawPaths, segs)
			}
			c.raw = idx
		} else {
			for f, name := range fieldNames {
				if name == key {
					c.field = field(f)
				}
			}
		}
		if c.field < 0 {
			msg := yamlpos.UnknownKey(key, fieldNames)
			if !strings.Contains(msg, "did you mean") {
				msg = fmt.Sprintf("match: unknown field %q (fields: %s, raw.<path>)", key, strings.Join(fieldNames, ", "))
			} else {
				msg = "match: " + strings.Replace(msg, "unknown key", "unknown field", 1)
			}
			l.errorf(k, "%s", msg)
			continue
		}
		shown := key
		if strings.IndexFunc(key, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
			// Keep problems one line each and free of terminal escapes.
			shown = strconv.Quote(key)
			c.name = shown
		}
		if m := l.matcher(c.field, shown, v, 0); m != nil {
			c.m, c.desc = m, m.describe()
			switch im := m.(type) {
			case inMatcher:
				c.in = im.wants
			case eqMatcher:
				c.in = []string{im.want}
			}
			if c.field == fSeverity {
				for r, sev := range domain.Severities() {
					if m.match(values{one: string(sev)}) {
						c.sevMask |= 1 << r
					}
				}
			}
			conds = append(conds, c)
		}
	}
	return conds
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// maxMatcherDepth stops a pathological `not: {not: {not: …}}` chain.
const maxMatcherDepth = 16

// maxMatcherNodes bounds the conditions of one file: aliases let a few
// lines describe a tree of conditions that grows exponentially.
const maxMatcherNodes = 10_000

func (l *loader) matcher(f field, key string, n *yaml.Node, depth int) matcher {
	n = deref(n)
	if depth > maxMatcherDepth {
		l.errorf(n, "match: %s: conditions nested too deeply", key)
		return nil
	}
	l.matcherNodes++
	if l.matcherNodes > maxMatcherNodes {
		if l.matcherNodes == maxMatcherNodes+1 {
			l.errorf(n, "match: %s: too many conditions in this file (more than %d)", key, maxMatcherNodes)
		}
		return nil
	}
	switch n.Kind {
	case yaml.ScalarNode:
		w, ok := l.scalar(f, key, n)
		if !ok {
			return nil
		}
		return eqMatcher{want: w}
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			l.errorf(n, "match: %s: empty list never matches", key)
			return nil
		}
		var wants []string
		var ms []matcher
		plain, ok := true, true
		for _, c := range n.Content {
			c = deref(c)
			if c.Kind == yaml.ScalarNode {
				w, good := l.scalar(f, key, c)
				ok = ok && good
				wants = append(wants, w)
				ms = append(ms, eqMatcher{want: w})
				continue
			}
			plain = false
			if c.Kind == yaml.SequenceNode {
				l.errorf(c, "match: %s: a list inside a list is not allowed", key)
				ok = false
				continue
			}
			m := l.matcher(f, key, c, depth+1)
			ok = ok && m != nil
			ms = append(ms, m)
		}
		if !ok {
			return nil
		}
		if plain {
			return inMatcher{wants: wants}
		}
		return anyMatcher{ms: ms}
	case yaml.MappingNode:
		return l.operators(f, key, n, depth)
	}
	l.errorf(n, "match: %s: unexpected %s", key, yamlpos.Describe(n))
	return nil
}

// scalar checks one plain value. Severities and sources come from fixed
// sets, so a value outside them can only be a typo.
func (l *loader) scalar(f field, key string, n *yaml.Node) (string, bool) {
	if n.ShortTag() == "!!null" {
		l.errorf(n, "match: %s: empty value; quote it (\"\") to match an empty field", key)
		return "", false
	}
	switch f {
	case fSeverity:
		s, ok := l.severity(key, n)
		return string(s), ok
	case fSource:
		for _, s := range domain.Sources() {
			if strings.EqualFold(s, n.Value) {
				return n.Value, true
			}
		}
		if sug := yamlpos.Suggest(n.Value, domain.Sources()); sug != "" {
			l.errorf(n, "match: source %q is not a source (did you mean %q?)", n.Value, sug)
		} else {
			l.errorf(n, "match: source %q is not a source; use one of %s", n.Value, strings.Join(domain.Sources(), ", "))
		}
		return "", false
	}
	return n.Value, true
}

func (l *loader) severity(key string, n *yaml.Node) (domain.Severity, bool) {
	if n.Kind != yaml.ScalarNode {
		l.errorf(n, "match: %s: expected a severity, got %s", key, yamlpos.Describe(n))
		return "", false
	}
	s := domain.Severity(strings.ToLower(n.Value))
	if s.Valid() {
		return s, true
	}
	names := make([]string, 0, 5)
	for _, v := range domain.Severities() {
		names = append(names, string(v))
	}
	if sug := yamlpos.Suggest(n.Value, names); sug != "" {
		l.errorf(n, "match: %q is not a severity (did you mean %q?)", n.Value, sug)
	} else {
		l.errorf(n, "match: %q is not a severity; use one of %s", n.Value, strings.Join(names, ", "))
	}
	return "", false
}

func (l *loader) operators(f field, key string, n *yaml.Node, depth int) matcher {
	if len(n.Content) == 0 {
		l.errorf(n, "match: %s: empty condition; use a value, a list, or one of %s", key, strings.Join(operators, ", "))
		return nil
	}
	var ms []matcher
	ok := true
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		op := k.Value
		if k.Kind != yaml.ScalarNode {
			l.errorf(k, "match: %s: operator must be a string", key)
			ok = false
			continue
		}
		if seen[op] {
			l.errorf(k, "match: %s: duplicate operator %q", key, op)
			ok = false
			continue
		}
		seen[op] = true
		var m matcher
		switch op {
		case "regex", "glob":
			if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
				l.errorf(v, "match: %s: %s needs a string pattern, got %s", key, op, yamlpos.Describe(v))
				break
			}
			var re *regexp.Regexp
			var err error
			if op == "regex" {
				re, err = regexp.Compile(v.Value)
			} else {
				re, err = compileGlob(v.Value)
			}
			if err != nil {
				l.errorf(v, "match: %s: bad %s %q: %s", key, op, clip(v.Value), strings.TrimPrefix(err.Error(), "error parsing regexp: "))
				break
			}
			m = regexMatcher{re: re, text: v.Value, op: op}
			if op == "glob" {
				m = simpleGlob(v.Value, m)
			}
		case "not":
			if inner := l.matcher(f, key, v, depth+1); inner != nil {
				m = notMatcher{m: inner}
			}
		case "gte", "lte":
			if f != fSeverity {
				l.errorf(k, "match: %s: %s only applies to severity", key, op)
				break
			}
			if s, good := l.severity(key, v); good {
				m = rankMatcher{rank: s.Rank(), gte: op == "gte", name: s}
			}
		default:
			if sug := yamlpos.Suggest(op, operators); sug != "" {
				l.errorf(k, "match: %s: unknown operator %q (did you mean %q?)", key, op, sug)
			} else {
				l.errorf(k, "match: %s: unknown operator %q; use a value, a list, or one of %s", key, op, strings.Join(operators, ", "))
			}
		}
		if m == nil {
			ok = false
			continue
		}
		ms = append(ms, m)
	}
	if !ok {
		return nil
	}
	if len(ms) == 1 {
		return ms[0]
	}
	return allMatcher{ms: ms}
}

// compileGlob turns a shell-style pattern (* any run, ? one character,
// [abc] / [a-z] / [!a] a class) into a case-insensitive RE2 that must match
// the whole value.
func compileGlob(g string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString(`(?is)^`)
	rs := []rune(g)
	for i := 0; i < len(rs); i++ {
		switch c := rs[i]; c {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '\\':
			if i+1 == len(rs) {
				return nil, fmt.Errorf("trailing backslash")
			}
			i++
			b.WriteString(regexp.QuoteMeta(string(rs[i])))
		case '[':
			j := i + 1
			b.WriteByte('[')
			if j < len(rs) && (rs[j] == '!' || rs[j] == '^') {
				b.WriteByte('^')
				j++
			}
			start := j
			for ; j < len(rs) && (rs[j] != ']' || j == start); j++ {
				switch rs[j] {
				case '-':
					b.WriteByte('-')
				case '\\':
					if j+1 < len(rs) {
						j++
					}
					b.WriteString(regexp.QuoteMeta(string(rs[j])))
				default:
					b.WriteString(regexp.QuoteMeta(string(rs[j])))
				}
			}
			if j >= len(rs) {
				return nil, fmt.Errorf("unclosed [ in glob")
			}
			b.WriteByte(']')
			i = j
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString(`$`)
	return regexp.Compile(b.String())
}

// globMatcher handles the globs that need no regexp: "*suffix",
// "prefix*" and "*part*" without other wildcards, by ASCII case folding.
type globMatcher struct {
	part         string // lower case
	prefix, suff bool   // the pattern started / ended with '*'
	text         string
}

// simpleGlob returns a globMatcher for g when it has that simple shape and
// plain ASCII, else fallback.
func simpleGlob(g string, fallback matcher) matcher {
	core := strings.TrimPrefix(strings.TrimSuffix(g, "*"), "*")
	if core == "" || strings.ContainsAny(core, "*?[\\") {
		return fallback
	}
	for i := 0; i < len(core); i++ {
		if core[i] >= 0x80 {
			return fallback
		}
	}
	return globMatcher{
		part:   strings.ToLower(core),
		prefix: strings.HasPrefix(g, "*"),
		suff:   strings.HasSuffix(g, "*") && len(g) > 1,
		text:   g,
	}
}

func (m globMatcher) test(s string) bool {
	switch {
	case m.prefix && m.suff:
		return containsFold(s, m.part)
	case m.prefix:
		return len(s) >= len(m.part) && strings.EqualFold(s[len(s)-len(m.part):], m.part)
	case m.suff:
		return len(s) >= len(m.part) && strings.EqualFold(s[:len(m.part)], m.part)
	}
	return strings.EqualFold(s, m.part)
}

// containsFold reports whether s contains the lower-case ASCII part,
// ignoring ASCII case.
func containsFold(s, part string) bool {
	for i := 0; i+len(part) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(part)], part) {
			return true
		}
	}
	return false
}

func (m globMatcher) match(v values) bool {
	if !v.isList {
		return m.test(v.one)
	}
	for _, s := range v.many {
		if m.test(s) {
			return true
		}
	}
	return false
}

func (m globMatcher) describe() string { return "matches glob " + strconv.Quote(m.text) }
