package rules

import (
	"fmt"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// benchRules writes n rules of which only the last matches benchAlert;
// every celEvery-th rule (0: none) uses a `when` expression instead of
// match.
func benchRules(n, celEvery int) string {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range n - 1 {
		if celEvery > 0 && i%celEvery == celEvery-1 {
			fmt.Fprintf(&b, "  - name: cel-%d\n    when: 'alert.severity_rank >= 3 && alert.tags.exists(t, t == \"nope-%d\")'\n    scan: Full\n", i, i)
			continue
		}
		fmt.Fprintf(&b, "  - name: r-%d\n    match:\n      severity: [high, critical]\n      category: [Category%d, Other%d]\n      title: {regex: \"(?i)never-%d\"}\n    scan: Full\n", i, i, i, i)
	}
	if celEvery > 0 {
		b.WriteString("  - name: last\n    when: 'alert.tags.exists(t, t == \"crown-jewel\") && device.dns_name.endsWith(\".corp.example\")'\n    scan: Quick\n")
	} else {
		b.WriteString("  - name: last\n    match:\n      severity: {gte: medium}\n      tags: crown-jewel\n      device.dns_name: {glob: \"*.corp.example\"}\n    scan: Quick\n")
	}
	return b.String()
}

func benchAlert() *alert.Alert {
	return &alert.Alert{
		// Ref as Decode always sets it.
		ID: "da637", Source: "defender", Ref: "Defender alert da637", Severity: domain.SeverityHigh, Title: "Suspicious PowerShell command line",
		Category: "Execution", Tags: []string{"finance", "crown-jewel"}, URL: "https://security.microsoft.com/alerts/da637",
		Devices: []alert.Device{{ID: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07", DNSName: "ws-01.corp.example"}},
	}
}

func benchEvaluate(b *testing.B, src string) {
	rs, err := Load("bench.yaml", []byte(src), Options{})
	if err != nil {
		b.Fatal(err)
	}
	a := benchAlert()
	if d := rs.Evaluate(a); d[0].Rule != "last" {
		b.Fatalf("want the last rule to match, got %+v", d)
	}
	b.ReportAllocs()
	start := processCPU()
	for b.Loop() {
		rs.Evaluate(a)
	}
	if used := processCPU() - start; used > 0 {
		b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func BenchmarkEvaluate100Match(b *testing.B)     { benchEvaluate(b, benchRules(100, 0)) }
func BenchmarkEvaluate100With10CEL(b *testing.B) { benchEvaluate(b, benchRules(100, 10)) }

// BenchmarkEvaluate100AllCEL shows what a `when` costs per rule: every
// rule uses one.
func BenchmarkEvaluate100AllCEL(b *testing.B) { benchEvaluate(b, benchRules(100, 1)) }
