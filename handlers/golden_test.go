package handlers

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestAPIGolden pins the exact bytes of the 202, receipt and scans answers
// for one fixed scenario: field names, order, omitempty, time format, and
// [] versus null. The store runs on a fixed clock, so only the receipt ids
// vary; they are replaced by r_receipt1, r_receipt2… in order of appearance.
// Run with -update to rewrite handlers/testdata/api-golden.txt.
func TestAPIGolden(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC).UnixNano())
	tick := func(d time.Duration) { now.Add(int64(d)) }
	st, err := store.Open(context.Background(), "sqlite", filepath.Join(t.TempDir(), "db"),
		store.Deps{Now: func() time.Time { return time.Unix(0, now.Load()).UTC() }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := newEnv(t, withStore(st))
	ctx := context.Background()

	var (
		out      bytes.Buffer
		receipts []string
	)
	record := func(what string, r resp, status int) {
		t.Helper()
		if r.status != status {
			t.Fatalf("%s: status %d, want %d: %s", what, r.status, status, r.body)
		}
		fmt.Fprintf(&out, "%s %d\n%s", what, r.status, r.body)
		if !bytes.HasSuffix(r.body, []byte("\n")) {
			out.WriteString("\\ no newline\n")
		}
	}
	post := func(src string, body []byte) string {
		t.Helper()
		r := e.post("/v1/webhooks/"+src, body, bearer(src))
		record("POST /v1/webhooks/"+src, r, http.StatusAccepted)
		id := decodeJSON[webhookResponse](t, r).Receipt
		if !slices.Contains(receipts, id) {
			receipts = append(receipts, id)
		}
		tick(time.Second)
		return id
	}

	s := samples(t)
	rDefender := post(domain.SourceDefender, s[domain.SourceDefender])
	post(domain.SourceDefender, s[domain.SourceDefender]) // redelivery: duplicate
	rGraph := post(domain.SourceGraph, s[domain.SourceGraph])
	rElastic := post(domain.SourceElastic, s[domain.SourceElastic])
	// No device: a skipped decision, no job, no action.
	rNoDevice := post(domain.SourceGeneric, []byte(`{"id":"g-nodev","sev":"low","title":"No host"}`))

	// Work the queue: a retry then a submission, a dead job, one left
	// leased and calling, one already scanning (an action never polled).
	jobs, err := st.ClaimJobs(ctx, "worker-1", 10, time.Minute)
	if err != nil || len(jobs) < 3 {
		t.Fatalf("claim: %d jobs, %v", len(jobs), err)
	}
	tick(time.Second)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.MarkCalling(ctx, jobs[0].ID, "worker-1"))
	must(st.CompleteJob(ctx, store.JobResult{JobID: jobs[0].ID, Owner: "worker-1", Outcome: store.OutcomeRetry, Err: "defender: 503"}))
	must(st.CompleteJob(ctx, store.JobResult{JobID: jobs[1].ID, Owner: "worker-1", Outcome: store.OutcomeDead,
		MachineID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Err: "defender: machine not found"}))
	must(st.MarkCalling(ctx, jobs[2].ID, "worker-1"))
	if len(jobs) > 3 {
		must(st.CompleteJob(ctx, store.JobResult{JobID: jobs[3].ID, Owner: "worker-1", Outcome: store.OutcomeAlreadyScanning,
			MachineID: "abcdefabcdefabcdefabcdefabcdefabcdefabcd", ActionID: "act-2", ActionStatus: "Pending", Reason: "a scan is already pending"}))
	}
	tick(time.Second)
	again, err := st.ClaimJobs(ctx, "worker-2", 1, time.Minute)
	if err != nil || len(again) != 1 || again[0].ID != jobs[0].ID {
		t.Fatalf("second claim: %+v, %v", again, err)
	}
	tick(time.Second)
	must(st.CompleteJob(ctx, store.JobResult{JobID: jobs[0].ID, Owner: "worker-2", Outcome: store.OutcomeSubmitted,
		MachineID: "111e6dd8c833c8a052ea231ec1b19adaf497b625", ActionID: "act-1", ActionStatus: "Pending"}))
	tick(time.Second)
	must(st.UpdateActions(ctx, []store.ActionUpdate{{ID: "act-1", Status: "InProgress"}}))
	tick(time.Second)

	for _, id := range []string{rDefender, rGraph, rElastic, rNoDevice} {
		record("GET /v1/receipts/"+id, e.get("/v1/receipts/"+id, apiToken), http.StatusOK)
	}
	for _, q := range []string{"", "?status=dead", "?status=inprogress", "?status=already_scanning", "?device=nothing.example.com", "?limit=2"} {
		record("GET /v1/scans"+q, e.get("/v1/scans"+q, apiToken), http.StatusOK)
	}

	got := out.Bytes()
	for i, id := range receipts {
		got = bytes.ReplaceAll(got, []byte(id), []byte(fmt.Sprintf("r_receipt%d", i+1)))
	}
	if m := regexp.MustCompile(`r_[a-z2-7]{26}`).Find(got); m != nil {
		t.Fatalf("a receipt id was not normalised: %s", m)
	}
	path := filepath.Join("testdata", "api-golden.txt")
	if *updateGolden {
		must(os.MkdirAll("testdata", 0o755))
		must(os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w []byte
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if !bytes.Equal(g, w) {
				t.Fatalf("answers differ from %s at line %d:\ngot:  %s\nwant: %s", path, i+1, g, w)
			}
		}
	}
}
