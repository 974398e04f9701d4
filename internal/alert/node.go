package alert

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// rootPath names the body as a whole in a FieldError.
const rootPath = "body"

// node is one value of a body decoded by parseJSON into any, with its
// JSON path, so that every type error names the exact field.
// A nil v means missing or null: both are "not given".
type node struct {
	v    any
	path string
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "an unknown type"
}

// pathKey renders one object key inside a path. Keys come from the body, so
// they are shown cleaned and capped.
func pathKey(key string) string {
	simple := key != ""
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_-@$.#", c) >= 0) {
			simple = false
			break
		}
	}
	if simple && len(key) <= 64 {
		return key
	}
	return "[" + strconv.Quote(truncate(stripControls(key), 64)) + "]"
}

func (n node) child(key string) string {
	k := pathKey(key)
	if n.path == "" {
		return k
	}
	if strings.HasPrefix(k, "[") {
		return n.path + k
	}
	return n.path + "." + k
}

func (n node) typeErr(want string) error {
	return &FieldError{Field: n.label(), Msg: fmt.Sprintf("must be %s, not %s", want, kindOf(n.v))}
}

// label is the path for messages: the root is "body".
func (n node) label() string {
	if n.path == "" {
		return rootPath
	}
	return n.path
}

// get returns the member key of an object node. On a missing key, or a node
// that is not an object, the result is "not given" (callers that need an
// object check with object() first).
func (n node) get(key string) node {
	m, _ := n.v.(map[string]any)
	return node{v: m[key], path: n.child(key)}
}

// getFold is get with a case-insensitive key: Sentinel entities come with
// both "HostName" and "hostName" spellings.
func (n node) getFold(key string) node {
	m, ok := n.v.(map[string]any)
	if !ok {
		return node{path: n.child(key)}
	}
	if v, ok := m[key]; ok && v != nil {
		return node{v: v, path: n.child(key)}
	}
	// Map order is random: when several spellings are present, take the
	// smallest key so that the same body always decodes the same way.
	best, found := "", false
	for k, v := range m {
		if v != nil && strings.EqualFold(k, key) && (!found || k < best) {
			best, found = k, true
		}
	}
	if found {
		return node{v: m[best], path: n.child(best)}
	}
	return node{path: n.child(key)}
}

func (n node) index(i int) node {
	a, _ := n.v.([]any)
	var v any
	if i >= 0 && i < len(a) {
		v = a[i]
	}
	return node{v: v, path: n.label() + "[" + strconv.Itoa(i) + "]"}
}

// lookup follows a dotted path, accepting both nested objects and keys that
// themselves hold dots ({"kibana.alert.uuid": ...} as well as
// {"kibana": {"alert": {"uuid": ...}}}, and mixes), as Elastic gives either.
// A numeric part indexes an array. The work is bounded by the body: each
// attempt descends into a distinct value.
func (n node) lookup(dotted string) node {
	return n.lookupParts(strings.Split(dotted, "."))
}

func (n node) lookupParts(parts []string) node {
	if len(parts) == 0 {
		return n
	}
	switch v := n.v.(type) {
	case map[string]any:
		for i := len(parts); i >= 1; i-- {
			key := parts[0]
			if i > 1 {
				key = strings.Join(parts[:i], ".")
			}
			c, ok := v[key]
			if !ok || c == nil {
				continue
			}
			r := node{v: c, path: n.child(key)}.lookupParts(parts[i:])
			if r.v != nil {
				return r
			}
		}
	case []any:
		if i, err := strconv.Atoi(parts[0]); err == nil && i >= 0 && i < len(v) {
			return n.index(i).lookupParts(parts[1:])
		}
	}
	p := n
	for _, part := range parts {
		p = node{path: p.child(part)}
	}
	return p
}

func (n node) object() (map[string]any, error) {
	switch v := n.v.(type) {
	case map[string]any:
		return v, nil
	case nil:
		return nil, nil
	}
	return nil, n.typeErr("an object")
}

func (n node) array() ([]any, error) {
	switch v := n.v.(type) {
	case []any:
		return v, nil
	case nil:
		return nil, nil
	}
	return nil, n.typeErr("an array")
}

func (n node) str() (string, error) {
	switch v := n.v.(type) {
	case string:
		return v, nil
	case nil:
		return "", nil
	}
	return "", n.typeErr("a string")
}

// scalar accepts a string, number or boolean as text (Splunk and generic
// bodies carry numbers where others carry words).
func (n node) scalar() (string, error) {
	switch v := n.v.(type) {
	case string:
		return v, nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case bool:
		return strconv.FormatBool(v), nil
	case nil:
		return "", nil
	}
	return "", n.typeErr("a string or number")
}

// strList accepts one string or an array of strings (nulls skipped).
func (n node) strList() ([]string, error) {
	switch v := n.v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for i, e := range v {
			switch s := e.(type) {
			case string:
				out = append(out, s)
			case nil:
			default:
				return nil, n.index(i).typeErr("a string")
			}
		}
		return out, nil
	}
	return nil, n.typeErr("a string or an array of strings")
}

// reader collects the first type error over many field reads, so that
// decoders read fields in a row and check once.
type reader struct{ err error }

func (r *reader) keep(err error) {
	if r.err == nil && err != nil {
		r.err = err
	}
}

func (r *reader) str(n node) string {
	s, err := n.str()
	r.keep(err)
	return s
}

func (r *reader) scalar(n node) string {
	s, err := n.scalar()
	r.keep(err)
	return s
}

func (r *reader) strs(n node) []string {
	s, err := n.strList()
	r.keep(err)
	return s
}

func (r *reader) array(n node) []any {
	a, err := n.array()
	r.keep(err)
	return a
}

func (r *reader) object(n node) map[string]any {
	m, err := n.object()
	r.keep(err)
	return m
}

// first returns the first non-empty string among the nodes.
func (r *reader) first(ns ...node) string {
	for _, n := range ns {
		if s := strings.TrimSpace(r.str(n)); s != "" {
			return s
		}
	}
	return ""
}

func nonEmpty(l []string) []string {
	out := l[:0:0]
	for _, s := range l {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseTime reads the timestamps of the sources (RFC 3339 with up to nine
// fraction digits; Azure sometimes omits the zone, which is then UTC). An
// unreadable time is left zero: it is informative, never a reason to refuse.
func parseTime(s string) time.Time {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 64 {
		return time.Time{}
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}
