// Package yamlpos owns strict, position-aware YAML decoding for scanhook's
// configuration and rule files: it decodes a yaml.Node tree into Go structs
// by their `yaml:` tags and reports every unknown key, wrong type and
// duplicate key as FILE:LINE:COL, collecting all problems instead of
// stopping at the first, so an operator fixes a file in one pass.
package yamlpos

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is one problem at a position in a YAML file. Line and Col are
// 1-based; Col is 1 when the YAML parser only knows the line.
type Error struct {
	File      string
	Line, Col int
	Msg       string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// ErrorList is every problem found in a file, ordered by position.
type ErrorList []*Error

// Error prints one problem per line.
func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Sort orders the list by file, line and column, keeping the order in which
// problems at the same position were found.
func (l ErrorList) Sort() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// Err returns the sorted list as an error, or nil when it is empty, so that
// callers never return a non-nil error holding no problems.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	l.Sort()
	return l
}

// At builds an Error at n's position (line 1, column 1 when n is nil).
func At(file string, n *yaml.Node, format string, args ...any) *Error {
	e := &Error{File: file, Line: 1, Col: 1, Msg: fmt.Sprintf(format, args...)}
	if n != nil && n.Line > 0 {
		e.Line, e.Col = n.Line, n.Column
	}
	return e
}

// Unmarshaler is implemented by field types that decode themselves from a
// node (pointer receiver). The decoder calls it for non-null nodes only.
type Unmarshaler interface {
	UnmarshalYAMLPos(node *yaml.Node, file string) ErrorList
}

// maxNodes bounds the work of decoding one document; aliases can make a
// small file expand into a very large tree ("billion laughs").
const maxNodes = 1 << 18

var syntaxLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Parse parses one YAML document and returns its top-level mapping. An
// empty document, a non-mapping document, a syntax error or a second
// document are errors.
func Parse(file string, data []byte) (*yaml.Node, ErrorList) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrorList{At(file, nil, "empty document: expected a mapping")}
		}
		return nil, ErrorList{syntaxError(file, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, ErrorList{At(file, &extra, "only one YAML document is allowed")}
	} else if !errors.Is(err, io.EOF) {
		return nil, ErrorList{syntaxError(file, err)}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, ErrorList{At(file, &doc, "empty document: expected a mapping")}
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return nil, ErrorList{At(file, root, "empty document: expected a mapping")}
	}
	if root.Kind != yaml.MappingNode {
		return nil, ErrorList{At(file, root, "expected a mapping at the top level, got %s", describe(root))}
	}
	return root, nil
}

func syntaxError(file string, err error) *Error {
	msg := err.Error()
	if m := syntaxLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: file, Line: line, Col: 1, Msg: "YAML syntax: " + m[2]}
	}
	return &Error{File: file, Line: 1, Col: 1, Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
}

// Unmarshal parses data and decodes its top-level mapping into v, a pointer
// to a struct. The error, if any, is an ErrorList.
func Unmarshal(file string, data []byte, v any) error {
	root, errs := Parse(file, data)
	if errs != nil {
		return errs.Err()
	}
	return Decode(file, root, v).Err()
}

// Decode decodes n into v (a non-nil pointer) and returns every problem.
func Decode(file string, n *yaml.Node, v any) ErrorList {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return ErrorList{At(file, n, "internal error: Decode needs a non-nil pointer, got %T", v)}
	}
	d := &decoder{file: file}
	d.value(n, rv.Elem())
	return d.finish()
}

type decoder struct {
	file      string
	errs      ErrorList
	nodes     int
	truncated bool
}

// maxErrors bounds the report; past it the file is clearly not what the
// reader expects and more lines would only bury the first ones.
const maxErrors = 100

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.add(At(d.file, n, format, args...))
}

func (d *decoder) add(errs ...*Error) {
	for _, e := range errs {
		if len(d.errs) < maxErrors {
			d.errs = append(d.errs, e)
		} else {
			d.truncated = true
		}
	}
}

// finish closes the list; a "too many errors" note goes after every
// other problem, so that it still reads last once the list is sorted.
func (d *decoder) finish() ErrorList {
	if d.truncated {
		last := &Error{File: d.file, Line: 1, Col: 1, Msg: "too many errors; stopping here"}
		for _, e := range d.errs {
			if e.Line > last.Line || (e.Line == last.Line && e.Col > last.Col) {
				last.Line, last.Col = e.Line, e.Col
			}
		}
		d.errs = append(d.errs, last)
		d.truncated = false
	}
	return d.errs
}

var (
	nodeType       = reflect.TypeFor[yaml.Node]()
	durationType   = reflect.TypeFor[time.Duration]()
	unmarshalerTyp = reflect.TypeFor[Unmarshaler]()
)

// resolve follows aliases, bounding the total work.
func (d *decoder) resolve(n *yaml.Node) (*yaml.Node, bool) {
	for depth := 0; n != nil && n.Kind == yaml.AliasNode; depth++ {
		if depth > 100 || n.Alias == nil {
			d.errorf(n, "alias *%s cannot be resolved", n.Value)
			return nil, false
		}
		n = n.Alias
	}
	d.nodes++
	if d.nodes > maxNodes {
		if d.nodes == maxNodes+1 {
			d.errorf(n, "document too large after expanding aliases")
		}
		return nil, false
	}
	return n, true
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func (d *decoder) value(n *yaml.Node, v reflect.Value) {
	n, ok := d.resolve(n)
	if !ok {
		return
	}
	if v.Type() == nodeType {
		v.Set(reflect.ValueOf(*n))
		return
	}
	if v.Kind() == reflect.Pointer && v.Type().Elem() == nodeType {
		v.Set(reflect.ValueOf(n))
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerTyp) {
		if isNull(n) {
			return
		}
		u := v.Addr().Interface().(Unmarshaler)
		d.add(u.UnmarshalYAMLPos(n, d.file)...)
		return
	}
	if v.Kind() == reflect.Pointer {
		if isNull(n) {
			v.SetZero()
			return
		}
		p := reflect.New(v.Type().Elem())
		before := len(d.errs)
		d.value(n, p.Elem())
		if len(d.errs) == before {
			v.Set(p)
		}
		return
	}
	if isNull(n) {
		// An explicit null leaves the zero value, as yaml.v3 does.
		v.SetZero()
		return
	}
	if v.Type() == durationType {
		d.duration(n, v)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structure(n, v)
	case reflect.Slice:
		d.slice(n, v)
	case reflect.Map:
		d.mapping(n, v)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.errorf(n, "expected a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			d.errorf(n, "expected true or false, got %s", describe(n))
			return
		}
		b, err := strconv.ParseBool(n.Value)
		if err != nil {
			d.errorf(n, "expected true or false, got %q", n.Value)
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.errorf(n, "expected an integer, got %s", describe(n))
			return
		}
		i, err := strconv.ParseInt(n.Value, 0, v.Type().Bits())
		if err != nil {
			d.errorf(n, "integer %q out of range or malformed", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.errorf(n, "expected a non-negative integer, got %s", describe(n))
			return
		}
		u, err := strconv.ParseUint(n.Value, 0, v.Type().Bits())
		if err != nil {
			d.errorf(n, "non-negative integer %q out of range or malformed", n.Value)
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!float" && n.ShortTag() != "!!int") {
			d.errorf(n, "expected a number, got %s", describe(n))
			return
		}
		var f float64
		if err := n.Decode(&f); err != nil {
			d.errorf(n, "number %q malformed", n.Value)
			return
		}
		v.SetFloat(f)
	case reflect.Interface:
		var x any
		if err := n.Decode(&x); err != nil {
			d.errorf(n, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
			return
		}
		if x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		d.errorf(n, "internal error: cannot decode into Go type %s", v.Type())
	}
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, "expected a duration such as 6h or 7d, got %s", describe(n))
		return
	}
	dur, err := ParseDuration(n.Value)
	if err != nil {
		d.errorf(n, "%v", err)
		return
	}
	v.SetInt(int64(dur))
}

var dayPart = regexp.MustCompile(`([0-9]*\.?[0-9]+)d`)

// ParseDuration parses a Go duration ("90m", "1h30m") that may also use a
// "d" suffix for 24-hour days ("7d", "1d12h"). A bare number is an error,
// since its unit would be a guess.
func ParseDuration(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("duration is empty; use e.g. 6h or 7d")
	}
	conv := in
	var convErr error
	if strings.Contains(in, "d") {
		conv = dayPart.ReplaceAllStringFunc(in, func(m string) string {
			f, err := strconv.ParseFloat(strings.TrimSuffix(m, "d"), 64)
			if err != nil || f > 106751 { // beyond time.Duration's range
				convErr = fmt.Errorf("duration %q out of range", s)
				return m
			}
			return strconv.FormatFloat(f*24, 'f', -1, 64) + "h"
		})
	}
	if convErr != nil {
		return 0, convErr
	}
	dur, err := time.ParseDuration(conv)
	if err != nil {
		if _, numErr := strconv.ParseFloat(in, 64); numErr == nil && in != "0" {
			return 0, fmt.Errorf("duration %q needs a unit, e.g. %sh or %sd", s, in, in)
		}
		return 0, fmt.Errorf("invalid duration %q; use e.g. 30m, 6h or 7d", s)
	}
	return dur, nil
}

type fieldInfo struct {
	name  string
	index []int
}

func structFields(t reflect.Type) []fieldInfo {
	var out []fieldInfo
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, fieldInfo{name: name, index: f.Index})
	}
	return out
}

// keyOf checks that a mapping key is a plain scalar and returns its text.
func (d *decoder) keyOf(k *yaml.Node) (string, bool) {
	k, ok := d.resolve(k)
	if !ok {
		return "", false
	}
	if k.Kind != yaml.ScalarNode {
		d.errorf(k, "mapping key must be a string, got %s", describe(k))
		return "", false
	}
	if k.ShortTag() == "!!merge" {
		d.errorf(k, "merge keys (<<) are not supported")
		return "", false
	}
	return k.Value, true
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "expected a mapping, got %s", describe(n))
		return
	}
	fields := structFields(v.Type())
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	d.entries(n, func(key string, kn, vn *yaml.Node) {
		idx := slices.IndexFunc(fields, func(f fieldInfo) bool { return f.name == key })
		if idx < 0 {
			d.errorf(kn, "%s", UnknownKey(key, names))
			return
		}
		d.value(vn, v.FieldByIndex(fields[idx].index))
	})
}

// entries yields a mapping's keys with their key and value nodes, once
// each: a key that is not a plain string, or that repeats an earlier one,
// is reported and skipped.
func (d *decoder) entries(n *yaml.Node, each func(key string, kn, vn *yaml.Node)) {
	seen := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn := n.Content[i]
		key, ok := d.keyOf(kn)
		if !ok {
			continue
		}
		if first, dup := seen[key]; dup {
			d.errorf(kn, "duplicate key %q (first at line %d)", key, first.Line)
			continue
		}
		seen[key] = kn
		each(key, kn, n.Content[i+1])
	}
}

// UnknownKey words the message for a key that is not allowed, suggesting
// the nearest allowed one when it is close enough to be a typo.
func UnknownKey(key string, allowed []string) string {
	if s := Suggest(key, allowed); s != "" {
		return fmt.Sprintf("unknown key %q (did you mean %q?)", key, s)
	}
	if len(allowed) > 0 && len(allowed) <= 12 {
		return fmt.Sprintf("unknown key %q (allowed: %s)", key, strings.Join(allowed, ", "))
	}
	return fmt.Sprintf("unknown key %q", key)
}

// Suggest returns the candidate closest to word by edit distance (case
// insensitive), or "" when none is close enough to be a plausible typo.
func Suggest(word string, candidates []string) string {
	best, bestD := "", -1
	lw := strings.ToLower(word)
	for _, c := range candidates {
		dist := levenshtein(lw, strings.ToLower(c))
		if bestD < 0 || dist < bestD {
			best, bestD = c, dist
		}
	}
	if bestD < 0 {
		return ""
	}
	limit := max(1, min(len([]rune(word)), len([]rune(best)))/3)
	if bestD > limit {
		return ""
	}
	return best
}

// levenshtein is the optimal-string-alignment distance: insertions,
// deletions, substitutions and adjacent transpositions ("sevreity") each
// cost one.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		// Long keys are never typos of short ones; avoid quadratic work.
		if a == b {
			return 0
		}
		return max(len(ra), len(rb))
	}
	pp := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], pp[j-2]+1)
			}
		}
		pp, prev, cur = prev, cur, pp
	}
	return prev[len(rb)]
}

func (d *decoder) slice(n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "expected a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, c := range n.Content {
		d.value(c, s.Index(i))
	}
	v.Set(s)
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value) {
	if v.Type().Key().Kind() != reflect.String {
		d.errorf(n, "internal error: map keys must be strings, not %s", v.Type().Key())
		return
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "expected a mapping, got %s", describe(n))
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	d.entries(n, func(key string, _, vn *yaml.Node) {
		ev := reflect.New(v.Type().Elem()).Elem()
		d.value(vn, ev)
		m.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), ev)
	})
	v.Set(m)
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!str":
			return fmt.Sprintf("string %q", truncate(n.Value))
		}
		return fmt.Sprintf("%s %s", strings.TrimPrefix(n.ShortTag(), "!!"), truncate(n.Value))
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	}
	return "an unknown node"
}

func truncate(s string) string {
	const limit = 40
	r := []rune(s)
	if len(r) <= limit {
		return s
	}
	return string(r[:limit]) + "…"
}

// Describe names what a node is ("a list", "string \"x\"") for callers
// writing their own "expected X, got Y" messages.
func Describe(n *yaml.Node) string { return describe(n) }

// Pos is a value together with the node it was decoded from, for callers
// that check the value after decoding and must report where it was.
// Node is nil when the key was absent (or null).
type Pos[T any] struct {
	V    T
	Node *yaml.Node
}

// UnmarshalYAMLPos implements Unmarshaler.
func (p *Pos[T]) UnmarshalYAMLPos(n *yaml.Node, file string) ErrorList {
	p.Node = n
	d := &decoder{file: file}
	d.value(n, reflect.ValueOf(&p.V).Elem())
	return d.finish()
}

// Set reports whether the key was present with a non-null value.
func (p Pos[T]) Set() bool { return p.Node != nil }
