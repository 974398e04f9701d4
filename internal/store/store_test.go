package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
)

// The suite runs every test against both backends. PostgreSQL needs
// SCANHOOK_TEST_POSTGRES (a pgx connection string to a database the test
// role may create schemas in); each test gets a fresh schema.

const pgEnv = "SCANHOOK_TEST_POSTGRES"

// newClock is the suite's clock; a fixed start, so that tests may compare
// recorded times with it.
func newClock() *testutil.Clock {
	return testutil.NewClockAt(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

// backend opens stores on one fresh database; every call to open gives
// another Store (another "replica") on the same data.
type backend struct {
	name   string
	driver string
	dsn    string
	clock  *testutil.Clock
}

func (b *backend) open(t testing.TB) Store {
	t.Helper()
	s, err := Open(context.Background(), b.driver, b.dsn, Deps{Now: b.clock.Now})
	if err != nil {
		t.Fatalf("Open(%s): %v", b.name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// eachBackend runs fn once per backend, each with a fresh database.
func eachBackend(t *testing.T, fn func(t *testing.T, b *backend)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		fn(t, sqliteBackend(t))
	})
	t.Run("postgres", func(t *testing.T) {
		fn(t, postgresBackend(t))
	})
}

func sqliteBackend(t testing.TB) *backend {
	return &backend{name: "sqlite", driver: "sqlite", dsn: filepath.Join(t.TempDir(), "scanhook.db"), clock: newClock()}
}

func postgresBackend(t testing.TB) *backend {
	t.Helper()
	base := os.Getenv(pgEnv)
	if base == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set, and CI is: the PostgreSQL tests must run in CI", pgEnv)
		}
		t.Skipf("%s is not set: skipping the PostgreSQL backend (set it to a postgres:// URL to run it)", pgEnv)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	schema := "scanhook_test_" + hex.EncodeToString(rnd[:])
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("connect %s: %v", pgEnv, err)
	}
	t.Cleanup(func() { admin.Close() })
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	return &backend{name: "postgres", driver: "postgres", dsn: withSearchPath(t, base, schema), clock: newClock()}
}

func withSearchPath(t testing.TB, dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("parse %s: %v", pgEnv, err)
		}
		qv := u.Query()
		qv.Set("search_path", schema)
		u.RawQuery = qv.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// Builders.

func dev(id, dns string) *alert.Device { return &alert.Device{ID: id, DNSName: dns} }

// machine gives a valid-looking 40-hex machine id for n.
func machine(n int) string { return fmt.Sprintf("%040x", n+1) }

func quick(d *alert.Device) DecisionInput {
	return DecisionInput{Device: d, Rule: "medium-quick", Scan: domain.ScanQuick, Comment: "quick scan", Reason: "rule medium-quick matched", Cooldown: 6 * time.Hour}
}

func full(d *alert.Device) DecisionInput {
	return DecisionInput{Device: d, Rule: "ransomware-full", Scan: domain.ScanFull, Comment: "full scan", Reason: "rule ransomware-full matched", Cooldown: 6 * time.Hour}
}

func alertIn(id string, decs ...DecisionInput) AlertInput {
	return AlertInput{
		Alert:     alert.Alert{ID: id, Source: "sentinel", Severity: domain.SeverityHigh, Title: "alert " + id},
		Raw:       json.RawMessage(`{"id":"` + id + `","nested":{"k":[1,2,3]}}`),
		Decisions: decs,
	}
}

func delivery(alerts ...AlertInput) Delivery { return Delivery{Source: "sentinel", Alerts: alerts} }

func mustIngest(t testing.TB, s Store, d Delivery) IngestResult {
	t.Helper()
	res, err := s.Ingest(context.Background(), d)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	return res
}

func one(t testing.TB, res IngestResult) DecisionOutcome {
	t.Helper()
	if len(res.Decisions) != 1 {
		t.Fatalf("want 1 decision, got %+v", res.Decisions)
	}
	return res.Decisions[0]
}

// ingestRace makes n single-decision deliveries at once, spread over the
// replicas, and checks that exactly one is queued and the others are
// duplicates: the per-device lock held across replicas.
func ingestRace(t *testing.T, replicas []Store, n int, in func(i int) AlertInput) {
	t.Helper()
	outs := make([]DecisionOutcome, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := replicas[i%len(replicas)].Ingest(context.Background(), delivery(in(i)))
			errs[i] = err
			if err == nil && len(res.Decisions) == 1 {
				outs[i] = res.Decisions[0]
			}
		})
	}
	wg.Wait()
	queued := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("ingest %d: %v", i, errs[i])
		}
		switch outs[i].Status {
		case domain.StatusQueued:
			queued++
		case domain.StatusDuplicate:
		default:
			t.Errorf("ingest %d: %+v", i, outs[i])
		}
	}
	if queued != 1 {
		t.Errorf("%d queued, want exactly 1", queued)
	}
}

func claimAll(t testing.TB, s Store, owner string) []Job {
	t.Helper()
	jobs, err := s.ClaimJobs(context.Background(), owner, 1000, time.Minute)
	if err != nil {
		t.Fatalf("ClaimJobs: %v", err)
	}
	return jobs
}

// submit claims the job and records Defender accepting it.
func submit(t testing.TB, s Store, jobID int64, machineID, actionID string) {
	t.Helper()
	ctx := context.Background()
	var found bool
	for _, j := range claimAll(t, s, "submitter") {
		if j.ID != jobID {
			continue
		}
		found = true
		if err := s.MarkCalling(ctx, j.ID, "submitter"); err != nil {
			t.Fatalf("MarkCalling: %v", err)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: j.ID, Owner: "submitter", Outcome: OutcomeSubmitted,
			MachineID: machineID, ActionID: actionID, ActionStatus: domain.ActionPending}); err != nil {
			t.Fatalf("CompleteJob: %v", err)
		}
	}
	// The others go back untouched.
	if err := s.ReleaseJobs(ctx, "submitter"); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("job %d was not claimable", jobID)
	}
}

func finish(t testing.TB, s Store, actionID string) {
	t.Helper()
	if err := s.UpdateActions(context.Background(), []ActionUpdate{{ID: actionID, Status: domain.ActionSucceeded}}); err != nil {
		t.Fatalf("UpdateActions: %v", err)
	}
}

func totalJobs(t testing.TB, s Store) int64 {
	t.Helper()
	st, err := s.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, c := range st.JobsByState {
		n += c
	}
	return n
}

func TestDecisionStatuses(t *testing.T) {
	d1 := dev(machine(1), "host1.contoso.com")
	byName := dev("", "web7.contoso.com")
	type step func(t *testing.T, s Store, clk *testutil.Clock) // prepares the device's history
	first := func(dec DecisionInput) step {
		return func(t *testing.T, s Store, clk *testutil.Clock) {
			if o := one(t, mustIngest(t, s, delivery(alertIn("prev-"+dec.Scan, dec)))); o.Status != domain.StatusQueued {
				t.Fatalf("setup: %+v", o)
			}
		}
	}
	// scanned: a job for dec was submitted to Defender and its action
	// finished `ago` before the new alert.
	scanned := func(dec DecisionInput, ago time.Duration) step {
		return func(t *testing.T, s Store, clk *testutil.Clock) {
			o := one(t, mustIngest(t, s, delivery(alertIn("prev-"+dec.Scan+"-scanned", dec))))
			submit(t, s, o.JobID, machine(1), "act-"+dec.Scan)
			finish(t, s, "act-"+dec.Scan)
			clk.Advance(ago)
		}
	}
	cases := []struct {
		name       string
		setup      []step
		dec        DecisionInput
		wantStatus string
		wantReason string // substring; "{job}" is the setup's first job id
		wantJob    bool
	}{
		{name: "queued on a fresh device", dec: quick(d1), wantStatus: domain.StatusQueued, wantReason: "rule medium-quick matched", wantJob: true},
		{name: "scan none is skipped with the rule's reason",
			dec:        DecisionInput{Device: d1, Rule: "everything-else", Scan: domain.ScanNone, Reason: "no rule matched"},
			wantStatus: domain.StatusSkipped, wantReason: "no rule matched"},
		{name: "no device is skipped", dec: DecisionInput{Rule: "r", Scan: domain.ScanQuick, Reason: "alert names no device"},
			wantStatus: domain.StatusSkipped, wantReason: "no usable device"},
		{name: "dry run records without a job", dec: func() DecisionInput { d := full(d1); d.DryRun = true; return d }(),
			wantStatus: domain.StatusDryRun, wantReason: "dry run"},
		{name: "second Quick while one is queued is a duplicate", setup: []step{first(quick(d1))}, dec: quick(d1),
			wantStatus: domain.StatusDuplicate, wantReason: "open Quick scan (job {job}, queued)"},
		{name: "Full upgrades a queued Quick", setup: []step{first(quick(d1))}, dec: full(d1),
			wantStatus: domain.StatusQueued, wantReason: "upgraded queued Quick scan (job {job}) to Full", wantJob: true},
		{name: "Quick while a Full is queued is a duplicate", setup: []step{first(full(d1))}, dec: quick(d1),
			wantStatus: domain.StatusDuplicate, wantReason: "open Full scan (job {job}"},
		{name: "Full after a Quick already claimed waits for it",
			setup: []step{first(quick(d1)), func(t *testing.T, s Store, _ *testutil.Clock) { claimAll(t, s, "other") }},
			dec:   full(d1), wantStatus: domain.StatusQueued, wantReason: "to run after the open Quick scan (job {job}) ends", wantJob: true},
		{name: "Quick while a Quick is claimed is a duplicate",
			setup: []step{first(quick(d1)), func(t *testing.T, s Store, _ *testutil.Clock) { claimAll(t, s, "other") }},
			dec:   quick(d1), wantStatus: domain.StatusDuplicate, wantReason: "(job {job}, leased)"},
		{name: "a submitted scan stays open until its action is final",
			setup: []step{func(t *testing.T, s Store, _ *testutil.Clock) {
				o := one(t, mustIngest(t, s, delivery(alertIn("prev", quick(d1)))))
				submit(t, s, o.JobID, machine(1), "act-open")
			}},
			dec: quick(d1), wantStatus: domain.StatusDuplicate, wantReason: "(job {job}, submitted)"},
		{name: "Quick within the cooldown of a Quick", setup: []step{scanned(quick(d1), time.Hour)}, dec: quick(d1),
			wantStatus: domain.StatusCooldown, wantReason: "a Quick scan was requested for this device at 2026-03-01T12:00:00Z (job {job}); cooldown 6h0m0s until 2026-03-01T18:00:00Z"},
		{name: "Full after a recent Quick is allowed", setup: []step{scanned(quick(d1), time.Hour)}, dec: full(d1),
			wantStatus: domain.StatusQueued, wantJob: true},
		{name: "Quick within the cooldown of a Full", setup: []step{scanned(full(d1), time.Hour)}, dec: quick(d1),
			wantStatus: domain.StatusCooldown, wantReason: "a Full scan was requested"},
		{name: "Full within the cooldown of a Full", setup: []step{scanned(full(d1), 5*time.Hour)}, dec: full(d1),
			wantStatus: domain.StatusCooldown, wantReason: "(job {job})"},
		{name: "after the cooldown a scan is queued again", setup: []step{scanned(quick(d1), 7*time.Hour)}, dec: quick(d1),
			wantStatus: domain.StatusQueued, wantJob: true},
		{name: "no cooldown configured", setup: []step{scanned(quick(d1), time.Minute)},
			dec:        func() DecisionInput { d := quick(d1); d.Cooldown = 0; return d }(),
			wantStatus: domain.StatusQueued, wantJob: true},
		{name: "cooldown follows the machine a DNS name resolved to",
			setup: []step{func(t *testing.T, s Store, clk *testutil.Clock) {
				o := one(t, mustIngest(t, s, delivery(alertIn("by-name", quick(byName)))))
				submit(t, s, o.JobID, machine(1), "act-by-name")
				finish(t, s, "act-by-name")
			}},
			dec: quick(d1), wantStatus: domain.StatusCooldown, wantReason: "(job {job})"},
		{name: "already scanning counts as requested for the cooldown",
			setup: []step{func(t *testing.T, s Store, clk *testutil.Clock) {
				o := one(t, mustIngest(t, s, delivery(alertIn("prev", quick(d1)))))
				jobs := claimAll(t, s, "o")
				if len(jobs) != 1 || jobs[0].ID != o.JobID {
					t.Fatalf("claim: %+v", jobs)
				}
				if err := s.CompleteJob(context.Background(), JobResult{JobID: o.JobID, Owner: "o", Outcome: OutcomeAlreadyScanning,
					MachineID: machine(1), Reason: "Defender: an antivirus scan is already pending"}); err != nil {
					t.Fatal(err)
				}
			}},
			dec: quick(d1), wantStatus: domain.StatusCooldown, wantReason: "(job {job})"},
		{name: "a dead job does not block the device",
			setup: []step{func(t *testing.T, s Store, clk *testutil.Clock) {
				o := one(t, mustIngest(t, s, delivery(alertIn("prev", quick(d1)))))
				claimAll(t, s, "o")
				if err := s.CompleteJob(context.Background(), JobResult{JobID: o.JobID, Owner: "o", Outcome: OutcomeDead, Err: "machine not found"}); err != nil {
					t.Fatal(err)
				}
			}},
			dec: quick(d1), wantStatus: domain.StatusQueued, wantJob: true},
	}
	eachBackend(t, func(t *testing.T, b *backend) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				// A fresh database per case, so the cases can run in parallel.
				t.Parallel()
				cb := *b
				cb.clock = newClock()
				if b.driver == "sqlite" {
					cb.dsn = filepath.Join(t.TempDir(), "s.db")
				} else {
					cb = *postgresBackend(t)
				}
				s := cb.open(t)
				for _, st := range tc.setup {
					st(t, s, cb.clock)
				}
				before := totalJobs(t, s)
				res := mustIngest(t, s, delivery(alertIn("the-alert", tc.dec)))
				o := one(t, res)
				if o.Status != tc.wantStatus {
					t.Fatalf("status = %q (%s), want %q", o.Status, o.Reason, tc.wantStatus)
				}
				want := tc.wantReason
				if strings.Contains(want, "{job}") {
					want = strings.ReplaceAll(want, "{job}", "1")
				}
				if !strings.Contains(o.Reason, want) {
					t.Errorf("reason = %q, want it to contain %q", o.Reason, want)
				}
				if o.AlertID != "the-alert" || o.Rule != tc.dec.Rule || o.Scan != tc.dec.Scan {
					t.Errorf("outcome = %+v", o)
				}
				after := totalJobs(t, s)
				upgraded := strings.Contains(o.Reason, "upgraded")
				switch {
				case tc.wantJob && !upgraded && after != before+1:
					t.Errorf("jobs %d → %d, want one new job", before, after)
				case (!tc.wantJob || upgraded) && after != before:
					t.Errorf("jobs %d → %d, want no new job", before, after)
				}
				if tc.wantJob && o.JobID == 0 {
					t.Errorf("queued outcome without a job id")
				}
				if upgraded {
					jobs := claimAll(t, s, "check")
					if len(jobs) != 1 || jobs[0].Scan != domain.ScanFull || jobs[0].Comment != "full scan" || jobs[0].ID != o.JobID {
						t.Errorf("after upgrade jobs = %+v, want the one job as Full with the new comment", jobs)
					}
				}
			})
		}
	})
}

func TestIngestIdempotency(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		a1 := alertIn("a1", quick(dev(machine(1), "")))
		a2 := alertIn("a2", quick(dev(machine(2), "")), DecisionInput{Scan: domain.ScanNone, Rule: "x", Reason: "nothing"})
		a3 := alertIn("a3", full(dev(machine(3), "")))

		first := mustIngest(t, s, delivery(a1, a2))
		if first.Duplicate || !validReceipt(first.Receipt) || len(first.Decisions) != 3 {
			t.Fatalf("first = %+v", first)
		}
		again := mustIngest(t, s, delivery(a2, a1)) // same alerts, other order
		if !again.Duplicate || again.Receipt != first.Receipt {
			t.Fatalf("redelivery = %+v, want duplicate with receipt %s", again, first.Receipt)
		}
		// Stored outcomes come back in delivery order.
		wantStatuses := []string{domain.StatusQueued, domain.StatusSkipped, domain.StatusQueued}
		for i, d := range again.Decisions {
			if d.Status != wantStatuses[i] {
				t.Errorf("redelivery decision %d = %+v, want %s", i, d, wantStatuses[i])
			}
		}
		if again.Decisions[2].JobID != first.Decisions[0].JobID || again.Decisions[0].JobID != first.Decisions[1].JobID {
			t.Errorf("stored job ids differ: first %+v again %+v", first.Decisions, again.Decisions)
		}
		if n := totalJobs(t, s); n != 2 {
			t.Errorf("jobs = %d after a redelivery, want 2", n)
		}

		mixed := mustIngest(t, s, delivery(a2, a3))
		if mixed.Duplicate || mixed.Receipt == first.Receipt {
			t.Fatalf("mixed = %+v, want a new receipt, not duplicate", mixed)
		}
		if len(mixed.Decisions) != 3 || mixed.Decisions[0].AlertID != "a2" || mixed.Decisions[0].Status != domain.StatusQueued ||
			mixed.Decisions[2].AlertID != "a3" || mixed.Decisions[2].Status != domain.StatusQueued {
			t.Errorf("mixed decisions = %+v", mixed.Decisions)
		}
		if n := totalJobs(t, s); n != 3 {
			t.Errorf("jobs = %d, want 3", n)
		}
		// The mixed receipt covers both alerts; a2 remembers its first receipt.
		det, err := s.Receipt(ctx, mixed.Receipt)
		if err != nil {
			t.Fatal(err)
		}
		if len(det.Alerts) != 2 || det.Alerts[0].Alert.ID != "a2" || det.Alerts[0].Receipt != first.Receipt || det.Alerts[1].Receipt != mixed.Receipt {
			t.Errorf("mixed receipt alerts = %+v", det.Alerts)
		}

		// A repeated alert id within one delivery is one alert.
		rep := mustIngest(t, s, delivery(alertIn("a4", quick(dev(machine(4), ""))), alertIn("a4", quick(dev(machine(4), "")))))
		if len(rep.Decisions) != 1 || rep.Receipt != ReceiptID("sentinel", []string{"a4"}) {
			t.Errorf("repeated id delivery = %+v", rep)
		}
		// The same alert id from another source is another alert.
		other := mustIngest(t, s, Delivery{Source: "splunk", Alerts: []AlertInput{a1}})
		if other.Duplicate || one(t, other).Status != domain.StatusDuplicate {
			t.Errorf("other source = %+v, want a new alert whose decision is a duplicate of the open job", other)
		}
	})
}

func TestReceiptIDIsDeterministic(t *testing.T) {
	a := ReceiptID("sentinel", []string{"b", "a", "a"})
	if a != ReceiptID("sentinel", []string{"a", "b"}) || !validReceipt(a) {
		t.Errorf("receipt %q not order/duplicate independent or not valid", a)
	}
	for _, other := range []string{ReceiptID("splunk", []string{"a", "b"}), ReceiptID("sentinel", []string{"ab"}), ReceiptID("sentinel", []string{"a"})} {
		if other == a {
			t.Errorf("receipt collision %q", a)
		}
	}
}

func TestReceiptDetail(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		d := dev(machine(7), "host7.contoso.com")
		in := alertIn("x1", quick(d))
		in.Raw = json.RawMessage(`{"id":"x1","props":{"severity":"High"}}`)
		res := mustIngest(t, s, delivery(in))
		jobID := one(t, res).JobID
		if jobs := claimAll(t, s, "w1"); len(jobs) != 1 || jobs[0].ID != jobID {
			t.Fatalf("claim = %+v", jobs)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "w1", Outcome: OutcomeRetry, Err: "defender 503", RetryAt: b.clock.Now()}); err != nil {
			t.Fatal(err)
		}
		submit(t, s, jobID, machine(7), "act-x1")

		det, err := s.Receipt(ctx, res.Receipt)
		if err != nil {
			t.Fatal(err)
		}
		if det.Source != "sentinel" || len(det.Alerts) != 1 || det.Alerts[0].Alert.Title != "alert x1" {
			t.Fatalf("detail = %+v", det)
		}
		if string(det.Alerts[0].Raw) != string(in.Raw) {
			t.Errorf("raw = %s, want %s", det.Alerts[0].Raw, in.Raw)
		}
		decs := det.Alerts[0].Decisions
		if len(decs) != 1 || decs[0].Status != domain.StatusQueued || decs[0].JobID != jobID || decs[0].Comment != "quick scan" || decs[0].Cooldown != "6h0m0s" {
			t.Errorf("decisions = %+v", decs)
		}
		if len(det.Jobs) != 1 || det.Jobs[0].State != domain.JobSubmitted || det.Jobs[0].Attempts != 2 || det.Jobs[0].MachineID != machine(7) ||
			det.Jobs[0].ActionID != "act-x1" || !det.Jobs[0].Calling {
			t.Fatalf("jobs = %+v", det.Jobs)
		}
		hist := det.Jobs[0].History
		if len(hist) != 2 || hist[0].Outcome != "retry" || hist[0].Error != "defender 503" || hist[1].Outcome != "submitted" {
			t.Errorf("history = %+v", hist)
		}
		if len(det.Actions) != 1 || det.Actions[0].ID != "act-x1" || det.Actions[0].Status != domain.ActionPending {
			t.Errorf("actions = %+v", det.Actions)
		}
		// The JSON served for it is handlers' (TestAPIGolden there).

		for _, bad := range []string{"r_aaaaaaaaaaaaaaaaaaaaaaaaaa", "nope", "", "r_../../etc/passwd"} {
			if _, err := s.Receipt(ctx, bad); !errors.Is(err, ErrNotFound) {
				t.Errorf("Receipt(%q) err = %v, want ErrNotFound", bad, err)
			}
		}
	})
}

func TestIngestRejectsBadInput(t *testing.T) {
	s := sqliteBackend(t).open(t)
	cases := []struct {
		name string
		d    Delivery
		want string
	}{
		{"no source", Delivery{Alerts: []AlertInput{alertIn("a")}}, "delivery source"},
		{"empty alert id", delivery(alertIn("")), "alerts[0].id"},
		{"bad scan", delivery(alertIn("a", DecisionInput{Scan: "Deep"})), "alerts[0].decisions[0].scan"},
		{"negative cooldown", delivery(alertIn("a", DecisionInput{Scan: domain.ScanQuick, Cooldown: -time.Second})), "alerts[0].decisions[0].cooldown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Ingest(context.Background(), tc.d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one naming %s", err, tc.want)
			}
		})
	}
	if _, err := s.Ingest(context.Background(), delivery(alertIn("\x00"))); err == nil || !strings.Contains(err.Error(), "alerts[0].id") {
		t.Errorf("NUL-only alert id: err = %v", err)
	}
}

func TestIngestCleansText(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		// Text PostgreSQL would refuse (NUL, invalid UTF-8) is cleaned, not fatal.
		in := alertIn("nul\x00id", DecisionInput{Device: dev("", "h.contoso.com"), Scan: domain.ScanQuick, Rule: "bad\xffutf8", Reason: "a\x00b", Comment: "c\x00"})
		in.Alert.Title = "t\x00\xfe"
		in.Raw = json.RawMessage("{\"k\":\"\xff\x00\"}")
		res := mustIngest(t, s, delivery(in))
		if o := one(t, res); o.AlertID != "nulid" || o.Rule != "bad\uFFFDutf8" || o.Status != domain.StatusQueued {
			t.Errorf("cleaned outcome = %+v", o)
		}
		det, err := s.Receipt(context.Background(), res.Receipt)
		if err != nil {
			t.Fatal(err)
		}
		// The normalized alert is stored as JSON, which escapes NUL.
		if det.Alerts[0].Alert.Title != "t\x00\uFFFD" {
			t.Errorf("title = %q", det.Alerts[0].Alert.Title)
		}
		if _, err := json.Marshal(det); err != nil {
			t.Errorf("receipt JSON: %v", err)
		}
	})
}

func TestConcurrentAlertsForOneDevice(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		replicas := []Store{b.open(t), b.open(t)}
		d := dev(machine(9), "")
		const n = 50
		ingestRace(t, replicas, n, func(i int) AlertInput { return alertIn(fmt.Sprintf("storm-%d", i), quick(d)) })
		if n := totalJobs(t, replicas[0]); n != 1 {
			t.Errorf("jobs = %d, want 1", n)
		}
		scans, err := replicas[1].ListScans(context.Background(), ScanQuery{Device: machine(9), Limit: 1000})
		if err != nil || len(scans) != n {
			t.Errorf("ListScans: %d records, err %v; want %d", len(scans), err, n)
		}
	})
}

func TestConcurrentDuplicateDeliveries(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		replicas := []Store{b.open(t), b.open(t)}
		const n = 20
		results := make([]IngestResult, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				// Each delivery names its own device too, so a second
				// processing would queue a second job.
				res, err := replicas[i%2].Ingest(context.Background(), delivery(alertIn("same", quick(dev(machine(100+i), "")))))
				if err != nil {
					t.Errorf("ingest %d: %v", i, err)
				}
				results[i] = res
			})
		}
		wg.Wait()
		fresh := 0
		for i, r := range results {
			if !r.Duplicate {
				fresh++
			}
			if r.Receipt != results[0].Receipt || len(r.Decisions) != 1 || r.Decisions[0].Status != domain.StatusQueued {
				t.Errorf("delivery %d = %+v", i, r)
			}
		}
		if fresh != 1 {
			t.Errorf("%d deliveries processed the alert, want 1", fresh)
		}
		if n := totalJobs(t, replicas[0]); n != 1 {
			t.Errorf("jobs = %d, want 1", n)
		}
		det, err := replicas[0].Receipt(context.Background(), results[0].Receipt)
		if err != nil || len(det.Alerts) != 1 || len(det.Alerts[0].Decisions) != 1 {
			t.Errorf("receipt = %+v, %v", det, err)
		}
	})
}

func TestClaimNeverHandsAJobTwice(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		replicas := []Store{b.open(t), b.open(t)}
		const jobs = 120
		var alerts []AlertInput
		for i := range jobs {
			alerts = append(alerts, alertIn(fmt.Sprintf("j%d", i), quick(dev(machine(i), ""))))
		}
		mustIngest(t, replicas[0], delivery(alerts...))

		var mu sync.Mutex
		claimedBy := map[int64]string{}
		var wg sync.WaitGroup
		for w := range 6 {
			owner := fmt.Sprintf("owner-%d", w)
			wg.Go(func() {
				s := replicas[w%2]
				for {
					got, err := s.ClaimJobs(context.Background(), owner, 7, time.Hour)
					if err != nil {
						t.Errorf("%s: %v", owner, err)
						return
					}
					if len(got) == 0 {
						return
					}
					mu.Lock()
					for _, j := range got {
						if prev, dup := claimedBy[j.ID]; dup {
							t.Errorf("job %d claimed by %s and %s", j.ID, prev, owner)
						}
						claimedBy[j.ID] = owner
						if j.State != domain.JobLeased || j.Attempts != 1 || j.Calling {
							t.Errorf("claimed job = %+v", j)
						}
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(claimedBy) != jobs {
			t.Errorf("%d jobs claimed, want %d", len(claimedBy), jobs)
		}
	})
}
