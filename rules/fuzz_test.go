package rules

import (
	"errors"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/yamlpos"
)

// FuzzLoad feeds arbitrary bytes to the loader. Whatever the input, Load
// must not panic and must return either a usable Ruleset or a non-empty
// ErrorList whose every entry has a position in the named file.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("rules:\n  - name: a\n    scan: Full\n"))
	f.Add([]byte("defaults: {cooldown: 1d}\nrules:\n  - name: a\n    match: {severity: {gte: high}, tags: [x, {glob: \"a*\"}]}\n    when: 'alert.severity_rank > 2'\n    scan: Quick\n    comment: '{{.Alert.ID}}'\n"))
	f.Add([]byte("rules: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Load("fuzz.yaml", data, Options{MaxCommentLen: 50})
		if err == nil {
			if rs == nil || rs.Len() == 0 {
				t.Fatal("nil error but no rules")
			}
			a := sampleAlert()
			a.Dropped = nil
			ds := rs.Evaluate(a)
			if len(ds) != len(a.Devices) {
				t.Fatalf("want %d decisions, got %d", len(a.Devices), len(ds))
			}
			for _, d := range ds {
				if d.Scan != domain.ScanQuick && d.Scan != domain.ScanFull && d.Scan != domain.ScanNone {
					t.Fatalf("bad scan %q", d.Scan)
				}
				if len([]rune(d.Comment)) > 50 {
					t.Fatalf("comment over the cap: %q", d.Comment)
				}
			}
			return
		}
		if rs != nil {
			t.Fatal("both a Ruleset and an error")
		}
		var list yamlpos.ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("error is not a non-empty ErrorList: %T %v", err, err)
		}
		for _, e := range list {
			if e.File != "fuzz.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Fatalf("error without a position: %#v", e)
			}
		}
	})
}
