package alert

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/corpus/golden from the corpus bodies")

// TestCorpusGolden decodes every published body in testdata/corpus/<source>/
// as that source and compares the normalized alerts (devices, dropped
// devices and all, but not Raw) with testdata/corpus/golden/<source>/. A
// source's bodies join the corpus by adding its directory; run
//
//	go test ./internal/alert -run CorpusGolden -update-corpus
//
// to write their golden files, and review them. Every body must be listed,
// with where it was published, in a testdata/SOURCES*.md file at the root.
func TestCorpusGolden(t *testing.T) {
	const root = "testdata/corpus"
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	provenance := readProvenance(t)
	n := 0
	for _, d := range dirs {
		if !d.IsDir() || d.Name() == "golden" {
			continue
		}
		source := d.Name()
		files, err := filepath.Glob(filepath.Join(root, source, "*.json"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			n++
			rel := filepath.ToSlash(filepath.Join("internal", "alert", f))
			t.Run(source+"/"+filepath.Base(f), func(t *testing.T) {
				if !strings.Contains(provenance, rel) {
					t.Errorf("%s is not listed in testdata/SOURCES*.md", rel)
				}
				alerts, err := Decode(source, readFile(t, f), Options{})
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				for _, a := range alerts {
					checkDevicesValid(t, a)
				}
				got, err := json.MarshalIndent(map[string]any{"alerts": alerts}, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, '\n')
				golden := filepath.Join(root, "golden", source, filepath.Base(f))
				if *updateCorpus {
					if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run with -update-corpus to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("decoded %s differs from %s\n--- got\n%s--- want\n%s", f, golden, got, want)
				}
			})
		}
	}
	if n == 0 {
		t.Fatal("empty corpus")
	}
}

func readProvenance(t *testing.T) string {
	t.Helper()
	files, err := filepath.Glob("../../testdata/SOURCES*.md")
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, f := range files {
		sb.Write(readFile(t, f))
	}
	return sb.String()
}
