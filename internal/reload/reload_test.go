package reload

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/testutil"
	"github.com/scanhook/scanhook/rules"
)

const rulesV1 = `rules:
  - name: first
    scan: Quick
`

const rulesV2 = `rules:
  - name: second
    match: {severity: high}
    scan: Full
  - name: third
    scan: none
`

const broken = `rules:
  - name: bad
    scan: Fast
`

func ruleNames(rs *rules.Ruleset) int { return rs.Len() }

func TestReloadKeepsOldRulesOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	write(t, path, rulesV1)
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	h, err := New(path, rules.Options{}, slog.New(slog.NewJSONHandler(&logs, nil)), reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got := ruleNames(h.Current()); got != 1 {
		t.Fatalf("loaded %d rules, want 1", got)
	}

	changed, err := h.Reload()
	if err != nil || changed {
		t.Fatalf("unchanged file: changed=%v err=%v", changed, err)
	}

	write(t, path, broken)
	changed, err = h.Reload()
	if err == nil || changed {
		t.Fatalf("broken file accepted: changed=%v err=%v", changed, err)
	}
	if !strings.Contains(err.Error(), "rules.yaml:3:11") {
		t.Errorf("error lacks position: %v", err)
	}
	if got := ruleNames(h.Current()); got != 1 {
		t.Fatalf("old rules lost: %d rules in force", got)
	}
	if v := promtest.ToFloat64(h.ok); v != 0 {
		t.Errorf("last_reload_successful = %v after a failure", v)
	}
	if !strings.Contains(logs.String(), "keeping the rules in force") {
		t.Errorf("failure not logged: %s", logs.String())
	}

	write(t, path, rulesV2)
	changed, err = h.Reload()
	if err != nil || !changed {
		t.Fatalf("fixed file: changed=%v err=%v", changed, err)
	}
	if got := ruleNames(h.Current()); got != 2 {
		t.Fatalf("new rules not in force: %d", got)
	}
	if v := promtest.ToFloat64(h.ok); v != 1 {
		t.Errorf("last_reload_successful = %v after success", v)
	}
	if v := promtest.ToFloat64(h.reloads.WithLabelValues("failure")); v != 1 {
		t.Errorf("failures counted %v, want 1", v)
	}
}

// TestWhenFailuresCounted checks that the rules New loads report failed
// `when` evaluations in scanhook_rules_when_failures_total.
func TestWhenFailuresCounted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	write(t, path, "rules:\n  - name: indexes\n    when: 'alert.tags[5] == \"x\"'\n    scan: Full\n")
	h, err := New(path, rules.Options{}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.Current().Evaluate(&alert.Alert{ID: "a1", Source: "generic", Devices: []alert.Device{{DNSName: "ws-01.example"}}})
	if v := promtest.ToFloat64(h.whenFailed.WithLabelValues("indexes", "error")); v != 1 {
		t.Errorf("when failures counted %v, want 1", v)
	}
}

func TestNewFailsOnBrokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	write(t, path, broken)
	if _, err := New(path, rules.Options{}, nil, nil); err == nil {
		t.Fatal("New accepted a broken rule file")
	}
	if _, err := New(filepath.Join(t.TempDir(), "missing.yaml"), rules.Options{}, nil, nil); err == nil {
		t.Fatal("New accepted a missing rule file")
	}
}

// TestWatchConfigMapSwap reproduces how the kubelet updates a ConfigMap
// volume: files live in a timestamped folder, "..data" is a symlink to it,
// and the visible file is a symlink through "..data". An update writes a new
// folder and renames a new symlink over "..data".
func TestWatchConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	v1 := filepath.Join(dir, "..2026_11_28_v1")
	v2 := filepath.Join(dir, "..2026_11_28_v2")
	for v, content := range map[string]string{v1: rulesV1, v2: rulesV2} {
		if err := os.Mkdir(v, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(v, "rules.yaml"), content)
	}
	must(t, os.Symlink(filepath.Base(v1), filepath.Join(dir, "..data")))
	must(t, os.Symlink(filepath.Join("..data", "rules.yaml"), filepath.Join(dir, "rules.yaml")))

	h, err := New(filepath.Join(dir, "rules.yaml"), rules.Options{}, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Watch(ctx, 10*time.Millisecond, nil)

	must(t, os.Symlink(filepath.Base(v2), filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))

	testutil.WaitFor(t, "the rules of the new ..data target to be loaded", func() bool { return ruleNames(h.Current()) == 2 })
}

func TestWatchSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	write(t, path, rulesV1)
	h, err := New(path, rules.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A poll interval far longer than the test: only the signal can reload.
	go h.Watch(ctx, time.Hour, hup)
	write(t, path, rulesV2)
	hup <- os.Interrupt
	testutil.WaitFor(t, "the rules to be reloaded on the signal", func() bool { return ruleNames(h.Current()) == 2 })
}

func write(t *testing.T, path, content string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(content), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
