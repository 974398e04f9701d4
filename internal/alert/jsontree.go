package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"reflect"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// Bodies are read with jsontext, the tokenizer that became encoding/json/v2's
// (moving to the standard library is an import change). It validates as it
// reads, so one pass builds the tree; this file only turns its tokens into
// the same tree that json.Unmarshal into an any gives, and words its errors
// as encoding/json words them, so that FieldError texts stay what they were.

// maxJSONDepth is the nesting limit, jsontext's and encoding/json's alike:
// the 10001st open bracket is an error, so that a hostile body cannot
// exhaust the stack.
const maxJSONDepth = 10000

// jsonOpts reads bodies as encoding/json does: a repeated key is allowed
// (its last value wins, below), and invalid UTF-8 and lone surrogates
// become U+FFFD.
var jsonOpts = []jsontext.Options{
	jsontext.AllowDuplicateNames(true),
	jsontext.AllowInvalidUTF8(true),
}

// syntaxError words the error of a body that jsontext refused as
// encoding/json words it, so that FieldError texts stay what they were
// ("invalid character 'x' after object key (at byte 12)"): it asks
// encoding/json's own scanner. A refused body is so read twice, which costs
// nothing on the path of accepted ones.
func syntaxError(b []byte, jerr error) error {
	var raw json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	// Never seen (a fuzz test compares the two): keep jsontext's words.
	return jerr
}

// parseJSON decodes b exactly as json.Unmarshal(b, &v) with v of type any:
// objects become map[string]any (a repeated key keeps its last value),
// arrays []any, numbers float64. A syntax error is a *json.SyntaxError; a
// number beyond float64 is a *json.UnmarshalTypeError, reported only when
// the body has no syntax error, as encoding/json does.
//
// Strings without escapes are slices of one string copy of b, which saves
// an allocation per string; such a string keeps that copy (the size of the
// body) alive while it is referenced.
func parseJSON(b []byte) (any, error) {
	p := treePool.Get().(*treeParser)
	defer p.release()
	p.s = string(b)
	p.in = *bytes.NewBuffer(b)
	p.dec.Reset(&p.in, jsonOpts...)

	v, err := p.value()
	if err == nil {
		// jsontext reads a stream of values; a body is one.
		if _, next := p.dec.ReadToken(); !errors.Is(next, io.EOF) {
			err = errors.New("more than one JSON value")
		}
	}
	if err != nil {
		return nil, syntaxError(b, err)
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

// treeParser holds what parseJSON reuses from one body to the next.
type treeParser struct {
	in  bytes.Buffer // the body: jsontext reads a bytes.Buffer in place
	dec jsontext.Decoder
	s   string // the body as a string: unescaped strings are sliced out of it

	// Scratch stacks for the members and elements of the containers being
	// read, so that each map and slice is made once at its final size.
	members []member
	elems   []any
	buf     []byte // unescaping scratch

	numErr error // first number out of float64 range
}

var treePool = sync.Pool{New: func() any { return new(treeParser) }}

var emptyBody bytes.Buffer

// release drops every reference to the body and returns p to the pool.
func (p *treeParser) release() {
	p.in = bytes.Buffer{}
	p.dec.Reset(&emptyBody)
	p.s, p.numErr = "", nil
	// After an error the scratch stacks still hold values.
	clear(p.members[:cap(p.members)])
	clear(p.elems[:cap(p.elems)])
	p.members, p.elems = p.members[:0], p.elems[:0]
	// Keep no scratch that one huge body grew.
	if cap(p.members) > 4096 || cap(p.elems) > 4096 || cap(p.buf) > 64<<10 {
		p.members, p.elems, p.buf = nil, nil, nil
	}
	treePool.Put(p)
}

// value reads the next value. jsontext checks the grammar and the nesting
// limit, so recursion is at most maxJSONDepth deep.
func (p *treeParser) value() (any, error) {
	switch p.dec.PeekKind() {
	case '{':
		if _, err := p.dec.ReadToken(); err != nil {
			return nil, err
		}
		base := len(p.members)
		for p.dec.PeekKind() != '}' {
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			p.members = append(p.members, member{k, v})
		}
		if _, err := p.dec.ReadToken(); err != nil {
			return nil, err
		}
		ms := p.members[base:]
		m := make(map[string]any, len(ms))
		for _, kv := range ms {
			m[kv.key] = kv.val // a repeated key keeps its last value
		}
		clear(ms) // do not keep the values alive through the scratch stack
		p.members = p.members[:base]
		return m, nil
	case '[':
		if _, err := p.dec.ReadToken(); err != nil {
			return nil, err
		}
		base := len(p.elems)
		for p.dec.PeekKind() != ']' {
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			p.elems = append(p.elems, v)
		}
		if _, err := p.dec.ReadToken(); err != nil {
			return nil, err
		}
		es := p.elems[base:]
		a := make([]any, len(es))
		copy(a, es)
		clear(es)
		p.elems = p.elems[:base]
		return a, nil
	case '"':
		return p.str()
	case '0':
		return p.number()
	default: // literals, and errors (PeekKind is 0 then)
		t, err := p.dec.ReadToken()
		if err != nil {
			return nil, err
		}
		switch t.Kind() {
		case 't':
			return true, nil
		case 'f':
			return false, nil
		}
		return nil, nil
	}
}

// str reads a string value or object name. One without escapes or invalid
// UTF-8 is sliced out of p.s.
func (p *treeParser) str() (string, error) {
	raw, err := p.dec.ReadValue()
	if err != nil {
		return "", err
	}
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		end := int(p.dec.InputOffset()) - 1
		return p.s[end-len(raw)+2 : end], nil
	}
	// Escapes decoded, invalid UTF-8 and lone surrogates made U+FFFD (the
	// error only says that happened), as encoding/json does.
	p.buf, _ = jsontext.AppendUnquote(p.buf[:0], raw)
	return string(p.buf), nil
}

// number converts a number as encoding/json does (strconv.ParseFloat).
func (p *treeParser) number() (any, error) {
	raw, err := p.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	// Up to 15 digits an integer is exact in a float64: no need for
	// ParseFloat.
	if len(raw) <= 16 {
		digits := raw
		neg := digits[0] == '-'
		if neg {
			digits = digits[1:]
		}
		if len(digits) <= 15 {
			var mant uint64
			simple := true
			for _, c := range digits {
				if c < '0' || c > '9' {
					simple = false
					break
				}
				mant = mant*10 + uint64(c-'0')
			}
			if simple {
				f := float64(mant)
				if neg {
					f = math.Copysign(f, -1)
				}
				return f, nil
			}
		}
	}
	end := int(p.dec.InputOffset())
	s := p.s[end-len(raw) : end]
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		if p.numErr == nil {
			// encoding/json's offset here is one past the byte after
			// the number.
			p.numErr = &json.UnmarshalTypeError{Value: "number " + s, Type: reflect.TypeFor[float64](), Offset: int64(end + 1)}
		}
		return nil, nil
	}
	return f, nil
}

// errNotList says that arrayItemSpans found no array where it looked.
var errNotList = errors.New("no JSON array there")

// arrayItemSpans returns the [start, end) byte span in b of each element of
// the array under key in the top-level object of b (key "" means b itself
// is the array). A repeated key counts with its last value, as in the tree.
// A null there gives no spans.
func arrayItemSpans(b []byte, key string) ([][2]int, error) {
	p := treePool.Get().(*treeParser)
	defer p.release()
	p.in = *bytes.NewBuffer(b)
	p.dec.Reset(&p.in, jsonOpts...)
	d := &p.dec
	if key == "" {
		return itemSpans(d)
	}
	if d.PeekKind() != '{' {
		return nil, errNotList
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, errNotList
	}
	var spans [][2]int
	found := false
	for d.PeekKind() != '}' {
		name, err := d.ReadValue()
		if err != nil {
			return nil, errNotList
		}
		match := false
		if bytes.IndexByte(name, '\\') < 0 && utf8.Valid(name) {
			match = string(name[1:len(name)-1]) == key
		} else {
			p.buf, _ = jsontext.AppendUnquote(p.buf[:0], name)
			match = string(p.buf) == key
		}
		if !match {
			if err := d.SkipValue(); err != nil {
				return nil, errNotList
			}
			continue
		}
		// A repeated key counts with its last value: an earlier array
		// is forgotten, and so is an earlier value that was not one.
		switch d.PeekKind() {
		case '[', 'n':
			if spans, err = itemSpans(d); err != nil {
				return nil, err
			}
			found = true
		default:
			if err := d.SkipValue(); err != nil {
				return nil, errNotList
			}
			spans, found = nil, false
		}
	}
	if !found {
		return nil, errNotList
	}
	return spans, nil
}

// itemSpans reads the array (or null) next in d and returns the spans of
// its elements.
func itemSpans(d *jsontext.Decoder) ([][2]int, error) {
	switch d.PeekKind() {
	case 'n':
		if _, err := d.ReadToken(); err != nil {
			return nil, errNotList
		}
		return nil, nil
	case '[':
	default:
		return nil, errNotList
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, errNotList
	}
	spans := [][2]int{}
	for d.PeekKind() != ']' {
		v, err := d.ReadValue()
		if err != nil {
			return nil, errNotList
		}
		end := int(d.InputOffset())
		spans = append(spans, [2]int{end - len(v), end})
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, errNotList
	}
	return spans, nil
}
