package yamlpos

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type upper string

// UnmarshalYAMLPos accepts only upper-case words, to exercise the hook.
func (u *upper) UnmarshalYAMLPos(n *yaml.Node, file string) ErrorList {
	if n.Kind != yaml.ScalarNode || strings.ToUpper(n.Value) != n.Value {
		return ErrorList{At(file, n, "want upper case, got %s", Describe(n))}
	}
	*u = upper(n.Value)
	return nil
}

type inner struct {
	Food  string            `yaml:"food"`
	Count int               `yaml:"count"`
	Tags  []string          `yaml:"tags"`
	Env   map[string]string `yaml:"env"`
}

type cfg struct {
	Name    string         `yaml:"name"`
	Enabled bool           `yaml:"enabled"`
	Wait    time.Duration  `yaml:"wait"`
	Inner   inner          `yaml:"inner"`
	Items   []inner        `yaml:"items"`
	Ptr     *inner         `yaml:"ptr"`
	Mode    upper          `yaml:"mode"`
	Limit   Pos[int]       `yaml:"limit"`
	Raw     *yaml.Node     `yaml:"raw"`
	Ratio   float64        `yaml:"ratio"`
	Small   uint8          `yaml:"small"`
	Ignored string         `yaml:"-"`
	Extra   map[string]int `yaml:"extra"`
}

func TestUnmarshalValid(t *testing.T) {
	src := `
name: svc
enabled: true
wait: 1d12h
inner: {food: pizza, count: 0x10, tags: [a, b], env: {K: V}}
items:
  - food: x
  - count: 3
ptr: {food: y}
mode: QUICK
limit: 7
raw: {anything: [1, 2]}
ratio: 1.5
small: 255
`
	var c cfg
	if err := Unmarshal("c.yaml", []byte(src), &c); err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if c.Name != "svc" || !c.Enabled || c.Wait != 36*time.Hour {
		t.Errorf("scalars: %+v", c)
	}
	if c.Inner.Food != "pizza" || c.Inner.Count != 16 || len(c.Inner.Tags) != 2 || c.Inner.Env["K"] != "V" {
		t.Errorf("inner: %+v", c.Inner)
	}
	if len(c.Items) != 2 || c.Items[0].Food != "x" || c.Items[1].Count != 3 {
		t.Errorf("items: %+v", c.Items)
	}
	if c.Ptr == nil || c.Ptr.Food != "y" {
		t.Errorf("ptr: %+v", c.Ptr)
	}
	if c.Mode != "QUICK" {
		t.Errorf("mode: %q", c.Mode)
	}
	if !c.Limit.Set() || c.Limit.V != 7 || c.Limit.Node.Line != 11 {
		t.Errorf("limit: %+v", c.Limit)
	}
	if c.Raw == nil || c.Raw.Kind != yaml.MappingNode {
		t.Errorf("raw node not kept: %+v", c.Raw)
	}
	if c.Ratio != 1.5 || c.Small != 255 {
		t.Errorf("numbers: %v %v", c.Ratio, c.Small)
	}
}

func TestUnmarshalErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // each "LINE:COL: fragment", in order
	}{
		{"empty document", "", []string{"1:1: empty document"}},
		{"only a comment", "# nothing\n", []string{"1:1: empty document"}},
		{"null document", "~\n", []string{"1:1: empty document"}},
		{"non-mapping document", "- a\n- b\n", []string{"1:1: expected a mapping at the top level, got a list"}},
		{"scalar document", "hello\n", []string{`1:1: expected a mapping at the top level, got string "hello"`}},
		{"two documents", "name: a\n---\nname: b\n", []string{"2:1: only one YAML document"}},
		{"syntax error", "name: a\n  bad: [\n", []string{"YAML syntax:"}},
		{"tab indentation", "name: a\n\tenabled: true\n", []string{"2:1: YAML syntax:"}},
		{"unknown key with suggestion", "nmae: x\n", []string{`1:1: unknown key "nmae" (did you mean "name"?)`}},
		{"unknown key at depth", "inner:\n  food: a\n  fod: b\n", []string{`3:3: unknown key "fod" (did you mean "food"?)`}},
		{"unknown key in list item", "items:\n  - food: a\n  - cuont: 2\n", []string{`3:5: unknown key "cuont" (did you mean "count"?)`}},
		{"unknown key no suggestion", "inner: {zzzzzz: 1}\n", []string{`1:9: unknown key "zzzzzz" (allowed: food, count, tags, env)`}},
		{"ignored field is unknown", "ignored: x\n", []string{`1:1: unknown key "ignored"`}},
		{"duplicate key", "name: a\nenabled: true\nname: b\n", []string{`3:1: duplicate key "name" (first at line 1)`}},
		{"duplicate key in map", "inner:\n  env: {A: 1, A: 2}\n", []string{`2:15: duplicate key "A" (first at line 2)`}},
		{"wrong type string", "name: [a]\n", []string{"1:7: expected a string, got a list"}},
		{"wrong type bool", "enabled: yes\n", []string{`1:10: expected true or false, got string "yes"`}},
		{"wrong type int", "inner: {count: many}\n", []string{`1:16: expected an integer, got string "many"`}},
		{"int out of range", "small: 256\n", []string{`1:8: non-negative integer "256" out of range`}},
		{"wrong type struct", "inner: 5\n", []string{"1:8: expected a mapping, got int 5"}},
		{"wrong type list", "items: {food: a}\n", []string{"1:8: expected a list, got a mapping"}},
		{"duration without unit", "wait: 30\n", []string{`1:7: duration "30" needs a unit`}},
		{"bad duration", "wait: soon\n", []string{`1:7: invalid duration "soon"`}},
		{"hook error", "mode: quick\n", []string{`1:7: want upper case, got string "quick"`}},
		{"pos error", "limit: lots\n", []string{`1:8: expected an integer`}},
		{"non-string key", "? [a]\n: b\n", []string{"1:3: mapping key must be a string"}},
		{"merge key", "base: &b {food: a}\ninner:\n  <<: *b\n", []string{`1:1: unknown key "base"`, "3:3: merge keys"}},
		{"all errors collected", "nmae: x\nenabled: 3\ninner:\n  fod: a\n  count: x\nwait: 1y\n", []string{
			`1:1: unknown key "nmae"`, "2:10: expected true or false", `4:3: unknown key "fod"`,
			"5:10: expected an integer", `6:7: invalid duration "1y"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c cfg
			err := Unmarshal("f.yaml", []byte(tt.src), &c)
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("want ErrorList, got %v", err)
			}
			if len(list) != len(tt.want) {
				t.Fatalf("want %d errors, got %d:\n%v", len(tt.want), len(list), list)
			}
			for i, w := range tt.want {
				got := list[i].Error()
				if !strings.HasPrefix(w, "YAML") {
					w = "f.yaml:" + w
				}
				if !strings.Contains(got, w) {
					t.Errorf("error %d = %q, want it to contain %q", i, got, w)
				}
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"6h", 6 * time.Hour, ""},
		{"90m", 90 * time.Minute, ""},
		{"7d", 7 * 24 * time.Hour, ""},
		{"1d12h", 36 * time.Hour, ""},
		{"0.5d", 12 * time.Hour, ""},
		{"0", 0, ""},
		{"", 0, "empty"},
		{"12", 0, "needs a unit"},
		{"3 days", 0, "invalid duration"},
		{"99999999d", 0, "out of range"},
		{"-1d", -24 * time.Hour, ""},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseDuration(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestErrorListSortedAndFormatted(t *testing.T) {
	l := ErrorList{
		{File: "a", Line: 3, Col: 1, Msg: "third"},
		{File: "a", Line: 1, Col: 5, Msg: "second"},
		{File: "a", Line: 1, Col: 2, Msg: "first"},
	}
	err := l.Err()
	want := "a:1:2: first\na:1:5: second\na:3:1: third"
	if err.Error() != want {
		t.Errorf("got %q, want %q", err.Error(), want)
	}
	if (ErrorList{}).Err() != nil {
		t.Error("empty list must be a nil error")
	}
}

func TestSuggest(t *testing.T) {
	cands := []string{"severity", "source", "title", "tags"}
	for in, want := range map[string]string{
		"sevreity": "severity", "Severity": "severity", "titel": "title", "tag": "tags",
		"xyz": "", "": "",
	} {
		if got := Suggest(in, cands); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAliasBomb(t *testing.T) {
	// Each level doubles; decoding into a struct must stop at the node budget.
	var b strings.Builder
	b.WriteString("a0: &a0 [[], []]\n")
	for i := 1; i < 30; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [*a%d, *a%d]\n", i, i, i-1, i-1)
	}
	var m map[string]tree
	err := Unmarshal("bomb.yaml", []byte(b.String()), &m)
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("want a too-large error, got %v", err)
	}
}

type tree []tree

func TestErrorsCapped(t *testing.T) {
	var b strings.Builder
	b.WriteString("items:\n")
	for range 500 {
		b.WriteString("  - count: x\n")
	}
	var c cfg
	err := Unmarshal("many.yaml", []byte(b.String()), &c)
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("want ErrorList, got %v", err)
	}
	if len(list) != maxErrors+1 || !strings.Contains(list[len(list)-1].Msg, "too many errors") || list[len(list)-1].Line != list[len(list)-2].Line {
		t.Errorf("got %d errors, last %v", len(list), list[len(list)-1])
	}
}
