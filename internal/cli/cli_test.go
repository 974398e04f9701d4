package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files of `rules test`")

// run runs one command line in-process.
func run(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Run(context.Background(), args, Env{
		Stdin:   strings.NewReader(stdin),
		Stdout:  &out,
		Stderr:  &errb,
		Getenv:  func(string) string { return "" },
		Version: "v1.2.3-test",
	})
	return code, out.String(), errb.String()
}

const exampleRules = "../../examples/rules.yaml"

func TestVersionAndUsage(t *testing.T) {
	tests := []struct {
		args     []string
		code     int
		inStdout string
		inStderr string
	}{
		{[]string{"version"}, ExitOK, "scanhook v1.2.3-test", ""},
		{nil, ExitUsage, "", "no command given"},
		{[]string{"frobnicate"}, ExitUsage, "", `unknown command "frobnicate"`},
		{[]string{"rules"}, ExitUsage, "", "want 'check' or 'test'"},
		{[]string{"rules", "lint"}, ExitUsage, "", `unknown subcommand "lint"`},
		{[]string{"rules", "check"}, ExitUsage, "", "no rule file given"},
		{[]string{"rules", "test", "--source", "splunk", "x.json"}, ExitUsage, "", "--rules is required"},
		{[]string{"rules", "test", "--rules", exampleRules, "x.json"}, ExitUsage, "", "--source is required"},
		{[]string{"rules", "test", "--rules", exampleRules, "--source", "qradar", "x.json"}, ExitUsage, "", `unknown source "qradar"`},
		{[]string{"rules", "test", "--rules", exampleRules, "--source", "splunk"}, ExitUsage, "", "no alert file given"},
		{[]string{"rules", "test", "--bogus"}, ExitUsage, "", "flag provided but not defined"},
		{[]string{"scan", "--machine", "x"}, ExitUsage, "", "--config is required"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, "", tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.code, errOut)
			}
			if !strings.Contains(out, tt.inStdout) || !strings.Contains(errOut, tt.inStderr) {
				t.Fatalf("stdout %q / stderr %q; want %q / %q", out, errOut, tt.inStdout, tt.inStderr)
			}
		})
	}
}

func TestRulesCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, good, "rules:\n  - name: all-quick\n    scan: Quick\n")
	writeFile(t, bad, strings.Join([]string{
		"rules:",
		"  - name: a",
		"    scan: Fast",
		"    match: {colour: red}",
		"  - name: a",
		"    scan: Quick",
		"    match: {title: {regex: \"(\"}}",
		"",
	}, "\n"))

	code, out, _ := run(t, "", "rules", "check", exampleRules, good)
	if code != ExitOK {
		t.Fatalf("valid files: exit %d, output %s", code, out)
	}
	if !strings.Contains(out, good+": ok, 1 rules") {
		t.Errorf("no ok line for %s: %s", good, out)
	}

	code, out, errOut := run(t, "", "rules", "check", good, bad, filepath.Join(dir, "missing.yaml"))
	if code != ExitInvalid {
		t.Fatalf("invalid files: exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var problems []string
	for _, l := range lines {
		if strings.HasPrefix(l, bad+":") {
			problems = append(problems, strings.TrimPrefix(l, bad+":"))
		}
	}
	// Every problem in the file, each on its own line with line:column.
	wants := []string{"3:11:", "4:13:", "5:11:", "7:28:"}
	if len(problems) != len(wants) {
		t.Fatalf("want %d problems for bad.yaml, got %d:\n%s", len(wants), len(problems), out)
	}
	for i, w := range wants {
		if !strings.HasPrefix(problems[i], w) {
			t.Errorf("problem %d = %q, want position %s", i, problems[i], w)
		}
	}
	if !strings.Contains(out, "missing.yaml: no such file or directory") {
		t.Errorf("missing file not reported plainly: %s", out)
	}
	if !strings.Contains(errOut, "2 of 3 rule files invalid") {
		t.Errorf("summary: %s", errOut)
	}
}

// goldenCases are the published samples and the decoders' own fixtures, each
// with the source it is sent as.
var goldenCases = []struct{ file, source string }{
	{"../../testdata/samples/mde-alert.json", "defender"},
	{"../../testdata/samples/mde-alerts-list.json", "defender"},
	{"../../testdata/samples/graph-alert-v2.json", "graph"},
	{"../../testdata/samples/azure-monitor-common-alert.json", "azuremonitor"},
	{"../../testdata/samples/azure-monitor-common-alert-metric.json", "azuremonitor"},
	{"../../testdata/samples/splunk-webhook.json", "splunk"},
	{"../../testdata/samples/alertmanager-webhook.json", "alertmanager"},
	{"../alert/testdata/sentinel-incident-hosts.json", "sentinel"},
	{"../alert/testdata/sentinel-alert-entities-array.json", "sentinel"},
	{"../alert/testdata/sentinel-alert-entities-string.json", "sentinel"},
	{"../alert/testdata/graph-several-devices.json", "graph"},
	{"../alert/testdata/defender-bad-device.json", "defender"},
	{"../alert/testdata/elastic-two-alerts.json", "elastic"},
	{"../alert/testdata/elastic-nested.json", "elastic"},
	{"../alert/testdata/azuremonitor-fired-custom.json", "azuremonitor"},
	{"../alert/testdata/alertmanager-firing-resolved.json", "alertmanager"},
	{"../alert/testdata/splunk-device.json", "splunk"},
}

// TestRulesTestGolden runs every sample through `rules test` with the
// example rules and compares the JSON lines with testdata/golden. Run with
// -update after an intended change, and review the diff.
func TestRulesTestGolden(t *testing.T) {
	for _, c := range goldenCases {
		name := strings.TrimSuffix(filepath.Base(c.file), ".json")
		t.Run(name, func(t *testing.T) {
			code, out, errOut := run(t, "", "rules", "test", "--rules", exampleRules, "--source", c.source, c.file)
			if code != ExitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			checkLines(t, out)
			golden := filepath.Join("testdata", "golden", name+".jsonl")
			if *update {
				writeFile(t, golden, out)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run go test ./internal/cli -run Golden -update): %v", err)
			}
			if out != string(want) {
				t.Errorf("output differs from %s\n--- got\n%s--- want\n%s", golden, out, want)
			}
		})
	}
}

// checkLines asserts the contract's shape on every output line, whatever the
// rules decided: exactly the contract's keys, a known scan, a reason.
func checkLines(t *testing.T, out string) {
	t.Helper()
	if strings.TrimSpace(out) == "" {
		t.Fatal("no output line")
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line is not JSON: %q", l)
		}
		for _, k := range []string{"alert_id", "source", "device", "rule", "scan", "comment", "reason"} {
			if _, ok := m[k]; !ok {
				t.Errorf("line lacks %q: %s", k, l)
			}
		}
		if len(m) != 7 {
			t.Errorf("line has extra keys: %s", l)
		}
		var scan, reason string
		_ = json.Unmarshal(m["scan"], &scan)
		_ = json.Unmarshal(m["reason"], &reason)
		if scan != "Quick" && scan != "Full" && scan != "none" {
			t.Errorf("scan %q: %s", scan, l)
		}
		if reason == "" {
			t.Errorf("empty reason: %s", l)
		}
		if string(m["device"]) == "null" && scan != "none" {
			t.Errorf("a scan without a device: %s", l)
		}
	}
}

func TestRulesTestInputs(t *testing.T) {
	dir := t.TempDir()
	noDevice := filepath.Join(dir, "no-device.json")
	writeFile(t, noDevice, `{"id":"da1","severity":"High","title":"Ransomware","category":"Ransomware","machineId":"../../x","computerDnsName":"bad name'; drop"}`)
	notJSON := filepath.Join(dir, "broken.json")
	writeFile(t, notJSON, `{"id": `)
	wrongType := filepath.Join(dir, "wrong.json")
	writeFile(t, wrongType, `{"id":"a1","severity":["High"]}`)

	t.Run("alert without a usable device", func(t *testing.T) {
		code, out, errOut := run(t, "", "rules", "test", "--rules", exampleRules, "--source", "defender", noDevice)
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		var line testLine
		if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &line); err != nil {
			t.Fatalf("want exactly one line, got %q", out)
		}
		if line.Device != nil || line.Scan != "none" || line.AlertID != "da1" {
			t.Fatalf("got %+v", line)
		}
		if !strings.Contains(line.Reason, "no usable device") {
			t.Errorf("reason %q does not explain", line.Reason)
		}
		if !strings.Contains(out, `"device":null`) {
			t.Errorf("device must be null: %s", out)
		}
	})
	t.Run("stdin and flags after files", func(t *testing.T) {
		body, err := os.ReadFile("../../testdata/samples/mde-alert.json")
		if err != nil {
			t.Fatal(err)
		}
		code, out, errOut := run(t, string(body), "rules", "test", "-", "--rules", exampleRules, "--source", "defender")
		if code != ExitOK || !strings.Contains(out, `"source":"defender"`) {
			t.Fatalf("exit %d, out %s, err %s", code, out, errOut)
		}
	})
	t.Run("bad files name the file and the problem, and the rest still run", func(t *testing.T) {
		code, out, errOut := run(t, "", "rules", "test", "--rules", exampleRules, "--source", "defender",
			notJSON, wrongType, filepath.Join(dir, "absent.json"), "../../testdata/samples/mde-alert.json")
		if code != ExitInvalid {
			t.Fatalf("exit %d, want %d", code, ExitInvalid)
		}
		for _, w := range []string{
			"alert file " + notJSON + ": not a valid defender alert",
			"alert file " + wrongType + ": not a valid defender alert: severity",
			"alert file " + filepath.Join(dir, "absent.json") + ": no such file or directory",
			"3 of 4 alert files could not be read",
		} {
			if !strings.Contains(errOut, w) {
				t.Errorf("stderr lacks %q:\n%s", w, errOut)
			}
		}
		if !strings.Contains(out, `"source":"defender"`) {
			t.Errorf("the good file was not evaluated: %s", out)
		}
	})
	t.Run("invalid rule file", func(t *testing.T) {
		bad := filepath.Join(dir, "bad-rules.yaml")
		writeFile(t, bad, "rules: []\n")
		code, _, errOut := run(t, "", "rules", "test", "--rules", bad, "--source", "defender", noDevice)
		if code != ExitInvalid || !strings.Contains(errOut, bad+":1:") {
			t.Fatalf("exit %d, stderr %s", code, errOut)
		}
	})
	t.Run("generic needs the config's mapping", func(t *testing.T) {
		code, _, errOut := run(t, "", "rules", "test", "--rules", exampleRules, "--source", "generic", noDevice)
		if code != ExitInvalid || !strings.Contains(errOut, "mapping") {
			t.Fatalf("exit %d, stderr %s", code, errOut)
		}
		cfg := filepath.Join(dir, "config.yaml")
		writeFile(t, cfg, "listen: 127.0.0.1:8080\nsources:\n  generic:\n    insecure_no_auth: true\n    mapping:\n      id: ref\n      severity: level\n      dns_name: asset.fqdn\n")
		alertFile := filepath.Join(dir, "generic.json")
		writeFile(t, alertFile, `{"ref":"T-1","level":"high","asset":{"fqdn":"web01.contoso.com"}}`)
		code, out, errOut := run(t, "", "rules", "test", "--rules", exampleRules, "--source", "generic", "--config", cfg, alertFile)
		if code != ExitOK || !strings.Contains(out, `"dns_name":"web01.contoso.com"`) || !strings.Contains(out, `"alert_id":"T-1"`) {
			t.Fatalf("exit %d, out %s, err %s", code, out, errOut)
		}
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
