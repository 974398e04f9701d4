package rules

import (
	"encoding/json"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

const (
	idA = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	idB = "2f6cd0e8f524eee8013d3a43f529813c95e1dd18"
)

func mustLoad(t testing.TB, src string) *Ruleset {
	t.Helper()
	rs, err := Load("t.yaml", []byte(src), Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return rs
}

func sampleAlert() *alert.Alert {
	return &alert.Alert{
		ID: "da1", Source: "defender", Severity: domain.SeverityHigh, Title: "Ransomware encrypted files",
		Category: "Ransomware", DetectionSource: "WindowsDefenderAv", ThreatFamily: "LockBit",
		Status: "New", MitreTechniques: []string{"T1059", "T1486"}, Tags: []string{"finance", "Crown-Jewel"},
		TenantID: "tenant-1", URL: "https://security.microsoft.com/alerts/da1",
		Devices: []alert.Device{{ID: idA, DNSName: "ws-01.corp.example"}},
		Raw:     json.RawMessage(`{"properties":{"severity":"High","score":7.5,"flag":true},"evidence":[{"host":"a.example"},{"host":"b.example"}],"ids":[1,2]}`),
	}
}

// TestOperators checks each match operator, positive and negative, on a
// one-rule file: the rule matches or "no rule matched".
func TestOperators(t *testing.T) {
	tests := []struct {
		name  string
		match string
		want  bool
	}{
		{"equals case-insensitive", `{category: ransomware}`, true},
		{"equals miss", `{category: Malware}`, false},
		{"list any of", `{category: [Malware, RANSOMWARE]}`, true},
		{"list none of", `{category: [Malware, Phishing]}`, false},
		{"severity equals", `{severity: High}`, true},
		{"severity list miss", `{severity: [low, medium]}`, false},
		{"gte equal", `{severity: {gte: high}}`, true},
		{"gte below", `{severity: {gte: medium}}`, true},
		{"gte above", `{severity: {gte: critical}}`, false},
		{"lte", `{severity: {lte: high}}`, true},
		{"lte miss", `{severity: {lte: medium}}`, false},
		{"range", `{severity: {gte: medium, lte: high}}`, true},
		{"range miss", `{severity: {gte: low, lte: medium}}`, false},
		{"regex", `{title: {regex: "(?i)ransom|encrypt"}}`, true},
		{"regex is case-sensitive unless asked", `{title: {regex: "ransomware"}}`, false},
		{"regex miss", `{title: {regex: "^phish"}}`, false},
		{"glob", `{device.dns_name: {glob: "*.CORP.example"}}`, true},
		{"glob question mark", `{device.dns_name: {glob: "ws-0?.corp.example"}}`, true},
		{"glob class", `{device.dns_name: {glob: "ws-[0-9][!a-z].corp.example"}}`, true},
		{"glob whole value", `{device.dns_name: {glob: "ws-01"}}`, false},
		{"glob dots are literal", `{device.dns_name: {glob: "ws-01.corpXexample"}}`, false},
		{"not", `{category: {not: Malware}}`, true},
		{"not miss", `{category: {not: Ransomware}}`, false},
		{"not list", `{category: {not: [Malware, Phishing]}}`, true},
		{"not regex", `{title: {not: {regex: "(?i)ransom"}}}`, false},
		{"list with operators", `{title: [Phishing, {regex: "files$"}]}`, true},
		{"list field any element", `{tags: crown-jewel}`, true},
		{"list field no element", `{tags: hr}`, false},
		{"list field glob", `{mitre_techniques: {glob: "T14*"}}`, true},
		{"not on list field means none", `{tags: {not: finance}}`, false},
		{"not on list field holds", `{tags: {not: hr}}`, true},
		{"device id", `{device.id: ` + idA + `}`, true},
		{"device id miss", `{device.id: ` + idB + `}`, false},
		{"source", `{source: Defender}`, true},
		{"tenant", `{tenant_id: tenant-1}`, true},
		{"detection source", `{detection_source: windowsdefenderav}`, true},
		{"threat family", `{threat_family: {regex: "^Lock"}}`, true},
		{"status", `{status: new}`, true},
		{"all keys must hold", `{category: Ransomware, severity: low}`, false},
		{"raw string", `{raw.properties.severity: high}`, true},
		{"raw number text", `{raw.properties.score: "7.5"}`, true},
		{"raw bool text", `{raw.properties.flag: "true"}`, true},
		{"raw through array", `{raw.evidence.host: b.example}`, true},
		{"raw array index", `{raw.evidence.0.host: b.example}`, false},
		{"raw array index hit", `{raw.evidence.1.host: b.example}`, true},
		{"raw array of scalars", `{raw.ids: "2"}`, true},
		{"raw missing path", `{raw.nope.x: y}`, false},
		{"raw missing path negated", `{raw.nope.x: {not: y}}`, true},
		{"empty match is catch-all", `{}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := mustLoad(t, "rules:\n  - name: r\n    match: "+tt.match+"\n    scan: Full\n")
			d := rs.Evaluate(sampleAlert())
			if len(d) != 1 {
				t.Fatalf("want one decision, got %d", len(d))
			}
			if got := d[0].Rule == "r"; got != tt.want {
				t.Errorf("matched = %v, want %v (reason %q)", got, tt.want, d[0].Reason)
			}
			if !tt.want && (d[0].Scan != domain.ScanNone || d[0].Reason != "no rule matched") {
				t.Errorf("no-match decision: %+v", d[0])
			}
		})
	}
}

func TestSeverityNotNormalized(t *testing.T) {
	// A severity outside the normalized set matches no range, but plain
	// equality and regex still see its text.
	rs := mustLoad(t, "rules:\n  - name: range\n    match: {severity: {gte: informational}}\n    scan: Full\n  - name: re\n    match: {severity: {regex: \"^$\"}}\n    scan: Quick\n")
	a := sampleAlert()
	a.Severity = ""
	if d := rs.Evaluate(a); d[0].Rule != "re" {
		t.Errorf("got %+v", d[0])
	}
}

func TestCEL(t *testing.T) {
	tests := []struct {
		when string
		want bool
	}{
		{`alert.tags.exists(t, t.lowerAscii() == "crown-jewel")`, true},
		{`alert.severity_rank >= 3`, true},
		{`alert.severity_rank >= severity_rank("critical")`, false},
		{`severity_rank("High") == 3 && severity_rank("bogus") == -1`, true},
		{`alert.severity == "high" && alert.category == "Ransomware"`, true},
		{`device.dns_name.endsWith(".corp.example") && device.id.size() == 40`, true},
		{`alert.devices.size() == 1 && alert.devices[0].id == device.id`, true},
		{`"T1486" in alert.mitre_techniques`, true},
		{`alert.url.startsWith("https://") && alert.tenant_id == "tenant-1" && alert.description == ""`, true},
		{`alert.id == "other"`, false},
		{`alert.tags[5] == "x"`, false}, // runtime error: not a match
	}
	for _, tt := range tests {
		t.Run(tt.when, func(t *testing.T) {
			rs := mustLoad(t, "rules:\n  - name: r\n    when: '"+tt.when+"'\n    scan: Full\n")
			d := rs.Evaluate(sampleAlert())[0]
			if got := d.Rule == "r"; got != tt.want {
				t.Errorf("matched = %v, want %v (reason %q)", got, tt.want, d.Reason)
			}
		})
	}
}

func TestCELRuntimeErrorExplained(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: r\n    when: 'alert.tags[5] == \"x\"'\n    scan: Full\n")
	d := rs.Evaluate(sampleAlert())[0]
	if !strings.HasPrefix(d.Reason, "no rule matched (rule \"r\": when failed:") || !strings.Contains(d.Reason, "index") {
		t.Errorf("reason %q", d.Reason)
	}
}

func TestMatchAndWhenAreANDed(t *testing.T) {
	rs := mustLoad(t, `
rules:
  - name: both
    match: {severity: high}
    when: 'alert.tags.exists(t, t == "hr")'
    scan: Full
  - name: fallback
    scan: Quick
`)
	if d := rs.Evaluate(sampleAlert())[0]; d.Rule != "fallback" {
		t.Errorf("match held but when did not: got %q", d.Rule)
	}
	a := sampleAlert()
	a.Tags = append(a.Tags, "hr")
	d := rs.Evaluate(a)[0]
	if d.Rule != "both" {
		t.Fatalf("got %q", d.Rule)
	}
	want := `rule "both" matched: severity "high" = "high"; when "alert.tags.exists(t, t == \"hr\")"`
	if d.Reason != want {
		t.Errorf("reason\n got %q\nwant %q", d.Reason, want)
	}
}

func TestEvaluationOrder(t *testing.T) {
	rs := mustLoad(t, `
defaults:
  cooldown: 1h
rules:
  - name: exclude-test-hosts
    match: {device.dns_name: {glob: "test-*"}}
    scan: none
  - name: ransomware-full
    match:
      severity: [high, critical]
      category: [Ransomware, Malware]
    scan: Full
    cooldown: 12h
  - name: high-quick
    match: {severity: high}
    scan: Quick
    dry_run: true
  - name: rest
    scan: none
`)
	a := sampleAlert()
	a.Devices = []alert.Device{
		{ID: idA, DNSName: "ws-01.corp.example"},
		{DNSName: "test-07.corp.example"},
		{ID: idB},
	}
	ds := rs.Evaluate(a)
	if len(ds) != 3 {
		t.Fatalf("want a decision per device, got %d", len(ds))
	}
	want := []struct {
		rule     string
		scan     string
		dev      alert.Device
		cooldown time.Duration
	}{
		{"ransomware-full", domain.ScanFull, a.Devices[0], 12 * time.Hour},
		{"exclude-test-hosts", domain.ScanNone, a.Devices[1], 0},
		{"ransomware-full", domain.ScanFull, a.Devices[2], 12 * time.Hour},
	}
	for i, w := range want {
		d := ds[i]
		if d.Rule != w.rule || d.Scan != w.scan || d.Device == nil || *d.Device != w.dev || d.Cooldown != w.cooldown {
			t.Errorf("decision %d = %+v (device %+v), want %+v", i, d, d.Device, w)
		}
		if d.AlertID != "da1" || d.Source != "defender" {
			t.Errorf("decision %d ids: %q %q", i, d.AlertID, d.Source)
		}
	}
	if ds[1].Comment != "" {
		t.Errorf("scan none carries no comment, got %q", ds[1].Comment)
	}
	// The decision's device is a copy: changing it leaves the alert alone.
	ds[0].Device.DNSName = "changed"
	if a.Devices[0].DNSName != "ws-01.corp.example" {
		t.Error("Decision.Device aliases the alert")
	}

	a.Category = "Execution"
	d := rs.Evaluate(a)[0]
	if d.Rule != "high-quick" || d.Scan != domain.ScanQuick || !d.DryRun || d.Cooldown != time.Hour {
		t.Errorf("second rule in order: %+v", d)
	}
	a.Severity = domain.SeverityLow
	if d := rs.Evaluate(a)[0]; d.Rule != "rest" || d.Scan != domain.ScanNone || d.Reason != `rule "rest" matched (no conditions)` {
		t.Errorf("catch-all: %+v", d)
	}
}

func TestNoRuleMatched(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: crit\n    match: {severity: critical}\n    scan: Full\n")
	d := rs.Evaluate(sampleAlert())[0]
	if d.Rule != "" || d.Scan != domain.ScanNone || d.Reason != "no rule matched" || d.Comment != "" || d.Cooldown != 0 {
		t.Errorf("%+v", d)
	}
}

func TestSkipDroppedAndNoDevice(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: all\n    scan: Full\n")
	dropped := []alert.DroppedDevice{{Value: "bad host!", Reason: "not a valid DNS name"}, {Value: "xyz", Reason: "not a machine id"}}

	t.Run("skip with devices", func(t *testing.T) {
		a := sampleAlert()
		a.Devices = append(a.Devices, alert.Device{ID: idB})
		a.Skip = "alert is Resolved"
		ds := rs.Evaluate(a)
		if len(ds) != 2 {
			t.Fatalf("want 2 decisions, got %d", len(ds))
		}
		for i, d := range ds {
			if d.Device == nil || d.Device.Key() != a.Devices[i].Key() || d.Scan != domain.ScanNone || d.Rule != "" || d.Reason != "alert is Resolved" {
				t.Errorf("decision %d: %+v", i, d)
			}
		}
	})
	t.Run("skip without devices", func(t *testing.T) {
		a := sampleAlert()
		a.Devices, a.Skip = nil, "status is not firing"
		ds := rs.Evaluate(a)
		if len(ds) != 1 || ds[0].Device != nil || ds[0].Reason != "status is not firing" || ds[0].Scan != domain.ScanNone {
			t.Errorf("%+v", ds)
		}
	})
	t.Run("no usable device", func(t *testing.T) {
		a := sampleAlert()
		a.Devices, a.Dropped = nil, dropped
		ds := rs.Evaluate(a)
		want := `no usable device: "bad host!" (not a valid DNS name); "xyz" (not a machine id)`
		if len(ds) != 1 || ds[0].Device != nil || ds[0].Scan != domain.ScanNone || ds[0].Reason != want {
			t.Errorf("%+v", ds)
		}
	})
	t.Run("no device at all", func(t *testing.T) {
		a := sampleAlert()
		a.Devices = nil
		ds := rs.Evaluate(a)
		if len(ds) != 1 || ds[0].Reason != "no usable device" {
			t.Errorf("%+v", ds)
		}
	})
	t.Run("dropped beside usable devices", func(t *testing.T) {
		a := sampleAlert()
		a.Dropped = dropped
		ds := rs.Evaluate(a)
		if len(ds) != 3 {
			t.Fatalf("want 3 decisions, got %+v", ds)
		}
		if ds[0].Device == nil || ds[0].Scan != domain.ScanFull {
			t.Errorf("usable device: %+v", ds[0])
		}
		for i, want := range []string{`device dropped: "bad host!" (not a valid DNS name)`, `device dropped: "xyz" (not a machine id)`} {
			d := ds[i+1]
			if d.Device != nil || d.Scan != domain.ScanNone || d.Rule != "" || d.Reason != want || d.AlertID != "da1" {
				t.Errorf("dropped %d: %+v", i, d)
			}
		}
	})
}

func TestComments(t *testing.T) {
	long := strings.Repeat("é", 50)
	tests := []struct {
		name    string
		tmpl    string // "" uses the defaults
		max     int
		title   string
		want    string
		wantLen int
	}{
		{"built-in default", "", 0, "Ransom", `scanhook: Defender alert da1 "Ransom" (high) matched rule r. https://security.microsoft.com/alerts/da1`, 0},
		{"built-in default without title", "", 0, "", `scanhook: Defender alert da1 (high) matched rule r. https://security.microsoft.com/alerts/da1`, 0},
		{"device fields", "{{.Rule}} on {{.Device.DNSName}} ({{.Device.ID}})", 0, "x", "r on ws-01.corp.example (" + idA + ")", 0},
		{"control characters stripped", "{{.Alert.Title}}", 0, "a\x00b\x1b[31mc\u202ed\r\ne\tf\x7f", "ab[31mcd e f", 0},
		{"spaces collapsed and trimmed", "  {{.Rule}}   {{.Alert.Description}}  {{.Alert.ID}} ", 0, "x", "r da1", 0},
		{"invalid utf-8 dropped", "{{.Alert.Title}}", 0, "a\xffb", "ab", 0},
		{"capped with mark", "{{.Alert.Title}}", 10, "0123456789abc", "012345678…", 10},
		{"exactly at cap", "{{.Alert.Title}}", 10, "0123456789", "0123456789", 10},
		{"cap counts runes", "{{.Alert.Title}}", 20, long, strings.Repeat("é", 19) + "…", 20},
		{"text/template path", `{{.Alert.Source | printf "%s!"}} {{range .Alert.Tags}}[{{.}}]{{end}} {{index .Alert.MitreTechniques 0}}`, 0, "x", "defender! [finance][Crown-Jewel] T1059", 0},
		{"text/template path capped", `{{range .Alert.Tags}}{{$.Alert.Title}}{{end}}`, 5, "abcdef", "abcd…", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "rules:\n  - name: r\n    scan: Full\n"
			if tt.tmpl != "" {
				src += "    comment: '" + tt.tmpl + "'\n"
			}
			rs, err := Load("t.yaml", []byte(src), Options{MaxCommentLen: tt.max})
			if err != nil {
				t.Fatal(err)
			}
			a := sampleAlert()
			a.Title = tt.title
			d := rs.Evaluate(a)[0]
			if d.Comment != tt.want {
				t.Errorf("comment\n got %q\nwant %q", d.Comment, tt.want)
			}
			if tt.wantLen > 0 && len([]rune(d.Comment)) != tt.wantLen {
				t.Errorf("length %d runes, want %d", len([]rune(d.Comment)), tt.wantLen)
			}
		})
	}
}

func TestCommentTemplateFailsAtRuntime(t *testing.T) {
	// Passes the load check (the sample alert has tags), fails on an alert
	// without: the built-in comment is used and the reason says why.
	rs := mustLoad(t, "rules:\n  - name: r\n    scan: Full\n    comment: '{{index .Alert.Tags 0}}'\n")
	a := sampleAlert()
	a.Tags = nil
	d := rs.Evaluate(a)[0]
	if d.Scan != domain.ScanFull || !strings.HasPrefix(d.Comment, `scanhook: Defender alert da1 "`) || !strings.Contains(d.Reason, "comment template failed") {
		t.Errorf("%+v", d)
	}
}

// TestFastCommentPathMatchesTemplate checks that the direct renderer gives
// what text/template would for every field it handles.
func TestFastCommentPathMatchesTemplate(t *testing.T) {
	var b strings.Builder
	for _, name := range simpleFields[1:] {
		b.WriteString("<{{." + name + "}}>")
	}
	tmpl := template.Must(template.New("x").Parse(b.String()))
	ct := newCommentTmpl(tmpl)
	if ct.parts == nil {
		t.Fatal("template should take the direct path")
	}
	data := sampleData()
	data.Alert.Skip = "skip"
	var want strings.Builder
	if err := tmpl.Execute(&want, data); err != nil {
		t.Fatal(err)
	}
	got, err := ct.render(data, 100000)
	if err != nil || got != want.String() {
		t.Errorf("direct %q\n template %q (%v)", got, want.String(), err)
	}
	if newCommentTmpl(template.Must(template.New("y").Parse("{{.Alert.Tags}}"))).parts != nil {
		t.Error("a non-string field must go through text/template")
	}
}

func TestRawDecodedLazily(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: r\n    match: {raw.a: x}\n    scan: Full\n")
	a := sampleAlert()
	a.Raw = json.RawMessage(`not json`)
	if d := rs.Evaluate(a)[0]; d.Rule != "" {
		t.Errorf("bad raw must not match: %+v", d)
	}
	a.Raw = json.RawMessage(`{"a":"X"}`)
	a.Devices = append(a.Devices, alert.Device{ID: idB})
	for _, d := range rs.Evaluate(a) {
		if d.Rule != "r" || !strings.Contains(d.Reason, `raw.a ["X"] = "x"`) {
			t.Errorf("%+v", d)
		}
	}
}

func TestReasonQuotesAlertText(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: r\n    match: {title: {regex: x}}\n    scan: Full\n")
	a := sampleAlert()
	a.Title = "x\"\n" + strings.Repeat("y", 200)
	d := rs.Evaluate(a)[0]
	if strings.ContainsAny(d.Reason, "\n") || !strings.Contains(d.Reason, `title "x\"\n`) || !strings.Contains(d.Reason, `…" matches /x/`) {
		t.Errorf("reason %q", d.Reason)
	}
}

func TestExampleRules(t *testing.T) {
	rs, err := LoadFile("../examples/rules.yaml", Options{})
	if err != nil {
		t.Fatalf("examples/rules.yaml: %v", err)
	}
	dev := []alert.Device{{ID: idA, DNSName: "ws-01.corp.example"}}
	tests := []struct {
		name   string
		a      alert.Alert
		rule   string
		scan   string
		dryRun bool
	}{
		{"ransomware high", alert.Alert{Source: "defender", Severity: domain.SeverityHigh, Category: "Ransomware"}, "ransomware-full", domain.ScanFull, false},
		{"resolved is ignored", alert.Alert{Source: "defender", Severity: domain.SeverityCritical, Category: "Ransomware", Status: "Resolved"}, "closed-or-benign", domain.ScanNone, false},
		{"encrypt in title", alert.Alert{Source: "sentinel", Severity: domain.SeverityMedium, Title: "Mass file ENCRYPTION"}, "encryption-activity-full", domain.ScanFull, false},
		{"crown jewel via CEL", alert.Alert{Source: "graph", Severity: domain.SeverityLow, Tags: []string{"Crown-Jewel"}}, "crown-jewel-full", domain.ScanFull, false},
		{"crown jewel but informational", alert.Alert{Source: "graph", Severity: domain.SeverityInformational, Tags: []string{"crown-jewel"}}, "everything-else", domain.ScanNone, false},
		{"trial source dry run", alert.Alert{Source: "alertmanager", Severity: domain.SeverityHigh}, "trial-source-dry-run", domain.ScanQuick, true},
		{"medium quick", alert.Alert{Source: "splunk", Severity: domain.SeverityMedium}, "medium-quick", domain.ScanQuick, false},
		{"informational none", alert.Alert{Source: "defender", Severity: domain.SeverityInformational}, "everything-else", domain.ScanNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.a
			a.ID, a.Devices = "x1", dev
			d := rs.Evaluate(&a)[0]
			if d.Rule != tt.rule || d.Scan != tt.scan || d.DryRun != tt.dryRun {
				t.Errorf("got rule %q scan %q dry_run %v (%s)", d.Rule, d.Scan, d.DryRun, d.Reason)
			}
			if d.Scan != domain.ScanNone && !strings.Contains(d.Comment, "x1") {
				t.Errorf("comment does not point back to the alert: %q", d.Comment)
			}
		})
	}
	t.Run("build agent", func(t *testing.T) {
		a := alert.Alert{ID: "x2", Source: "defender", Severity: domain.SeverityHigh, Category: "Execution",
			Devices: []alert.Device{{DNSName: "build-12.corp.example"}}}
		d := rs.Evaluate(&a)[0]
		if d.Rule != "build-agents-quick" || d.Scan != domain.ScanQuick || d.Cooldown != 24*time.Hour {
			t.Errorf("%+v", d)
		}
	})
}

func TestEmptyCommentFallsBack(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: r\n    scan: Quick\n    comment: '{{.Alert.Description}}'\n")
	d := rs.Evaluate(sampleAlert())[0]
	if !strings.HasPrefix(d.Comment, `scanhook: Defender alert da1 "`) || !strings.Contains(d.Reason, "comment rendered empty") {
		t.Errorf("%+v", d)
	}
}

func TestRunawayTemplateStops(t *testing.T) {
	rs := mustLoad(t, "rules:\n  - name: r\n    scan: Quick\n    comment: '{{range .Alert.Tags}}{{range $.Alert.Tags}}{{$.Alert.Title}}{{end}}{{end}}'\n")
	a := sampleAlert()
	a.Tags = make([]string, 20000) // 4e8 iterations if the template ran to the end
	a.Title = "abc"
	d := rs.Evaluate(a)[0]
	if want := strings.Repeat("abc", 333) + "…"; d.Comment != want {
		t.Errorf("comment %q…, %d runes", d.Comment[:min(len(d.Comment), 20)], len([]rune(d.Comment)))
	}
}

func TestConcurrentEvaluate(t *testing.T) {
	rs, err := LoadFile("../examples/rules.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan string)
	for range 4 {
		go func() {
			var rule string
			for range 200 {
				rule = rs.Evaluate(sampleAlert())[0].Rule
			}
			done <- rule
		}()
	}
	for range 4 {
		if r := <-done; r != "ransomware-full" {
			t.Errorf("got %q", r)
		}
	}
}

// TestSimpleGlobAgreesWithRegexp checks the regexp-free glob path against
// the general one.
func TestSimpleGlobAgreesWithRegexp(t *testing.T) {
	globs := []string{"*.corp.example", "WS-*", "*corp*", "ws-01.corp.example", "*.Corp.*", "x*"}
	inputs := []string{"ws-01.corp.example", "WS-01.CORP.EXAMPLE", "corp", ".corp.example", "", "x", "ws-", "a.corp.b", "é.corp.example", "corp.example"}
	for _, g := range globs {
		re, err := compileGlob(g)
		if err != nil {
			t.Fatal(err)
		}
		fast, ok := simpleGlob(g, nil).(globMatcher)
		if !ok {
			t.Fatalf("%q should take the simple path", g)
		}
		for _, in := range inputs {
			v := values{one: in}
			if got, want := fast.match(v), re.MatchString(in); got != want {
				t.Errorf("glob %q on %q: simple %v, regexp %v", g, in, got, want)
			}
		}
	}
	for _, g := range []string{"*", "a?b", "[ab]*", "*a*b", `a\*`, "é*"} {
		if _, ok := simpleGlob(g, regexMatcher{}).(globMatcher); ok {
			t.Errorf("%q must take the regexp path", g)
		}
	}
}
