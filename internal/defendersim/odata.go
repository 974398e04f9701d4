package defendersim

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The $filter subset Defender documents: comparisons (eq ne gt ge lt le) of a
// property with a literal, and/or/not, parentheses, and any() over a string
// collection (machineTags/any(t: t eq 'x')). Parsing is type-checked against
// the entity's properties, as the real OData service does: an unknown
// property, a string compared with a datetime, or a bad enum constant is a
// 400 ODataError, not an empty result.

type fieldKind int

const (
	kindString fieldKind = iota + 1
	kindEnum
	kindTime
	kindInt
	kindStringList
)

type fieldDef struct {
	kind  fieldKind
	enums []string // for kindEnum
}

type schema map[string]fieldDef

// value is what an entity exposes for a property.
type value struct {
	null bool
	str  string
	tm   time.Time
	num  float64
	list []string
}

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tTime
	tLParen
	tRParen
	tColon
	tSlash
	tComma
)

type token struct {
	kind tokKind
	text string
	str  string
	tm   time.Time
	num  float64
	pos  int
}

// FilterError is a malformed or ill-typed $filter.
type FilterError struct {
	Pos int
	Msg string
}

func (e *FilterError) Error() string {
	return fmt.Sprintf("invalid $filter at position %d: %s", e.Pos, e.Msg)
}

func ferr(pos int, format string, a ...any) error {
	return &FilterError{Pos: pos, Msg: fmt.Sprintf(format, a...)}
}

const (
	maxFilterLen   = 8192
	maxFilterDepth = 64
)

func lex(src string) ([]token, error) {
	out := make([]token, 0, len(src)/8+1)
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(':
			out = append(out, token{kind: tLParen, text: "(", pos: i})
			i++
		case c == ')':
			out = append(out, token{kind: tRParen, text: ")", pos: i})
			i++
		case c == ':':
			out = append(out, token{kind: tColon, text: ":", pos: i})
			i++
		case c == '/':
			out = append(out, token{kind: tSlash, text: "/", pos: i})
			i++
		case c == ',':
			out = append(out, token{kind: tComma, text: ",", pos: i})
			i++
		case c == '\'':
			start := i
			var b strings.Builder
			i++
			closed := false
			for i < len(src) {
				if src[i] == '\'' {
					if i+1 < len(src) && src[i+1] == '\'' {
						b.WriteByte('\'')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				b.WriteByte(src[i])
				i++
			}
			if !closed {
				return nil, ferr(start, "unterminated string literal")
			}
			if !utf8.ValidString(b.String()) {
				return nil, ferr(start, "string literal is not valid UTF-8")
			}
			out = append(out, token{kind: tString, text: src[start:i], str: b.String(), pos: start})
		case isLetter(c) || c == '_':
			start := i
			for i < len(src) && (isLetter(src[i]) || isDigit(src[i]) || src[i] == '_') {
				i++
			}
			out = append(out, token{kind: tIdent, text: src[start:i], pos: start})
		case isDigit(c) || c == '-':
			start := i
			i++
			for i < len(src) && (isDigit(src[i]) || isLetter(src[i]) || strings.IndexByte(":.+-", src[i]) >= 0) {
				i++
			}
			tk, err := numberOrTime(src[start:i], start)
			if err != nil {
				return nil, err
			}
			out = append(out, tk)
		default:
			return nil, ferr(i, "unexpected character %q", rune(c))
		}
	}
	out = append(out, token{kind: tEOF, pos: len(src)})
	return out, nil
}

func numberOrTime(s string, pos int) (token, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return token{kind: tNumber, text: s, num: float64(n), pos: pos}, nil
	}
	if strings.ContainsAny(s, "T:") || strings.Count(s, "-") >= 2 {
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02Z", "2006-01-02"} {
			if t, err := time.Parse(layout, s); err == nil {
				return token{kind: tTime, text: s, tm: t.UTC(), pos: pos}, nil
			}
		}
		return token{}, ferr(pos, "%q is not a valid DateTimeOffset literal (use e.g. 2024-01-31T12:00:00Z)", s)
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && !strings.ContainsAny(s, "xXpPnN") {
		return token{kind: tNumber, text: s, num: f, pos: pos}, nil
	}
	return token{}, ferr(pos, "%q is not a valid literal", s)
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

// node is a parsed filter expression.
type node interface {
	eval(get func(string) (value, bool), vars map[string]string) bool
}

type logicNode struct {
	or   bool
	l, r node
}

func (n *logicNode) eval(get func(string) (value, bool), vars map[string]string) bool {
	if n.or {
		return n.l.eval(get, vars) || n.r.eval(get, vars)
	}
	return n.l.eval(get, vars) && n.r.eval(get, vars)
}

type notNode struct{ x node }

func (n *notNode) eval(get func(string) (value, bool), vars map[string]string) bool {
	return !n.x.eval(get, vars)
}

type cmpNode struct {
	field  string
	isVar  bool // the lambda variable of an any()
	kind   fieldKind
	op     string
	lit    token
	isNull bool
}

func (n *cmpNode) eval(get func(string) (value, bool), vars map[string]string) bool {
	var v value
	if n.isVar {
		v = value{str: vars[n.field]}
	} else {
		got, ok := get(n.field)
		if !ok {
			return false
		}
		v = got
	}
	if n.isNull || v.null {
		eq := n.isNull && v.null
		switch n.op {
		case "eq":
			return eq
		case "ne":
			return !eq
		default:
			return false
		}
	}
	var c int
	switch n.kind {
	case kindString:
		// SQL-style case-insensitive collation; EqualFold avoids allocating
		// on the common eq/ne path.
		if n.op == "eq" || n.op == "ne" {
			return strings.EqualFold(v.str, n.lit.str) == (n.op == "eq")
		}
		c = strings.Compare(strings.ToLower(v.str), strings.ToLower(n.lit.str))
	case kindEnum:
		c = strings.Compare(v.str, n.lit.str)
	case kindTime:
		c = v.tm.Compare(n.lit.tm)
	case kindInt:
		switch {
		case v.num < n.lit.num:
			c = -1
		case v.num > n.lit.num:
			c = 1
		}
	default:
		return false
	}
	switch n.op {
	case "eq":
		return c == 0
	case "ne":
		return c != 0
	case "gt":
		return c > 0
	case "ge":
		return c >= 0
	case "lt":
		return c < 0
	case "le":
		return c <= 0
	}
	return false
}

type anyNode struct {
	field string
	v     string
	body  node
}

func (n *anyNode) eval(get func(string) (value, bool), vars map[string]string) bool {
	got, ok := get(n.field)
	if !ok {
		return false
	}
	for _, item := range got.list {
		inner := map[string]string{n.v: item}
		if n.body.eval(get, inner) {
			return true
		}
	}
	return false
}

type parser struct {
	toks   []token
	i      int
	schema schema
	depth  int
	lambda string // the any() variable in scope, if any
}

// parseFilter parses and type-checks a $filter against the entity schema.
func parseFilter(src string, sc schema) (node, error) {
	if len(src) > maxFilterLen {
		return nil, ferr(0, "filter is longer than %d characters", maxFilterLen)
	}
	if strings.TrimSpace(src) == "" {
		return nil, ferr(0, "empty filter")
	}
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, schema: sc}
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, ferr(t.pos, "unexpected %q after a complete expression", t.text)
	}
	return n, nil
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) keyword(k string) bool {
	t := p.peek()
	if t.kind == tIdent && t.text == k {
		p.i++
		return true
	}
	return false
}

func (p *parser) enter(pos int) error {
	p.depth++
	if p.depth > maxFilterDepth {
		return ferr(pos, "filter nests deeper than %d", maxFilterDepth)
	}
	return nil
}

func (p *parser) or() (node, error) {
	if err := p.enter(p.peek().pos); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.keyword("or") {
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = &logicNode{or: true, l: l, r: r}
	}
	return l, nil
}

func (p *parser) and() (node, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for p.keyword("and") {
		r, err := p.unary()
		if err != nil {
			return nil, err
		}
		l = &logicNode{l: l, r: r}
	}
	return l, nil
}

func (p *parser) unary() (node, error) {
	if p.keyword("not") {
		if err := p.enter(p.peek().pos); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return &notNode{x: x}, nil
	}
	return p.primary()
}

func (p *parser) primary() (node, error) {
	t := p.next()
	switch t.kind {
	case tLParen:
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		if c := p.next(); c.kind != tRParen {
			return nil, ferr(c.pos, "expected ')' but found %q", c.text)
		}
		return n, nil
	case tIdent:
	case tEOF:
		return nil, ferr(t.pos, "expected a property name but the filter ended")
	default:
		return nil, ferr(t.pos, "expected a property name but found %q", t.text)
	}
	name := t.text
	if p.peek().kind == tLParen {
		return nil, ferr(t.pos, "function %q is not supported", name)
	}
	if p.lambda != "" && name == p.lambda {
		return p.comparison(t, &cmpNode{field: name, isVar: true, kind: kindString})
	}
	def, ok := p.schema[name]
	if !ok {
		return nil, ferr(t.pos, "could not find a property named '%s' (property names are case-sensitive)", name)
	}
	if def.kind == kindStringList {
		return p.anyExpr(t, name)
	}
	n := &cmpNode{field: name, kind: def.kind}
	nd, err := p.comparison(t, n)
	if err != nil {
		return nil, err
	}
	if def.kind == kindEnum && !n.isNull {
		valid := false
		for _, e := range def.enums {
			if e == n.lit.str {
				valid = true
			}
		}
		if !valid {
			return nil, ferr(n.lit.pos, "the string '%s' is not a valid value of %s (one of %s)", n.lit.str, name, strings.Join(def.enums, ", "))
		}
	}
	return nd, nil
}

func (p *parser) comparison(field token, n *cmpNode) (node, error) {
	op := p.next()
	switch op.text {
	case "eq", "ne", "gt", "ge", "lt", "le":
		if op.kind != tIdent {
			return nil, ferr(op.pos, "expected a comparison operator after %q", field.text)
		}
	default:
		if op.kind == tEOF {
			return nil, ferr(op.pos, "expected a comparison operator after %q but the filter ended", field.text)
		}
		return nil, ferr(op.pos, "expected a comparison operator (eq, ne, gt, ge, lt, le) after %q but found %q", field.text, op.text)
	}
	n.op = op.text
	lit := p.next()
	if lit.kind == tIdent && lit.text == "null" {
		if n.op != "eq" && n.op != "ne" {
			return nil, ferr(lit.pos, "null can only be compared with eq or ne")
		}
		n.isNull = true
		return n, nil
	}
	if want, wantName := literalFor(n.kind); lit.kind != want {
		if lit.kind == tEOF {
			return nil, ferr(lit.pos, "expected a literal after %q but the filter ended", op.text)
		}
		return nil, ferr(lit.pos, "a binary operator with incompatible types: %s must be compared with %s, found %q", field.text, wantName, lit.text)
	}
	if n.kind == kindEnum && n.op != "eq" && n.op != "ne" {
		return nil, ferr(op.pos, "%s can only be compared with eq or ne", field.text)
	}
	n.lit = lit
	return n, nil
}

// anyExpr parses "field/any(v: <expr over v>)".
func (p *parser) anyExpr(field token, name string) (node, error) {
	if s := p.next(); s.kind != tSlash {
		return nil, ferr(s.pos, "%s is a collection: use %s/any(t: t eq '...')", name, name)
	}
	if a := p.next(); a.kind != tIdent || a.text != "any" {
		return nil, ferr(a.pos, "only any() is supported on %s", name)
	}
	if l := p.next(); l.kind != tLParen {
		return nil, ferr(l.pos, "expected '(' after any")
	}
	v := p.next()
	if v.kind != tIdent {
		return nil, ferr(v.pos, "expected a lambda variable name")
	}
	if _, clash := p.schema[v.text]; clash || p.lambda != "" {
		return nil, ferr(v.pos, "lambda variable %q is not allowed here", v.text)
	}
	if c := p.next(); c.kind != tColon {
		return nil, ferr(c.pos, "expected ':' after the lambda variable")
	}
	p.lambda = v.text
	body, err := p.or()
	p.lambda = ""
	if err != nil {
		return nil, err
	}
	if r := p.next(); r.kind != tRParen {
		return nil, ferr(r.pos, "expected ')' to close any(")
	}
	_ = field
	return &anyNode{field: name, v: v.text, body: body}, nil
}

// eqCandidates returns the values field must equal (case-insensitively,
// lower-cased) for n to hold, when n implies that: "field eq 'a' or field eq
// 'b'", possibly and-ed with anything. It lets a list call with a hundred
// ids look each up instead of testing every entity against every id; the
// full filter still runs on each candidate.
func eqCandidates(n node, field string) ([]string, bool) {
	switch x := n.(type) {
	case *cmpNode:
		if x.field == field && !x.isVar && !x.isNull && x.op == "eq" && x.kind == kindString {
			return []string{strings.ToLower(x.lit.str)}, true
		}
	case *logicNode:
		l, lok := eqCandidates(x.l, field)
		r, rok := eqCandidates(x.r, field)
		if x.or {
			if lok && rok {
				return append(l, r...), true
			}
			return nil, false
		}
		switch {
		case lok && rok:
			if len(l) < len(r) {
				return l, true
			}
			return r, true
		case lok:
			return l, true
		case rok:
			return r, true
		}
	}
	return nil, false
}

// literalFor is the literal token a property kind compares with.
func literalFor(k fieldKind) (tokKind, string) {
	switch k {
	case kindTime:
		return tTime, "Edm.DateTimeOffset (an unquoted literal like 2024-01-31T12:00:00Z)"
	case kindInt:
		return tNumber, "a number"
	case kindEnum:
		return tString, "an enum string (a quoted literal)"
	default:
		return tString, "Edm.String (a quoted literal)"
	}
}
