package alert

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a one-pass replacement for json.Unmarshal into an any, the
// largest CPU item of a webhook after SQLite: encoding/json validates the
// whole body first, then decodes it again through its generic state machine.
// parseJSON yields the very same tree and accepts and refuses the very same
// inputs, with the same error texts and offsets (a differential fuzz test
// holds it to that).

// maxJSONDepth is encoding/json's nesting limit: the 10001st open bracket is
// an error, so that a hostile body cannot exhaust the stack.
const maxJSONDepth = 10000

// jsonSyntaxError is a syntax error worded as encoding/json words it.
// Offset counts the bytes read when the error was found, as in
// json.SyntaxError (whose message cannot be set outside encoding/json).
type jsonSyntaxError struct {
	msg    string
	Offset int64
}

func (e *jsonSyntaxError) Error() string { return e.msg }

// parseErrText renders a parseJSON error as jsonErrText renders an
// encoding/json one, so that FieldError texts stay what they were.
func parseErrText(err error) string {
	var se *jsonSyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.msg, se.Offset)
	}
	return jsonErrText(err)
}

// parseJSON decodes b exactly as json.Unmarshal(b, &v) with v of type any:
// objects become map[string]any (a repeated key keeps its last value),
// arrays []any, numbers float64. A syntax error is a *jsonSyntaxError; a
// number beyond float64 is a *json.UnmarshalTypeError, reported only when
// the body has no syntax error, as encoding/json does.
//
// Strings without escapes are slices of one string copy of b, which saves
// an allocation per string; such a string keeps that copy (the size of the
// body) alive while it is referenced.
func parseJSON(b []byte) (any, error) {
	p := parser{b: b, s: string(b)}
	p.skipSpace()
	v, ok := p.value(0)
	if !ok {
		return nil, p.err
	}
	p.skipSpace()
	if p.i < len(b) {
		p.fail(b[p.i], "after top-level value")
		return nil, p.err
	}
	if p.numErr != nil {
		return nil, p.numErr
	}
	return v, nil
}

type member struct {
	key string
	val any
}

type parser struct {
	b []byte
	s string // string(b): unescaped strings are sliced out of it
	i int    // next byte to read

	// Scratch stacks for the members and elements of the containers being
	// read, so that each map and slice is made once at its final size.
	members []member
	elems   []any
	buf     []byte // unescaping scratch

	err    *jsonSyntaxError
	numErr error // first number out of float64 range
}

// fail records a syntax error found at byte c, which is b[p.i] (or a space
// standing for the end of input, as encoding/json's scanner has it).
func (p *parser) fail(c byte, context string) {
	off := p.i + 1
	if p.i >= len(p.b) {
		off = len(p.b)
	}
	p.err = &jsonSyntaxError{msg: "invalid character " + quoteChar(c) + " " + context, Offset: int64(off)}
}

// failAt is fail for the current byte, or at the end of input for the
// scanner's view of it: a space.
func (p *parser) failAt(context string) {
	c := byte(' ')
	if p.i < len(p.b) {
		c = p.b[p.i]
	}
	p.fail(c, context)
}

func (p *parser) failEOF() {
	p.err = &jsonSyntaxError{msg: "unexpected end of JSON input", Offset: int64(len(p.b))}
}

// quoteChar formats c as encoding/json does in its messages.
func quoteChar(c byte) string {
	if c == '\'' {
		return `'\''`
	}
	if c == '"' {
		return `'"'`
	}
	s := strconv.Quote(string(rune(c)))
	return "'" + s[1:len(s)-1] + "'"
}

func (p *parser) skipSpace() {
	b, i := p.b, p.i
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
			continue
		}
		break
	}
	p.i = i
}

// value reads the value at p.i (space already skipped); depth is the number
// of containers around it.
func (p *parser) value(depth int) (any, bool) {
	if p.i >= len(p.b) {
		p.failEOF()
		return nil, false
	}
	switch c := p.b[p.i]; c {
	case '{':
		if depth >= maxJSONDepth {
			p.fail(c, "exceeded max depth")
			return nil, false
		}
		return p.object(depth + 1)
	case '[':
		if depth >= maxJSONDepth {
			p.fail(c, "exceeded max depth")
			return nil, false
		}
		return p.array(depth + 1)
	case '"':
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		return s, true
	case 't':
		return true, p.literal("true")
	case 'f':
		return false, p.literal("false")
	case 'n':
		return nil, p.literal("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return p.number()
		}
		p.fail(c, "looking for beginning of value")
		return nil, false
	}
}

// literal reads true, false or null, with the scanner's messages.
func (p *parser) literal(word string) bool {
	p.i++
	for k := 1; k < len(word); k++ {
		if p.i >= len(p.b) || p.b[p.i] != word[k] {
			p.failAt("in literal " + word + " (expecting " + quoteChar(word[k]) + ")")
			return false
		}
		p.i++
	}
	return true
}

func (p *parser) object(depth int) (any, bool) {
	p.i++ // {
	p.skipSpace()
	if p.i >= len(p.b) {
		p.failEOF()
		return nil, false
	}
	if p.b[p.i] == '}' {
		p.i++
		return map[string]any{}, true
	}
	base := len(p.members)
	for {
		if p.i >= len(p.b) {
			p.failEOF()
			return nil, false
		}
		if p.b[p.i] != '"' {
			p.fail(p.b[p.i], "looking for beginning of object key string")
			return nil, false
		}
		k, ok := p.str()
		if !ok {
			return nil, false
		}
		p.skipSpace()
		if p.i >= len(p.b) {
			p.failEOF()
			return nil, false
		}
		if p.b[p.i] != ':' {
			p.fail(p.b[p.i], "after object key")
			return nil, false
		}
		p.i++
		p.skipSpace()
		v, ok := p.value(depth)
		if !ok {
			return nil, false
		}
		p.members = append(p.members, member{k, v})
		more, ok := p.next('}', "after object key:value pair")
		if !ok {
			return nil, false
		}
		if !more {
			break
		}
	}
	ms := p.members[base:]
	m := make(map[string]any, len(ms))
	for _, kv := range ms {
		m[kv.key] = kv.val // a repeated key keeps its last value
	}
	clear(ms) // do not keep the values alive through the scratch stack
	p.members = p.members[:base]
	return m, true
}

// next reads what follows a member or an element: a comma (more follows)
// or the container's closing byte.
func (p *parser) next(closing byte, context string) (more, ok bool) {
	p.skipSpace()
	if p.i >= len(p.b) {
		p.failEOF()
		return false, false
	}
	switch p.b[p.i] {
	case ',':
		p.i++
		p.skipSpace()
		return true, true
	case closing:
		p.i++
		return false, true
	}
	p.fail(p.b[p.i], context)
	return false, false
}

func (p *parser) array(depth int) (any, bool) {
	p.i++ // [
	p.skipSpace()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return []any{}, true
	}
	base := len(p.elems)
	for {
		v, ok := p.value(depth)
		if !ok {
			return nil, false
		}
		p.elems = append(p.elems, v)
		more, ok := p.next(']', "after array element")
		if !ok {
			return nil, false
		}
		if !more {
			break
		}
	}
	es := p.elems[base:]
	a := make([]any, len(es))
	copy(a, es)
	clear(es)
	p.elems = p.elems[:base]
	return a, true
}

// number reads a number per the JSON grammar and converts it as
// encoding/json does (strconv.ParseFloat).
func (p *parser) number() (any, bool) {
	b := p.b
	start := p.i
	i := p.i
	neg := b[i] == '-'
	if neg {
		i++
	}
	// Integer part.
	simple := true
	var mant uint64
	switch {
	case i >= len(b):
		p.i = i
		p.failAt("in numeric literal")
		return nil, false
	case b[i] == '0':
		i++
	case b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			mant = mant*10 + uint64(b[i]-'0')
			i++
		}
	default:
		p.i = i
		p.failAt("in numeric literal")
		return nil, false
	}
	intEnd := i
	if i < len(b) && b[i] == '.' {
		simple = false
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			p.i = i
			p.failAt("after decimal point in numeric literal")
			return nil, false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		simple = false
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			p.i = i
			p.failAt("in exponent of numeric literal")
			return nil, false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	p.i = i
	// Up to 15 digits an integer is exact in a float64: no need for
	// ParseFloat (nor for the string it takes).
	digits := intEnd - start
	if neg {
		digits--
	}
	if simple && digits <= 15 {
		f := float64(mant)
		if neg {
			f = -f
			if mant == 0 {
				f = math.Copysign(0, -1)
			}
		}
		return f, true
	}
	s := p.s[start:i]
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		if p.numErr == nil {
			// encoding/json's offset here is one past the byte after
			// the number.
			p.numErr = &json.UnmarshalTypeError{Value: "number " + s, Type: reflect.TypeFor[float64](), Offset: int64(i + 1)}
		}
		return nil, true
	}
	return f, true
}

// strPlain marks the bytes that a string holds as they are: printable ASCII
// other than the quote and the backslash.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// skipPlain returns the index of the first byte from b[i] on that is not
// strPlain, eight bytes at a time while it can.
func skipPlain(b []byte, i int) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for i+8 <= len(b) {
		x := binary.LittleEndian.Uint64(b[i:])
		quote := x ^ (ones * '"')
		bslash := x ^ (ones * '\\')
		// A high bit in any of these marks a byte that is not plain: a
		// zero byte after the xors, a byte below 0x20, or one at 0x80 and
		// above.
		if ((quote-ones)&^quote|(bslash-ones)&^bslash|(x-ones*0x20)&^x|x)&highs != 0 {
			break
		}
		i += 8
	}
	for i < len(b) && strPlain[b[i]] {
		i++
	}
	return i
}

// str reads a string at p.i (on its opening quote). Strings that need no
// rewriting are sliced out of p.s.
func (p *parser) str() (string, bool) {
	b := p.b
	start := p.i + 1
	i := start
	for {
		i = skipPlain(b, i)
		if i >= len(b) {
			p.i = i
			p.failEOF()
			return "", false
		}
		c := b[i]
		if c == '"' {
			p.i = i + 1
			return p.s[start:i], true
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				break // invalid UTF-8: rewrite
			}
			i += size
			continue
		}
		if c == '\\' {
			break
		}
		p.i = i
		p.fail(c, "in string literal") // a control character
		return "", false
	}
	return p.strSlow(start, i)
}

// strSlow continues str from byte i, the first that needs rewriting, as
// encoding/json's unquote does: escapes decoded, invalid UTF-8 bytes and
// lone surrogates made U+FFFD.
func (p *parser) strSlow(start, i int) (string, bool) {
	b := p.b
	buf := append(p.buf[:0], b[start:i]...)
	defer func() { p.buf = buf[:0] }()
	for {
		j := skipPlain(b, i)
		buf = append(buf, b[i:j]...)
		i = j
		if i >= len(b) {
			p.i = i
			p.failEOF()
			return "", false
		}
		c := b[i]
		switch {
		case c == '"':
			p.i = i + 1
			return string(buf), true
		case c == '\\':
			i++
			if i >= len(b) {
				p.i = i
				p.failAt("in string escape code")
				return "", false
			}
			switch e := b[i]; e {
			case '"', '\\', '/':
				buf = append(buf, e)
				i++
			case 'b':
				buf = append(buf, '\b')
				i++
			case 'f':
				buf = append(buf, '\f')
				i++
			case 'n':
				buf = append(buf, '\n')
				i++
			case 'r':
				buf = append(buf, '\r')
				i++
			case 't':
				buf = append(buf, '\t')
				i++
			case 'u':
				i++
				r, ok := p.hex4(i)
				if !ok {
					return "", false
				}
				i += 4
				if utf16.IsSurrogate(r) {
					// A pair only if a well-formed \u escape follows
					// and completes it; otherwise U+FFFD, and the next
					// escape is read on its own.
					if r2, ok := peekU4(b, i); ok {
						if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
							buf = utf8.AppendRune(buf, d)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
				}
				buf = utf8.AppendRune(buf, r)
			default:
				p.i = i
				p.fail(e, "in string escape code")
				return "", false
			}
		case c < 0x20:
			p.i = i
			p.fail(c, "in string literal")
			return "", false
		case c < utf8.RuneSelf:
			buf = append(buf, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			buf = utf8.AppendRune(buf, r) // RuneError for a bad byte
			i += size
		}
	}
}

// hex4 reads the four hex digits of a \u escape at b[i:].
func (p *parser) hex4(i int) (rune, bool) {
	var r rune
	for k := range 4 {
		if i+k >= len(p.b) {
			p.i = i + k
			p.failAt("in \\u hexadecimal character escape")
			return 0, false
		}
		d, ok := hexVal(p.b[i+k])
		if !ok {
			p.i = i + k
			p.fail(p.b[i+k], "in \\u hexadecimal character escape")
			return 0, false
		}
		r = r<<4 | d
	}
	return r, true
}

// peekU4 reads a complete \uXXXX at b[i:], without reporting errors.
func peekU4(b []byte, i int) (rune, bool) {
	if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[i+2 : i+6] {
		d, ok := hexVal(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | d
	}
	return r, true
}

func hexVal(c byte) (rune, bool) {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0'), true
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10), true
	case c >= 'A' && c <= 'F':
		return rune(c - 'A' + 10), true
	}
	return 0, false
}

// errNotList says that arrayItemSpans found no array where it looked.
var errNotList = errors.New("no JSON array there")

// arrayItemSpans returns the [start, end) byte span in b of each element of
// the array under key in the top-level object of b (key "" means b itself
// is the array). A repeated key counts with its last value, as in the tree.
// A null there gives no spans.
//
// It only skips over values, without building any, and trusts b to be
// valid JSON (it is called on bodies parseJSON accepted): on anything else
// it returns an error or wrong spans, but never panics.
func arrayItemSpans(b []byte, key string) ([][2]int, error) {
	i := skipWS(b, 0)
	arrStart, arrEnd := i, len(b)
	if key != "" {
		if i >= len(b) || b[i] != '{' {
			return nil, errNotList
		}
		found := false
		i = skipWS(b, i+1)
		for i < len(b) && b[i] != '}' {
			ke, ok := skipString(b, i)
			if !ok {
				return nil, errNotList
			}
			match := keyEquals(b[i:ke], key)
			i = skipWS(b, ke)
			if i >= len(b) || b[i] != ':' {
				return nil, errNotList
			}
			vs := skipWS(b, i+1)
			ve, ok := skipValue(b, vs)
			if !ok {
				return nil, errNotList
			}
			if match {
				arrStart, arrEnd, found = vs, ve, true
			}
			i = skipWS(b, ve)
			if i < len(b) && b[i] == ',' {
				i = skipWS(b, i+1)
			}
		}
		if i >= len(b) || !found {
			return nil, errNotList
		}
	}
	i = arrStart
	if bytes.HasPrefix(b[i:arrEnd], []byte("null")) {
		return nil, nil
	}
	if i >= arrEnd || b[i] != '[' {
		return nil, errNotList
	}
	spans := [][2]int{}
	i = skipWS(b, i+1)
	for i < arrEnd && b[i] != ']' {
		e, ok := skipValue(b, i)
		if !ok || e > arrEnd {
			return nil, errNotList
		}
		spans = append(spans, [2]int{i, e})
		i = skipWS(b, e)
		if i < arrEnd && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
	if i >= arrEnd {
		return nil, errNotList
	}
	return spans, nil
}

// keyEquals compares the quoted key q with key after unescaping.
func keyEquals(q []byte, key string) bool {
	if bytes.IndexByte(q, '\\') < 0 && utf8.Valid(q) {
		return string(q[1:len(q)-1]) == key
	}
	// Rare: escapes or bytes that become U+FFFD.
	v, err := parseJSON(q)
	s, _ := v.(string)
	return err == nil && s == key
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string opening at b[i].
func skipString(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	j := i + 1
	for {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			return len(b), false
		}
		q := j + k
		// The quote ends the string unless an odd run of backslashes
		// escapes it.
		n := 0
		for q-1-n > i && b[q-1-n] == '\\' {
			n++
		}
		if n%2 == 0 {
			return q + 1, true
		}
		j = q + 1
	}
}

// skipValue returns the index after the value starting at b[i]. Containers
// are skipped with a depth count, not recursion.
func skipValue(b []byte, i int) (int, bool) {
	depth := 0
	for i < len(b) {
		switch b[i] {
		case '"':
			e, ok := skipString(b, i)
			if !ok {
				return e, false
			}
			i = e
		case '{', '[':
			depth++
			i++
			continue
		case '}', ']':
			depth--
			i++
			if depth < 0 {
				return i, false
			}
		default:
			if depth == 0 {
				j := i
				for j < len(b) {
					switch b[j] {
					case ' ', '\t', '\n', '\r', ',', ']', '}', ':':
						return j, j > i
					}
					j++
				}
				return j, j > i
			}
			i++
			continue
		}
		if depth == 0 {
			return i, true
		}
	}
	return i, false
}
