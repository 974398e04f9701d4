package store

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

const killDSNEnv = "SCANHOOK_STORE_KILL_DSN"

// TestSQLiteSurvivesSIGKILL: a child process ingests from several
// goroutines and prints each receipt once Ingest has returned; the parent
// SIGKILLs it mid-stream and checks that every acknowledged delivery is in
// the file. (Power loss is what synchronous=FULL adds on top; a test
// cannot pull the plug.)
func TestSQLiteSurvivesSIGKILL(t *testing.T) {
	dsn := filepath.Join(t.TempDir(), "kill.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestSQLiteKillChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), killDSNEnv+"="+dsn)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if r, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
			acked = append(acked, r)
			if len(acked) == 300 {
				cmd.Process.Kill() // SIGKILL
				break
			}
		}
	}
	cmd.Wait()
	if len(acked) < 300 {
		t.Fatalf("child acknowledged only %d deliveries before exiting", len(acked))
	}
	s := (&backend{name: "sqlite", driver: "sqlite", dsn: dsn, clock: newClock()}).open(t)
	for _, r := range acked {
		det, err := s.Receipt(context.Background(), r)
		if err != nil || len(det.Jobs) != 1 {
			t.Fatalf("acknowledged receipt %s after SIGKILL: %+v, %v", r, det, err)
		}
	}
}

// TestSQLiteKillChild is the child of TestSQLiteSurvivesSIGKILL.
func TestSQLiteKillChild(t *testing.T) {
	dsn := os.Getenv(killDSNEnv)
	if dsn == "" {
		t.Skip("helper process of TestSQLiteSurvivesSIGKILL")
	}
	s, err := Open(context.Background(), "sqlite", dsn, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				n := g*1_000_000 + i
				res, err := s.Ingest(context.Background(), delivery(alertIn(fmt.Sprintf("k%d", n), quick(dev(machine(n), "")))))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %s\n", res.Receipt)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// FuzzIngestRoundTrip: any text an alert carries is stored and served back
// as valid JSON, never a panic or a failed ingest.
func FuzzIngestRoundTrip(f *testing.F) {
	f.Add("alert-1", "High", "rule", "comment", []byte(`{"id":"alert-1"}`))
	f.Add("nul\x00id", "ransom\xff\xfe", "r\u2028", "{{.Alert.ID}}", []byte("not json"))
	f.Add("' OR 1=1 --", "?", "$1", "", []byte(nil))
	s := sqliteBackend(f).open(f)
	f.Fuzz(func(t *testing.T, id, title, rule, comment string, raw []byte) {
		in := AlertInput{
			Alert:     alert.Alert{ID: id, Title: title, Severity: domain.SeverityMedium},
			Raw:       raw,
			Decisions: []DecisionInput{{Device: &alert.Device{DNSName: "h.contoso.com"}, Rule: rule, Scan: domain.ScanQuick, Comment: comment}},
		}
		res, err := s.Ingest(context.Background(), Delivery{Source: "generic", Alerts: []AlertInput{in}})
		if strings.TrimSpace(clean(id)) == "" {
			if err == nil {
				t.Fatalf("empty alert id %q accepted", id)
			}
			return
		}
		if err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		det, err := s.Receipt(context.Background(), res.Receipt)
		if err != nil {
			t.Fatalf("Receipt: %v", err)
		}
		js, err := json.Marshal(det)
		if err != nil || !json.Valid(js) || !utf8.Valid(js) {
			t.Fatalf("receipt JSON: %v", err)
		}
		if got := det.Alerts[0].Alert.ID; got != clean(id) {
			t.Fatalf("alert id %q came back as %q", clean(id), got)
		}
	})
}
