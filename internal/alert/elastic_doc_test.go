package alert

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/elastic-two-alerts.json from the template in docs/sources.md")

// docTemplate returns the Kibana webhook body template published in
// docs/sources.md, between its markers.
func docTemplate(t *testing.T) string {
	t.Helper()
	doc := string(readFile(t, filepath.Join("..", "..", "docs", "sources.md")))
	_, rest, ok := strings.Cut(doc, "<!-- elastic-template:begin -->\n```mustache\n")
	if !ok {
		t.Fatal("docs/sources.md: elastic template begin marker not found")
	}
	tmpl, _, ok := strings.Cut(rest, "```\n<!-- elastic-template:end -->")
	if !ok {
		t.Fatal("docs/sources.md: elastic template end marker not found")
	}
	return tmpl
}

var mustacheTag = regexp.MustCompile(`\{\{\{\s*([\w.]+)\s*\}\}\}|\{\{\s*([\w.]+)\s*\}\}`)

// renderKibana renders the small Mustache subset the template uses the way
// Kibana's webhook connector does: {{x}} is escaped for a JSON string,
// {{{x}}} is not escaped; an object renders as its JSON, an array as its
// items joined by commas (no brackets), keeping the key order of ctx.
func renderKibana(t *testing.T, tmpl string, ctx []byte) []byte {
	t.Helper()
	lookup := func(path string) json.RawMessage {
		cur := json.RawMessage(ctx)
		for part := range strings.SplitSeq(path, ".") {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(cur, &m); err != nil {
				t.Fatalf("context: %s: %v", path, err)
			}
			cur = m[part]
		}
		return cur
	}
	text := func(raw json.RawMessage) string {
		raw = bytes.TrimSpace(raw)
		switch {
		case len(raw) == 0:
			return ""
		case raw[0] == '"':
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatal(err)
			}
			return s
		case raw[0] == '[':
			var items []json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				t.Fatal(err)
			}
			parts := make([]string, len(items))
			for i, it := range items {
				var b bytes.Buffer
				if err := json.Compact(&b, it); err != nil {
					t.Fatal(err)
				}
				parts[i] = b.String()
			}
			return strings.Join(parts, ",")
		}
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	out := mustacheTag.ReplaceAllStringFunc(tmpl, func(tag string) string {
		m := mustacheTag.FindStringSubmatch(tag)
		if m[1] != "" {
			return text(lookup(m[1]))
		}
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(text(lookup(m[2]))); err != nil {
			t.Fatal(err)
		}
		s := strings.TrimSuffix(b.String(), "\n")
		return s[1 : len(s)-1]
	})
	return []byte(out)
}

func TestElasticTemplateInDoc(t *testing.T) {
	tmpl := docTemplate(t)
	rendered := renderKibana(t, tmpl, readFile(t, "testdata/elastic-context.json"))
	golden := filepath.Join("testdata", "elastic-two-alerts.json")
	if *update {
		if err := os.WriteFile(golden, rendered, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want := readFile(t, golden); !bytes.Equal(rendered, want) {
		t.Fatalf("the template in docs/sources.md no longer renders to %s (run go test -run TestElasticTemplateInDoc -update after checking the change):\n%s", golden, rendered)
	}
	if !json.Valid(rendered) {
		t.Fatalf("the template renders invalid JSON:\n%s", rendered)
	}
	got, err := Decode("elastic", rendered, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, "elastic", got, []want{
		{
			ID: "f3b1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90", Severity: High,
			Title: `Endpoint "Malware" Prevention`, Status: "open",
			URL: "https://kibana.example.com/app/security/alerts/redirect/f3b1c2d4?index=.alerts-security.alerts-default",
			// host.id is an agent GUID, not a machine id: the name stands alone.
			Devices: []Device{{DNSName: "ws-20.corp.example.com"}},
			Tags:    []string{"Elastic", "Endpoint Security"}, Mitre: []string{"T1204", "T1059"},
		},
		{
			ID: "0a1b2c3d4e5f60718293a4b5c6d7e8f9", Severity: Critical, Title: "Ransomware Detection", Status: "active",
			// No kibana.alert.url: the rule's URL from the template.
			URL:     "https://kibana.example.com/app/security/rules/id/0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5",
			Devices: []Device{{ID: "abcdefabcdefabcdefabcdefabcdefabcdefabcd"}},
		},
	})
	// Raw is each alert document as it appears in the body.
	if !bytes.Contains(rendered, got[1].Raw) || !bytes.HasPrefix(got[1].Raw, []byte(`{"@timestamp":"2024-05-06T06:59:59.500Z"`)) {
		t.Errorf("raw: %s", got[1].Raw)
	}
}
