package rules

import (
	"strings"
	"testing"
	"text/template"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// TestDefaultCommentReadsWell: the built-in comment names the alert as
// people know it, not by its resource id, and stays well under the cap
// with a real Sentinel incident's link.
func TestDefaultCommentReadsWell(t *testing.T) {
	armID := "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/law-soc/providers/Microsoft.SecurityInsights/Incidents/7e3c2a10-1111-2222-3333-444455556666"
	url := "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident" + armID
	rs := mustLoad(t, "rules:\n  - name: ransomware-full\n    scan: Full\n")
	tests := []struct {
		name string
		a    alert.Alert
		want string
	}{
		{"sentinel incident", alert.Alert{ID: armID, Source: "sentinel", Ref: "Sentinel incident #1042", Severity: domain.SeverityHigh, Title: "Ransomware activity", URL: url},
			`scanhook: Sentinel incident #1042 "Ransomware activity" (high) matched rule ransomware-full. ` + url},
		{"no ref stored (an alert decoded before Ref existed)", alert.Alert{ID: armID, Source: "sentinel", Severity: domain.SeverityHigh, Title: "Ransomware activity"},
			`scanhook: Sentinel alert 7e3c2a10-1111-2222-3333-444455556666 "Ransomware activity" (high) matched rule ransomware-full.`},
		{"another engineer's source, by the generic default", alert.Alert{ID: "scheduler__admin__search__RMD5_at_1", Source: "splunk", Severity: domain.SeverityMedium},
			`scanhook: Splunk alert scheduler__admin__search__RMD5_at_1 (medium) matched rule ransomware-full.`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.a
			a.Devices = []alert.Device{{DNSName: "ws-01.corp.example.com"}}
			d := rs.Evaluate(&a)[0]
			if d.Comment != tt.want {
				t.Errorf("comment\n got %q\nwant %q", d.Comment, tt.want)
			}
			if strings.Count(d.Comment, armID) > 1 || len([]rune(d.Comment)) > DefaultMaxCommentLen/2 {
				t.Errorf("comment too long or repeats the id: %d runes", len([]rune(d.Comment)))
			}
		})
	}
}

// TestWithPartsMatchTextTemplate: the direct renderer's {{with}} support
// gives what text/template gives, and the default comment takes the
// direct path (no reflection per decision).
func TestWithPartsMatchTextTemplate(t *testing.T) {
	tmpls := []string{
		DefaultComment,
		`{{with .Alert.Title}}[{{.}}|{{.}}]{{end}}{{.Rule}}`,
		`a{{with .Alert.Description}}{{.Alert.ID}}{{end}}b`, // inner field is on ., not the alert: left to text/template
		`{{with .Alert.URL}}{{end}}x`,
		`{{with .Alert.Title}}t{{else}}e{{end}}`,
	}
	alerts := []alert.Alert{
		{ID: "i1", Source: "defender", Ref: "Defender alert i1", Severity: domain.SeverityLow, Title: "T", URL: "https://x.example/a", Description: "d"},
		{ID: "i2", Source: "graph", Severity: domain.SeverityHigh},
	}
	for _, src := range tmpls {
		tm := template.Must(template.New("c").Option("missingkey=error").Parse(src))
		ct := newCommentTmpl(tm)
		if src == DefaultComment && ct.parts == nil {
			t.Errorf("the default comment does not take the direct path")
		}
		for i := range alerts {
			a := alerts[i]
			if a.Ref == "" {
				a.Ref = alert.DefaultRef(&a) // as Decode sets it
			}
			d := &commentData{Rule: "r", Alert: &a, Device: &alert.Device{}}
			got, err := ct.render(d, 1000)
			var sb strings.Builder
			werr := tm.Execute(&sb, d)
			if (err != nil) != (werr != nil) {
				t.Fatalf("%q: errors differ: %v, %v", src, err, werr)
			}
			if want := sanitize(sb.String(), 1000); err == nil && got != want {
				t.Errorf("%q on %s: direct %q, text/template %q", src, a.ID, got, want)
			}
		}
	}
}
