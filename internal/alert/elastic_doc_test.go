package alert

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
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

func TestElasticTemplateInDoc(t *testing.T) {
	tmpl := docTemplate(t)
	rendered := testutil.RenderKibana(t, tmpl, readFile(t, "testdata/elastic-context.json"))
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
			ID: "f3b1c2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90", Severity: domain.SeverityHigh,
			Title: `Endpoint "Malware" Prevention`, Status: "open",
			URL: "https://kibana.example.com/app/security/alerts/redirect/f3b1c2d4?index=.alerts-security.alerts-default",
			// host.id is an agent GUID, not a machine id: the name stands alone.
			Devices: []Device{{DNSName: "ws-20.corp.example.com"}},
			Tags:    []string{"Elastic", "Endpoint Security"}, Mitre: []string{"T1204", "T1059"},
		},
		{
			ID: "0a1b2c3d4e5f60718293a4b5c6d7e8f9", Severity: domain.SeverityCritical, Title: "Ransomware Detection", Status: "active",
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
