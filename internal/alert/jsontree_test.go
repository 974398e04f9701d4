package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

// stdAny is what parseJSON must reproduce.
func stdAny(b []byte) (any, error) {
	var v any
	err := json.Unmarshal(b, &v)
	return v, err
}

// checkSameAsEncodingJSON fails unless parseJSON and encoding/json agree on
// b: the same tree, or errors with the same text and offset.
func checkSameAsEncodingJSON(t *testing.T, b []byte) {
	t.Helper()
	want, wantErr := stdAny(b)
	got, err := parseJSON(b)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("input %q: parseJSON error %v, encoding/json error %v", b, err, wantErr)
	}
	if err != nil {
		var wse *json.SyntaxError
		var wte *json.UnmarshalTypeError
		var gse *json.SyntaxError
		var gte *json.UnmarshalTypeError
		switch {
		case errors.As(wantErr, &wse):
			if !errors.As(err, &gse) {
				t.Fatalf("input %q: got %T %v, want a syntax error %v", b, err, err, wantErr)
			}
			if gse.Error() != wse.Error() || gse.Offset != wse.Offset {
				t.Fatalf("input %q: got %q at %d, want %q at %d", b, gse.Error(), gse.Offset, wse.Error(), wse.Offset)
			}
			if got, want := jsonErrText(err), jsonErrText(wantErr); got != want {
				t.Fatalf("input %q: text %q, want %q", b, got, want)
			}
		case errors.As(wantErr, &wte):
			if !errors.As(err, &gte) {
				t.Fatalf("input %q: got %T %v, want %v", b, err, err, wantErr)
			}
			if gte.Error() != wte.Error() || gte.Offset != wte.Offset {
				t.Fatalf("input %q: got %q at %d, want %q at %d", b, gte.Error(), gte.Offset, wte.Error(), wte.Offset)
			}
		default:
			t.Fatalf("input %q: unexpected encoding/json error %T %v", b, wantErr, wantErr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("input %q:\n got %#v\nwant %#v", b, got, want)
	}
	// DeepEqual takes -0 for 0: compare the sign too.
	if !sameSigns(got, want) {
		t.Fatalf("input %q: signs of zero differ", b)
	}
}

func sameSigns(a, b any) bool {
	switch a := a.(type) {
	case float64:
		return math.Signbit(a) == math.Signbit(b.(float64))
	case []any:
		for i := range a {
			if !sameSigns(a[i], b.([]any)[i]) {
				return false
			}
		}
	case map[string]any:
		for k := range a {
			if !sameSigns(a[k], b.(map[string]any)[k]) {
				return false
			}
		}
	}
	return true
}

func FuzzParseJSONMatchesEncodingJSON(f *testing.F) {
	for _, dir := range []string{"testdata", filepath.Join("..", "..", "testdata", "samples")} {
		names, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkSameAsEncodingJSON(t, b)
		// The spans of a top-level array's elements are those values.
		if v, err := parseJSON(b); err == nil {
			checkSpans(t, b, v)
		}
	})
}

// checkSpans checks arrayItemSpans against the tree, for the body itself
// and for each top-level key.
func checkSpans(t *testing.T, b []byte, v any) {
	t.Helper()
	check := func(key string, arr any) {
		spans, err := arrayItemSpans(b, key)
		a, isArr := arr.([]any)
		if arr == nil {
			if err != nil || spans != nil {
				t.Fatalf("input %q key %q: null gave %v, %v", b, key, spans, err)
			}
			return
		}
		if !isArr {
			if err == nil {
				t.Fatalf("input %q key %q: no error for a non-array", b, key)
			}
			return
		}
		if err != nil || len(spans) != len(a) {
			t.Fatalf("input %q key %q: %d spans (%v), want %d", b, key, len(spans), err, len(a))
		}
		for i, s := range spans {
			e, err := parseJSON(b[s[0]:s[1]])
			if err != nil || !reflect.DeepEqual(e, a[i]) {
				t.Fatalf("input %q key %q: span %d is %q", b, key, i, b[s[0]:s[1]])
			}
		}
		// rawItems gives what the two encoding/json passes it replaces gave.
		got, err := rawItems(b, key)
		want, wantErr := stdRawItems(b, key)
		if err != nil || wantErr != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("input %q key %q: rawItems %q (%v), want %q (%v)", b, key, got, err, want, wantErr)
		}
	}
	switch v := v.(type) {
	case []any:
		check("", v)
	case map[string]any:
		for k, e := range v {
			if k != "" {
				check(k, e)
			}
		}
	}
}

// stdRawItems is rawItems as it was, with encoding/json.
func stdRawItems(body []byte, key string) ([]json.RawMessage, error) {
	arr := body
	if key != "" {
		var top map[string]json.RawMessage
		if err := json.Unmarshal(body, &top); err != nil {
			return nil, err
		}
		arr = top[key]
	}
	items := []json.RawMessage{}
	err := json.Unmarshal(arr, &items)
	return items, err
}

func TestParseJSONMatchesEncodingJSON(t *testing.T) {
	deep := func(n int, open, end string) []byte {
		return []byte(strings.Repeat(open, n) + strings.Repeat(end, n))
	}
	cases := []string{
		``, ` `, "\t\r\n {} \n", `null`, `true`, `false`, `0`, `-0`, `-0.0`, `1`, `-1`,
		`123456789012345`, `1234567890123456`, `12345678901234567890`, `9007199254740993`,
		`1.5`, `1e10`, `1E+2`, `1e-2`, `1e400`, `-1e400`, `1e-400`, `[1e400, "x"]`, `[1e400, 1e500]`,
		`[1e400 x]`, `01`, `-`, `-x`, `1.`, `1.x`, `1e`, `1e+`, `.5`, `+1`, `0x10`, `NaN`, `Infinity`,
		`""`, `"abc"`, `"a\"b\\c\/d\b\f\n\r\t"`, `"\u0041\u00e9\u4e2d"`, `"\ud83d\ude00"`,
		`"\ud83d"`, `"\ude00"`, `"\ud83dx"`, `"\ud83d\u0041"`, `"\ud83d\ud83d\ude00"`, `"\ud83d\u00"`,
		`"\ud83d\uzzzz"`, `"\u12"`, `"\u"`, `"\x"`, `"\'"`, "\"a\tb\"", "\"\x00\"", "\"\x1f\"", "\"\x7f\"",
		"\"\xff\"", "\"a\xc3\"", "\"\xe2\x82\xac\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xc3\xa9\\n\xff\"",
		"\"\xef\xbf\xbd\"", `"abc`, `"abc\`, `"\u12`,
		`{"a":1,"a":2}`, `{"a":{"b":1},"a":[1]}`, `{"":""}`, `{"a":1,}`, `[1,]`, `[,1]`, `{,}`, `{"a"}`, `{"a" 1}`,
		`{"a":1 "b":2}`, `{1:2}`, `{"a":1`, `{"a":`, `{"a"`, `{"a":1,`, `[`, `[1`, `[1,`, `]`, `}`, `{]`, `[}`,
		`[1 2]`, `{} {}`, `{}x`, `1 x`, `nul`, `nulx`, `tru`, `trUe`, `fals`, `falsey`, `t`, `n`, `f`,
		`/* c */ 1`, `1 // c`, "\xef\xbb\xbf{}", "\u00a0{}", "{}\x00", `[[[]]]`, `{"a":[{"b":[{"c":{}}]}]}`,
		`[true,false,null,"",0,[],{}]`, `{"a b":1, "\u0061":2, "a":3}`,
	}
	for _, c := range cases {
		checkSameAsEncodingJSON(t, []byte(c))
	}
	for _, b := range [][]byte{
		deep(maxJSONDepth, "[", "]"), deep(maxJSONDepth+1, "[", "]"), deep(maxJSONDepth+5, "[", "]"),
		[]byte(strings.Repeat(`{"a":`, maxJSONDepth) + "1" + strings.Repeat("}", maxJSONDepth)),
		[]byte(strings.Repeat(`{"a":`, maxJSONDepth+1) + "1" + strings.Repeat("}", maxJSONDepth+1)),
		[]byte(strings.Repeat(`[{"a":`, maxJSONDepth/2) + "1" + strings.Repeat("}]", maxJSONDepth/2)),
		[]byte(strings.Repeat("[", 100000)),
	} {
		checkSameAsEncodingJSON(t, b)
	}
	checkSameAsEncodingJSON(t, sentinelIncident50KB())
}

func TestParseJSONErrors(t *testing.T) {
	cases := []struct {
		in   string
		want string // as Decode shows it
	}{
		{``, "unexpected end of JSON input (at byte 0)"},
		{`{"id": `, "unexpected end of JSON input (at byte 7)"},
		{`{"id": 1,}`, "invalid character '}' looking for beginning of object key string (at byte 10)"},
		{`[1,]`, "invalid character ']' looking for beginning of value (at byte 4)"},
		{`{"a" 1}`, "invalid character '1' after object key (at byte 6)"},
		{`{"a":1 "b":2}`, `invalid character '"' after object key:value pair (at byte 8)`},
		{`[1 2]`, "invalid character '2' after array element (at byte 4)"},
		{`{} x`, "invalid character 'x' after top-level value (at byte 4)"},
		{`{'a':1}`, `invalid character '\'' looking for beginning of object key string (at byte 2)`},
		{"\"a\x01\"", `invalid character '\x01' in string literal (at byte 3)`},
		{`"\q"`, "invalid character 'q' in string escape code (at byte 3)"},
		{`"\u12g4"`, `invalid character 'g' in \u hexadecimal character escape (at byte 6)`},
		{`-a`, "invalid character 'a' in numeric literal (at byte 2)"},
		{`-`, "invalid character ' ' in numeric literal (at byte 1)"},
		{`1.e5`, "invalid character 'e' after decimal point in numeric literal (at byte 3)"},
		{`1e+`, "invalid character ' ' in exponent of numeric literal (at byte 3)"},
		{`trve`, "invalid character 'v' in literal true (expecting 'u') (at byte 3)"},
		{`[nul]`, "invalid character ']' in literal null (expecting 'l') (at byte 5)"},
		{"\xff", `invalid character 'ÿ' looking for beginning of value (at byte 1)`},
		{strings.Repeat("[", maxJSONDepth+1), "invalid character '[' exceeded max depth (at byte 10001)"},
		{`{"n": 1e400}`, "json: cannot unmarshal number 1e400 into Go value of type float64"},
		{`[1e400, ]`, "invalid character ']' looking for beginning of value (at byte 9)"},
	}
	for _, c := range cases {
		_, err := parseJSON([]byte(c.in))
		if err == nil {
			t.Errorf("%q: no error", c.in)
			continue
		}
		if got := jsonErrText(err); got != c.want {
			t.Errorf("%q: %q, want %q", c.in, got, c.want)
		}
		// Decode words it the same way, under the body field.
		_, derr := Decode(domain.SourceDefender, []byte(c.in), Options{})
		var fe *FieldError
		if c.in != "" && (!errors.As(derr, &fe) || fe.Field != "body" || fe.Msg != "not valid JSON: "+c.want) {
			t.Errorf("%q: Decode error %v", c.in, derr)
		}
	}
}

func TestArrayItemSpans(t *testing.T) {
	cases := []struct {
		body, key string
		want      []string // nil: an error
	}{
		{`[]`, "", []string{}},
		{` [ 1 , "a,]" , {"x":[1,2]} , [ ] , null ] `, "", []string{`1`, `"a,]"`, `{"x":[1,2]}`, `[ ]`, `null`}},
		{`{"value":[{"id":"1"},{"id":"2\"}"}]}`, "value", []string{`{"id":"1"}`, `{"id":"2\"}"}`}},
		{`{"value":[1],"x":"\\","value":[2,3]}`, "value", []string{`2`, `3`}},
		{`{"v\u0061lue":[true]}`, "value", []string{`true`}},
		{`{"alerts":"[1,2]","value":[{}]}`, "value", []string{`{}`}},
		{`{"value":null}`, "value", []string{}},
		{`{"value":{},"value":[1]}`, "value", []string{`1`}},
		{`{"value":[1],"value":{}}`, "value", nil},
		{`{"value":{}}`, "value", nil},
		{`{"other":[1]}`, "value", nil},
		{`{"value":"x"}`, "value", nil},
		{`[1,2`, "", nil},
	}
	for _, c := range cases {
		spans, err := arrayItemSpans([]byte(c.body), c.key)
		if c.want == nil {
			if err == nil {
				t.Errorf("%s[%q]: no error, spans %v", c.body, c.key, spans)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s[%q]: %v", c.body, c.key, err)
			continue
		}
		got := []string{}
		for _, s := range spans {
			got = append(got, c.body[s[0]:s[1]])
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s[%q]: %q, want %q", c.body, c.key, got, c.want)
		}
	}
}

func TestRawItemsOwnTheirBytes(t *testing.T) {
	body := []byte(`{"value":[{"id":"1"}, {"id":"2"}]}`)
	items, err := rawItems(body, "value")
	if err != nil || len(items) != 2 || string(items[0]) != `{"id":"1"}` || string(items[1]) != `{"id":"2"}` {
		t.Fatalf("%q %v", items, err)
	}
	_ = append(items[0], '!')
	copy(body, bytes.Repeat([]byte("x"), len(body)))
	if string(items[0]) != `{"id":"1"}` || string(items[1]) != `{"id":"2"}` {
		t.Fatalf("items changed with the body or each other: %q", items)
	}
}

func loadDefenderSample(b *testing.B) []byte {
	body, err := os.ReadFile(filepath.Join("..", "..", "testdata", "samples", "mde-alert.json"))
	if err != nil {
		b.Fatal(err)
	}
	return body
}

func benchParse(b *testing.B, body []byte, parse func([]byte) (any, error)) {
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parse(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseJSON(b *testing.B) {
	b.Run("defender", func(b *testing.B) { benchParse(b, loadDefenderSample(b), parseJSON) })
	b.Run("sentinel50KB", func(b *testing.B) { benchParse(b, sentinelIncident50KB(), parseJSON) })
}

func BenchmarkEncodingJSONAny(b *testing.B) {
	b.Run("defender", func(b *testing.B) { benchParse(b, loadDefenderSample(b), stdAny) })
	b.Run("sentinel50KB", func(b *testing.B) { benchParse(b, sentinelIncident50KB(), stdAny) })
}

func BenchmarkDecodeDefender(b *testing.B) {
	body := loadDefenderSample(b)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(domain.SourceDefender, body, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// parseJSON reuses its decoder and scratch stacks through a pool: neither a
// body that failed half-way nor one parsed at the same time may leak into
// another's tree.
func TestParseJSONReuse(t *testing.T) {
	for _, bad := range []string{`{"a":[1,2,{"b":`, `[[[{"x":"y"`, `{"a":1,"a":[`, "[\"\xff\", {\"k\": 1e400}, ]"} {
		if _, err := parseJSON([]byte(bad)); err == nil {
			t.Fatalf("%q: no error", bad)
		}
		checkSameAsEncodingJSON(t, []byte(`{"c":[3,{"d":[]}],"e":{}}`))
	}
	bodies := [][]byte{sentinelIncident50KB(), []byte(`[1,"a",{"b":[null,true]}]`), []byte(`{"x":"\u00e9\n","y":-0}`)}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				b := bodies[(g+i)%len(bodies)]
				got, err := parseJSON(b)
				want, _ := stdAny(b)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Errorf("body %d: tree differs (%v)", (g+i)%len(bodies), err)
					return
				}
			}
		})
	}
	wg.Wait()
}
