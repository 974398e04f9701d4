package rules

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/yamlpos"
)

// loadErrors loads src and returns its problems as "LINE:COL: message".
func loadErrors(t *testing.T, src string) []string {
	t.Helper()
	rs, err := Load("r.yaml", []byte(src), Options{})
	if err == nil {
		t.Fatalf("want errors, loaded %d rules", rs.Len())
	}
	var list yamlpos.ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("want a yamlpos.ErrorList, got %T: %v", err, err)
	}
	out := make([]string, len(list))
	for i, e := range list {
		if e.File != "r.yaml" {
			t.Errorf("error %q names file %q", e, e.File)
		}
		out[i] = strings.TrimPrefix(e.Error(), "r.yaml:")
	}
	return out
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // "LINE:COL: fragment", in order
	}{
		{"yaml syntax", "rules:\n  - name: a\n    scan: [Full\n", []string{"YAML syntax"}},
		{"empty file", "", []string{"1:1: empty document"}},
		{"not a mapping", "- name: a\n", []string{"1:1: expected a mapping at the top level"}},
		{"missing rules", "defaults: {cooldown: 1h}\n", []string{"1:1: missing rules"}},
		{"empty rules", "rules: []\n", []string{"1:8: rules: the list is empty"}},
		{"null rules", "rules:\n", []string{"1:7: rules: the list is empty"}},
		{"unknown top key", "rules:\n  - {name: a, scan: Full}\nrulez: []\n", []string{`3:1: unknown key "rulez" (did you mean "rules"?)`}},
		{"unknown rule key", "rules:\n  - name: a\n    scna: Full\n", []string{`2:5: rule "a" has no scan`, `3:5: unknown key "scna" (did you mean "scan"?)`}},
		{"unknown defaults key", "defaults:\n  cooldwn: 1h\nrules:\n  - {name: a, scan: none}\n", []string{`2:3: unknown key "cooldwn" (did you mean "cooldown"?)`}},
		{"bad scan case", "rules:\n  - name: a\n    scan: full\n", []string{`3:11: scan "full" is not valid (did you mean "Full"?)`}},
		{"bad scan word", "rules:\n  - name: a\n    scan: deep\n", []string{`3:11: scan "deep" is not valid; use Quick, Full or none`}},
		{"scan not a string", "rules:\n  - name: a\n    scan: [Full]\n", []string{"3:11: scan must be Quick, Full or none, got a list"}},
		{"missing name", "rules:\n  - scan: Full\n", []string{"2:5: rule has no name"}},
		{"blank name", "rules:\n  - name: \"  \"\n    scan: Full\n", []string{"2:5: rule has no name"}},
		{"duplicate name", "rules:\n  - name: a\n    match: {severity: high}\n    scan: Full\n  - name: A\n    scan: none\n", []string{`5:11: duplicate rule name "A" (first at line 2)`}},
		{"unknown match field", "rules:\n  - name: a\n    match: {sevrity: high}\n    scan: Full\n", []string{`3:13: match: unknown field "sevrity" (did you mean "severity"?)`}},
		{"unknown match field far", "rules:\n  - name: a\n    match: {hostname: x}\n    scan: Full\n", []string{`3:13: match: unknown field "hostname" (fields: source`}},
		{"bad raw path", "rules:\n  - name: a\n    match: {raw..x: 1}\n    scan: Full\n", []string{`3:13: match: "raw..x" is not a valid raw path`}},
		{"bad severity", "rules:\n  - name: a\n    match:\n      severity: [high, hgih]\n    scan: Full\n", []string{`4:24: match: "hgih" is not a severity (did you mean "high"?)`}},
		{"bad gte severity", "rules:\n  - name: a\n    match: {severity: {gte: urgent}}\n    scan: Full\n", []string{`3:29: match: "urgent" is not a severity; use one of informational, low, medium, high, critical`}},
		{"gte on other field", "rules:\n  - name: a\n    match: {title: {gte: medium}}\n    scan: Full\n", []string{"3:21: match: title: gte only applies to severity"}},
		{"bad source", "rules:\n  - name: a\n    match: {source: sentinal}\n    scan: Full\n", []string{`3:21: match: source "sentinal" is not a source (did you mean "sentinel"?)`}},
		{"bad regex", "rules:\n  - name: a\n    match:\n      title: {regex: \"(unclosed\"}\n    scan: Full\n", []string{`4:22: match: title: bad regex "(unclosed": missing closing )`}},
		{"bad glob", "rules:\n  - name: a\n    match:\n      device.dns_name: {glob: \"host[0-9\"}\n    scan: Full\n", []string{`4:31: match: device.dns_name: bad glob "host[0-9": unclosed [`}},
		{"unknown operator", "rules:\n  - name: a\n    match: {title: {regexp: x}}\n    scan: Full\n", []string{`3:21: match: title: unknown operator "regexp" (did you mean "regex"?)`}},
		{"empty list", "rules:\n  - name: a\n    match: {tags: []}\n    scan: Full\n", []string{"3:19: match: tags: empty list never matches"}},
		{"null value", "rules:\n  - name: a\n    match: {tags: }\n    scan: Full\n", []string{"match: tags: empty value"}},
		{"match not mapping", "rules:\n  - name: a\n    match: [severity]\n    scan: Full\n", []string{"3:12: match must be a mapping"}},
		{"nested list", "rules:\n  - name: a\n    match: {tags: [[a]]}\n    scan: Full\n", []string{"3:20: match: tags: a list inside a list"}},
		{"cel syntax", "rules:\n  - name: a\n    when: 'alert.tags.exists(t, '\n    scan: Full\n", []string{"3:11: when: Syntax error"}},
		{"cel unknown field", "rules:\n  - name: a\n    when: alert.sevrity == \"high\"\n    scan: Full\n", []string{"3:11: when: undefined field 'sevrity'"}},
		{"cel unknown variable", "rules:\n  - name: a\n    when: alrt.severity == \"high\"\n    scan: Full\n", []string{"3:11: when: undeclared reference to 'alrt'"}},
		{"cel not bool", "rules:\n  - name: a\n    when: alert.severity_rank + 1\n    scan: Full\n", []string{"3:11: when: expression must return bool, not int"}},
		{"cel too costly", "rules:\n  - name: a\n    when: 'alert.tags.all(x, alert.tags.all(y, alert.tags.all(z, x != z)))'\n    scan: Full\n", []string{"3:11: when: expression too expensive"}},
		{"cel too costly for the real field sizes", "rules:\n  - name: a\n    when: 'alert.tags.exists(t, alert.description.contains(t))'\n    scan: Full\n", []string{"3:11: when: expression too expensive"}},
		{"cel costly at the longest description", "rules:\n  - name: a\n    when: 'alert.description.contains(alert.url) || alert.url.contains(alert.description) || alert.description.endsWith(alert.url) || alert.description.contains(alert.url)'\n    scan: Full\n", []string{"3:11: when: expression too expensive"}},
		{"regex pattern from the alert", "rules:\n  - name: a\n    when: 'alert.description.matches(alert.title)'\n    scan: Full\n", []string{`3:11: when: rule "a": matches() needs a constant pattern (a quoted string), not one computed from the alert (expression line 1, column 32)`}},
		{"regex pattern from the alert, function form", "rules:\n  - name: b\n    when: 'matches(alert.description, \"^\" + alert.title)'\n    scan: Full\n", []string{`3:11: when: rule "b": matches() needs a constant pattern`}},
		{"regex pattern from a tag", "rules:\n  - name: c\n    when: 'alert.tags.exists(t, device.dns_name.matches(t))'\n    scan: Full\n", []string{`3:11: when: rule "c": matches() needs a constant pattern`}},
		{"cel empty", "rules:\n  - name: a\n    when: \"\"\n    scan: Full\n", []string{"3:11: when: expression is empty"}},
		{"bad template syntax", "rules:\n  - name: a\n    scan: Full\n    comment: \"{{.Alert.ID\"\n", []string{"4:14: comment: bad template"}},
		{"bad template field", "rules:\n  - name: a\n    scan: Full\n    comment: \"{{.Alert.Nope}}\"\n", []string{`4:14: comment: template fails: comment:1:8: executing "comment" at <.Alert.Nope>: can't evaluate field Nope`}},
		{"bad default template", "defaults:\n  comment: \"{{.Rule.Name}}\"\nrules:\n  - {name: a, scan: Full}\n", []string{"2:12: defaults.comment: template fails"}},
		{"bad duration", "rules:\n  - name: a\n    scan: Full\n    cooldown: 6 hours\n", []string{`4:15: invalid duration "6 hours"`}},
		{"duration without unit", "defaults: {cooldown: 3600}\nrules:\n  - {name: a, scan: Full}\n", []string{`1:22: duration "3600" needs a unit`}},
		{"negative cooldown", "rules:\n  - name: a\n    scan: Full\n    cooldown: -1h\n", []string{"4:15: cooldown must not be negative"}},
		{"dry_run not bool", "rules:\n  - name: a\n    scan: Full\n    dry_run: maybe\n", []string{"4:14: expected true or false"}},
		{"null rule", "rules:\n  -\n", []string{"2:4: empty rule"}},
		{"rule not mapping", "rules:\n  - just-a-name\n", []string{"2:5: expected a mapping"}},
		{"unreachable after catch-all", "rules:\n  - name: all\n    scan: none\n  - name: later\n    match: {severity: high}\n    scan: Full\n", []string{`4:5: rule "later" can never match: rule "all" (line 2)`}},
		{"duplicate key in rule", "rules:\n  - name: a\n    scan: Full\n    scan: Quick\n", []string{`4:5: duplicate key "scan" (first at line 3)`}},
		{"duplicate match field", "rules:\n  - name: a\n    match:\n      tags: x\n      tags: y\n    scan: Full\n", []string{`5:7: match: duplicate key "tags" (first at line 4)`}},
		{"every error reported", "defaults:\n  cooldown: forever\nrules:\n  - name: a\n    scan: Fulll\n  - name: b\n    match: {titel: x}\n    scan: Quick\n  - name: c\n    when: 'alert.nope'\n    scan: none\n", []string{
			`2:13: invalid duration "forever"`,
			`5:11: scan "Fulll" is not valid (did you mean "Full"?)`,
			`7:13: match: unknown field "titel" (did you mean "title"?)`,
			"10:11: when: undefined field 'nope'",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := loadErrors(t, tt.src)
			if len(got) != len(tt.want) {
				t.Fatalf("want %d errors, got %d:\n%s", len(tt.want), len(got), strings.Join(got, "\n"))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("error %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

func TestLoadDefaultsAndOverrides(t *testing.T) {
	src := `
defaults:
  cooldown: 2d
  dry_run: true
rules:
  - name: a
    match: {severity: critical}
    scan: Full
    cooldown: 30m
    dry_run: false
  - name: b
    scan: Quick
`
	rs, err := Load("r.yaml", []byte(src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rs.Len() != 2 || strings.Join(rs.Names(), ",") != "a,b" {
		t.Fatalf("rules: %v", rs.Names())
	}
	a, b := rs.rules[0], rs.rules[1]
	if a.cooldown != 30*time.Minute || a.dryRun {
		t.Errorf("rule a: cooldown %v dry_run %v", a.cooldown, a.dryRun)
	}
	if b.cooldown != 48*time.Hour || !b.dryRun {
		t.Errorf("rule b inherits defaults: cooldown %v dry_run %v", b.cooldown, b.dryRun)
	}
	if len(rs.Digest()) != 64 {
		t.Errorf("digest %q", rs.Digest())
	}
	rs2, _ := Load("other.yaml", []byte(src+"\n"), Options{})
	if rs2.Digest() == rs.Digest() {
		t.Error("digest must change with the bytes")
	}
}

func TestLoadBuiltInDefaults(t *testing.T) {
	rs, err := Load("r.yaml", []byte("rules:\n  - {name: a, scan: Full}\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rs.rules[0].cooldown != DefaultCooldown || rs.maxComment != DefaultMaxCommentLen {
		t.Errorf("cooldown %v, max comment %d", rs.rules[0].cooldown, rs.maxComment)
	}
}

func TestLoadFile(t *testing.T) {
	if _, err := LoadFile("testdata/does-not-exist.yaml", Options{}); err == nil || !strings.Contains(err.Error(), "read rules") {
		t.Errorf("missing file: %v", err)
	}
}

func TestLoadAliasBombInMatch(t *testing.T) {
	// Each level multiplies the conditions by ten through aliases: 10^6
	// without a bound, from a few lines, and well within the depth limit.
	var b strings.Builder
	b.WriteString("x0: &x0 [a, b]\n")
	for i := 1; i <= 6; i++ {
		fmt.Fprintf(&b, "x%d: &x%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("{not: *x%d}, ", i-1), 10), ", "))
	}
	src := "rules:\n  - name: r\n    match: {title: *x6}\n    scan: Full\n"
	// The anchors must be defined in the document itself; put them under
	// an unknown key, which is reported too.
	got := loadErrors(t, "anchors:\n"+indent(b.String())+src)
	joined := strings.Join(got, "\n")
	if !strings.Contains(joined, "too many conditions") {
		t.Errorf("got %s", joined)
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
}

func TestLoadBounds(t *testing.T) {
	// Many rules through one alias: every one is a duplicate name, and
	// checking stops after maxLoadErrors.
	src := "anchors: &r {name: a, scan: Full, when: 'alert.severity_rank > 1'}\nrules: [" + strings.Repeat("*r, ", 500) + "*r]\n"
	got := loadErrors(t, src)
	if len(got) > maxLoadErrors+2 || !strings.Contains(got[len(got)-1], "too many errors") {
		t.Errorf("%d errors, last %q", len(got), got[len(got)-1])
	}
	src = "anchors: &r {name: a, scan: Full}\nrules: [" + strings.Repeat("*r, ", MaxRules) + "*r]\n"
	got = loadErrors(t, src)
	if !strings.Contains(strings.Join(got, "\n"), "more than the 10000 allowed") {
		t.Errorf("got %v", got[:min(3, len(got))])
	}
}

func TestLoadErrorsAreOneLineEach(t *testing.T) {
	src := "rules:\n  - name: a\n    match:\n      \"raw.x\\ny\\e[31m\": {regex: \"(\"}\n      \"bad\\nkey\": x\n    scan: \"Fu\\nll\"\n"
	for _, e := range loadErrors(t, src) {
		if strings.ContainsAny(e, "\n\x1b") {
			t.Errorf("problem spans lines or carries escapes: %q", e)
		}
	}
}
