package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
)

func TestLeaseExpiryAndFencing(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		jobID := one(t, mustIngest(t, s, delivery(alertIn("l1", quick(dev(machine(1), "")))))).JobID

		got, err := s.ClaimJobs(ctx, "A", 10, time.Minute)
		if err != nil || len(got) != 1 || got[0].ID != jobID {
			t.Fatalf("A claim = %+v, %v", got, err)
		}
		if again := claimAll(t, s, "B"); len(again) != 0 {
			t.Fatalf("B claimed a leased job: %+v", again)
		}
		if err := s.MarkCalling(ctx, jobID, "B"); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("MarkCalling by a non-owner = %v, want ErrLeaseLost", err)
		}
		if err := s.MarkCalling(ctx, jobID, "A"); err != nil {
			t.Fatalf("MarkCalling: %v", err)
		}

		b.clock.Advance(2 * time.Minute) // A's lease expires mid-call
		if err := s.MarkCalling(ctx, jobID, "A"); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("MarkCalling on an expired lease = %v, want ErrLeaseLost", err)
		}
		got, err = s.ClaimJobs(ctx, "B", 10, time.Minute)
		if err != nil || len(got) != 1 {
			t.Fatalf("B reclaim = %+v, %v", got, err)
		}
		if j := got[0]; j.ID != jobID || j.Attempts != 2 || !j.Calling || j.State != domain.JobLeased || !j.LeaseUntil.Equal(b.clock.Now().Add(time.Minute)) {
			t.Errorf("reclaimed job = %+v, want attempt 2 with Calling set", j)
		}
		// A comes back from its slow call: fenced off.
		err = s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "A", Outcome: OutcomeSubmitted, MachineID: machine(1), ActionID: "act-A", ActionStatus: domain.ActionPending})
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("CompleteJob by the old owner = %v, want ErrLeaseLost", err)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "B", Outcome: OutcomeSubmitted, MachineID: machine(1), ActionID: "act-B", ActionStatus: domain.ActionPending}); err != nil {
			t.Fatalf("CompleteJob by the new owner: %v", err)
		}
		// Finished: nobody holds it any more, and it is not claimable.
		if err := s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "B", Outcome: OutcomeDead, Err: "again"}); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("second CompleteJob = %v, want ErrLeaseLost", err)
		}
		b.clock.Advance(time.Hour)
		if again := claimAll(t, s, "C"); len(again) != 0 {
			t.Errorf("a submitted job was claimed again: %+v", again)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: 999999, Owner: "B", Outcome: OutcomeDead}); !errors.Is(err, ErrNotFound) {
			t.Errorf("CompleteJob of an unknown job = %v, want ErrNotFound", err)
		}
		if err := s.MarkCalling(ctx, 999999, "B"); !errors.Is(err, ErrNotFound) {
			t.Errorf("MarkCalling of an unknown job = %v, want ErrNotFound", err)
		}
		open, err := s.OpenActions(ctx, 10)
		if err != nil || len(open) != 1 || open[0].ID != "act-B" {
			t.Errorf("open actions = %+v, %v; want only act-B", open, err)
		}
		det, err := s.Receipt(ctx, ReceiptID("sentinel", []string{"l1"}))
		if err != nil {
			t.Fatal(err)
		}
		hist := det.Jobs[0].History
		if len(hist) != 2 || hist[0].Outcome != "lease_expired" || hist[0].Owner != "A" || hist[1].Outcome != "submitted" || hist[1].Owner != "B" {
			t.Errorf("history = %+v", hist)
		}
	})
}

func TestCompleteJobValidation(t *testing.T) {
	s := sqliteBackend(t).open(t)
	for _, r := range []JobResult{
		{JobID: 1, Outcome: OutcomeDead},
		{JobID: 1, Owner: "a", Outcome: "exploded"},
		{JobID: 1, Owner: "a", Outcome: OutcomeSubmitted, MachineID: machine(1)},
		{JobID: 1, Owner: "a", Outcome: OutcomeSubmitted, ActionID: "x"},
	} {
		if err := s.CompleteJob(context.Background(), r); err == nil {
			t.Errorf("CompleteJob(%+v) accepted", r)
		}
	}
	if _, err := s.ClaimJobs(context.Background(), "", 1, time.Minute); err == nil {
		t.Error("ClaimJobs with no owner accepted")
	}
	if _, err := s.ClaimJobs(context.Background(), "a", 1, 0); err == nil {
		t.Error("ClaimJobs with no lease accepted")
	}
}

func TestReleaseJobs(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		var alerts []AlertInput
		for i := range 3 {
			alerts = append(alerts, alertIn(fmt.Sprintf("r%d", i), quick(dev(machine(i), ""))))
		}
		mustIngest(t, s, delivery(alerts...))
		got := claimAll(t, s, "A")
		if len(got) != 3 {
			t.Fatalf("claimed %d", len(got))
		}
		if err := s.MarkCalling(ctx, got[0].ID, "A"); err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseJobs(ctx, "B"); err != nil { // not B's: no effect
			t.Fatal(err)
		}
		if again := claimAll(t, s, "B"); len(again) != 0 {
			t.Fatalf("B claimed %d jobs still leased to A", len(again))
		}
		if err := s.ReleaseJobs(ctx, "A"); err != nil {
			t.Fatal(err)
		}
		st, err := s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.QueueDepth != 3 || st.JobsByState[domain.JobQueued] != 2 || st.JobsByState[domain.JobRetry] != 1 {
			t.Errorf("stats after release = %+v", st)
		}
		again := claimAll(t, s, "B") // due now, no clock change
		if len(again) != 3 {
			t.Fatalf("B claimed %d after release, want 3", len(again))
		}
		for _, j := range again {
			calling := j.ID == got[0].ID
			// A release before any call gives the attempt back.
			wantAttempts := 1
			if calling {
				wantAttempts = 2
			}
			if j.Calling != calling || j.Attempts != wantAttempts {
				t.Errorf("job %+v: want Calling %v, attempts %d", j, calling, wantAttempts)
			}
		}
	})
}

func TestRetryAndDead(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		d := dev(machine(5), "")
		jobID := one(t, mustIngest(t, s, delivery(alertIn("rd", quick(d))))).JobID
		claimAll(t, s, "A")
		if err := s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "A", Outcome: OutcomeRetry, Err: "429 Retry-After 30", RetryAt: b.clock.Now().Add(30 * time.Second), MachineID: machine(5)}); err != nil {
			t.Fatal(err)
		}
		if got := claimAll(t, s, "A"); len(got) != 0 {
			t.Fatalf("claimed before its retry time: %+v", got)
		}
		st, _ := s.Stats(ctx)
		if st.QueueDepth != 0 || st.JobsByState[domain.JobRetry] != 1 {
			t.Errorf("stats = %+v", st)
		}
		// Still open: another alert is a duplicate, not a second job.
		if o := one(t, mustIngest(t, s, delivery(alertIn("rd2", quick(d))))); o.Status != domain.StatusDuplicate {
			t.Errorf("during retry: %+v", o)
		}
		b.clock.Advance(45 * time.Second)
		st, _ = s.Stats(ctx)
		if st.QueueDepth != 1 || st.OldestDue != 15*time.Second {
			t.Errorf("stats = %+v, want one job due for 15s", st)
		}
		got := claimAll(t, s, "A")
		if len(got) != 1 || got[0].LastError != "429 Retry-After 30" || got[0].Attempts != 2 || got[0].MachineID != machine(5) {
			t.Fatalf("retried claim = %+v", got)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "A", Outcome: OutcomeDead, Err: "machine not found"}); err != nil {
			t.Fatal(err)
		}
		b.clock.Advance(time.Hour)
		if got := claimAll(t, s, "A"); len(got) != 0 {
			t.Errorf("dead job claimed: %+v", got)
		}
		recs, err := s.ListScans(ctx, ScanQuery{Status: "dead"})
		if err != nil || len(recs) != 1 || recs[0].JobID != jobID || recs[0].LastError != "machine not found" || recs[0].Status != domain.JobDead || recs[0].Attempts != 2 {
			t.Errorf("dead in audit = %+v, %v", recs, err)
		}
	})
}

func TestActions(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		var ids []int64
		for i := range 3 {
			ids = append(ids, one(t, mustIngest(t, s, delivery(alertIn(fmt.Sprintf("act%d", i), quick(dev(machine(i), "")))))).JobID)
		}
		for i, id := range ids {
			submit(t, s, id, machine(i), fmt.Sprintf("action-%d", i))
			b.clock.Advance(time.Second)
		}
		open, err := s.OpenActions(ctx, 10)
		if err != nil || len(open) != 3 || open[0].ID != "action-0" || open[0].JobID != ids[0] || open[0].MachineID != machine(0) || !open[0].LastPolledAt.IsZero() {
			t.Fatalf("open = %+v, %v", open, err)
		}
		// Polled: action-0 moves on, action-1 is final, unknown ids are skipped.
		if err := s.UpdateActions(ctx, []ActionUpdate{{ID: "action-0", Status: domain.ActionInProgress}, {ID: "action-1", Status: domain.ActionFailed}, {ID: "nope", Status: domain.ActionSucceeded}}); err != nil {
			t.Fatal(err)
		}
		open, err = s.OpenActions(ctx, 10)
		if err != nil || len(open) != 2 {
			t.Fatalf("open = %+v, %v", open, err)
		}
		// Never-polled action-2 comes before the just-polled action-0.
		if open[0].ID != "action-2" || open[1].ID != "action-0" || open[1].Status != domain.ActionInProgress || !open[1].LastPolledAt.Equal(b.clock.Now()) {
			t.Errorf("open order = %+v", open)
		}
		if lim, _ := s.OpenActions(ctx, 1); len(lim) != 1 {
			t.Errorf("limit ignored: %+v", lim)
		}
		st, _ := s.Stats(ctx)
		if st.OpenActions != 2 || st.JobsByState[domain.JobSubmitted] != 3 {
			t.Errorf("stats = %+v", st)
		}
		// A final status is never moved back.
		if err := s.UpdateActions(ctx, []ActionUpdate{{ID: "action-1", Status: domain.ActionPending}}); err != nil {
			t.Fatal(err)
		}
		recs, _ := s.ListScans(ctx, ScanQuery{Device: machine(1)})
		if len(recs) != 1 || recs[0].ActionStatus != domain.ActionFailed || recs[0].Status != domain.ActionFailed || recs[0].JobState != domain.JobSubmitted {
			t.Errorf("failed action record = %+v", recs)
		}
		// Device 1's scan is over (final), device 0's is not.
		b.clock.Advance(7 * time.Hour)
		if o := one(t, mustIngest(t, s, delivery(alertIn("after1", quick(dev(machine(1), "")))))); o.Status != domain.StatusQueued {
			t.Errorf("device with a final action: %+v", o)
		}
		if o := one(t, mustIngest(t, s, delivery(alertIn("after0", quick(dev(machine(0), "")))))); o.Status != domain.StatusDuplicate {
			t.Errorf("device with an InProgress action: %+v", o)
		}
		if err := s.UpdateActions(ctx, []ActionUpdate{{ID: "", Status: "x"}}); err == nil {
			t.Error("empty action id accepted")
		}
	})
}

func TestListScans(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		d1 := dev(machine(1), "alpha.contoso.com")
		d2 := dev("", "beta.contoso.com")
		mustIngest(t, s, delivery(alertIn("s1", quick(d1))))
		b.clock.Advance(time.Second)
		mustIngest(t, s, delivery(alertIn("s2", quick(d1), DecisionInput{Device: d2, Scan: domain.ScanNone, Rule: "none", Reason: "no rule matched"})))
		b.clock.Advance(time.Second)
		j3 := one(t, mustIngest(t, s, delivery(alertIn("s3", full(d2))))).JobID
		submit(t, s, j3, machine(3), "act-3")

		cases := []struct {
			q    ScanQuery
			want []string // alert_id/decision_status/status, newest first
		}{
			{ScanQuery{}, []string{"s3/queued/Pending", "s2/skipped/skipped", "s2/duplicate/duplicate", "s1/queued/queued"}},
			{ScanQuery{Limit: 2}, []string{"s3/queued/Pending", "s2/skipped/skipped"}},
			{ScanQuery{Device: machine(1)}, []string{"s2/duplicate/duplicate", "s1/queued/queued"}},
			{ScanQuery{Device: "ALPHA.contoso.com"}, []string{"s2/duplicate/duplicate", "s1/queued/queued"}},
			{ScanQuery{Device: "beta.contoso.com"}, []string{"s3/queued/Pending", "s2/skipped/skipped"}},
			{ScanQuery{Device: machine(3)}, []string{"s3/queued/Pending"}}, // the machine beta resolved to
			{ScanQuery{Status: "queued"}, []string{"s3/queued/Pending", "s1/queued/queued"}},
			{ScanQuery{Status: "submitted"}, []string{"s3/queued/Pending"}},
			{ScanQuery{Status: "pending"}, []string{"s3/queued/Pending"}},
			{ScanQuery{Status: "skipped", Device: "beta.contoso.com"}, []string{"s2/skipped/skipped"}},
			{ScanQuery{Device: "gamma"}, nil},
		}
		for _, tc := range cases {
			recs, err := s.ListScans(ctx, tc.q)
			if err != nil {
				t.Fatalf("%+v: %v", tc.q, err)
			}
			var got []string
			for _, r := range recs {
				got = append(got, r.AlertID+"/"+r.DecisionStatus+"/"+r.Status)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ListScans(%+v) = %v, want %v", tc.q, got, tc.want)
			}
		}
		recs, _ := s.ListScans(ctx, ScanQuery{Device: machine(3)})
		r := recs[0]
		if r.JobState != domain.JobSubmitted || r.ActionID != "act-3" || r.MachineID != machine(3) || r.Rule != "ransomware-full" || r.Scan != domain.ScanFull ||
			r.Receipt != ReceiptID("sentinel", []string{"s3"}) || r.Device == nil || r.Device.DNSName != "beta.contoso.com" || !r.Time.Equal(newClock().Now().Add(2*time.Second)) {
			t.Errorf("record = %+v", r)
		}
	})
}

func TestListScansLimits(t *testing.T) {
	s := sqliteBackend(t).open(t).(*sqlStore)
	mustIngest(t, s, delivery(alertIn("m", DecisionInput{Scan: domain.ScanNone})))
	// 1005 more decisions in one statement: ingesting them one by one is
	// slow under -race, and only the count matters here.
	err := s.write(context.Background(), func(ctx context.Context, tx q) error {
		_, err := tx.exec(ctx, `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1005)
			INSERT INTO decisions (alert_pk, seq, source, alert_id, device_key, device_id, device_dns, device_aad, has_device,
				rule, scan, comment, rule_reason, cooldown_us, dry_run, status, reason, created_at)
			SELECT d.alert_pk, d.seq + n.i, d.source, d.alert_id, '', '', '', '', 0, '', 'none', '', '', 0, 0, 'skipped', '', d.created_at
			FROM decisions d, n`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ limit, want int }{{0, 100}, {-1, 100}, {5, 5}, {5000, 1000}} {
		recs, err := s.ListScans(context.Background(), ScanQuery{Limit: tc.limit})
		if err != nil || len(recs) != tc.want {
			t.Errorf("limit %d: %d records (%v), want %d", tc.limit, len(recs), err, tc.want)
		}
	}
}

func TestSQLiteDurableAcrossReopen(t *testing.T) {
	b := sqliteBackend(t)
	ctx := context.Background()
	s, err := Open(ctx, "sqlite", b.dsn, Deps{Now: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	res := mustIngest(t, s, delivery(alertIn("keep", quick(dev(machine(1), "")))))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ingest(ctx, delivery(alertIn("late"))); !errors.Is(err, ErrClosed) {
		t.Errorf("Ingest after Close = %v, want ErrClosed", err)
	}

	s2 := b.open(t)
	det, err := s2.Receipt(ctx, res.Receipt)
	if err != nil || len(det.Alerts) != 1 || len(det.Jobs) != 1 {
		t.Fatalf("after reopen: %+v, %v", det, err)
	}
	again := mustIngest(t, s2, delivery(alertIn("keep", quick(dev(machine(1), "")))))
	if !again.Duplicate || again.Receipt != res.Receipt {
		t.Errorf("redelivery after reopen = %+v", again)
	}
	if jobs := claimAll(t, s2, "A"); len(jobs) != 1 {
		t.Errorf("jobs after reopen = %+v", jobs)
	}
	// The file is in WAL mode (what the durability argument rests on).
	db, err := sql.Open("sqlite", "file:"+b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v", mode, err)
	}
	if _, err := Open(ctx, "sqlite", ":memory:", Deps{}); err == nil {
		t.Error("in-memory SQLite accepted")
	}
	if _, err := Open(ctx, "mysql", "x", Deps{}); err == nil {
		t.Error("unknown driver accepted")
	}
}

func TestConcurrentOpenMigratesOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		const n = 6
		stores := make([]Store, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				s, err := Open(context.Background(), b.driver, b.dsn, Deps{Now: b.clock.Now})
				if err != nil {
					t.Errorf("Open %d: %v", i, err)
					return
				}
				stores[i] = s
			})
		}
		wg.Wait()
		for _, s := range stores {
			if s != nil {
				t.Cleanup(func() { _ = s.Close() })
			}
		}
		if t.Failed() {
			return
		}
		for i, s := range stores {
			if err := s.Ping(context.Background()); err != nil {
				t.Errorf("Ping %d: %v", i, err)
			}
		}
		res := mustIngest(t, stores[0], delivery(alertIn("m", quick(dev(machine(1), "")))))
		if det, err := stores[n-1].Receipt(context.Background(), res.Receipt); err != nil || len(det.Jobs) != 1 {
			t.Errorf("other store sees %+v, %v", det, err)
		}
		s := stores[0].(*sqlStore)
		dir := "migrations/sqlite"
		if s.pg {
			dir = "migrations/postgres"
		}
		files, err := fs.Glob(migrationsFS, dir+"/*.sql")
		if err != nil || len(files) < 2 {
			t.Fatalf("embedded migrations %v, %v", files, err)
		}
		// Each file applied once, however many stores raced to open.
		var versions, distinct int
		if err := s.reader().row(context.Background(), `SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations`).Scan(&versions, &distinct); err != nil || versions != len(files) || distinct != len(files) {
			t.Errorf("schema_migrations rows = %d (%d distinct), %v; want %d", versions, distinct, err, len(files))
		}
	})
}

// TestGroupCommitIsolatesFailures: calls that fail inside a batch are
// rolled back alone; the others in the same transaction commit.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	b := sqliteBackend(t)
	s := b.open(t).(*sqlStore)
	ctx := context.Background()
	boom := errors.New("boom")
	var wg sync.WaitGroup
	var failed, ok atomic.Int32
	for i := range 200 {
		wg.Go(func() {
			err := s.write(ctx, func(ctx context.Context, tx q) error {
				if _, err := tx.exec(ctx, `INSERT INTO devices (key) VALUES (?)`, fmt.Sprintf("k%d", i)); err != nil {
					return err
				}
				if i%3 == 0 {
					return boom
				}
				return nil
			})
			switch {
			case errors.Is(err, boom):
				failed.Add(1)
			case err == nil:
				ok.Add(1)
			default:
				t.Errorf("write %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	var keys []string
	rows, err := s.reader().query(ctx, `SELECT key FROM devices`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		rows.Scan(&k)
		keys = append(keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	if len(keys) != int(ok.Load()) || failed.Load() != 67 {
		t.Fatalf("%d rows for %d successful and %d failed calls", len(keys), ok.Load(), failed.Load())
	}
	for _, k := range keys {
		var i int
		fmt.Sscanf(k, "k%d", &i)
		if i%3 == 0 {
			t.Errorf("failed call's row %s committed", k)
		}
	}
	// A caller whose context is already done is not run.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	ran := false
	if err := s.write(cctx, func(context.Context, q) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
		t.Errorf("cancelled write: err %v, ran %v", err, ran)
	}
}

// TestWriterQueriesStartNoGoroutine: a query inside a *sql.Tx makes
// database/sql start a goroutine (Rows.awaitDone) per query; at thousands of
// ingests a second those crowded the writer off the CPU. The writer's
// queries must start none.
func TestWriterQueriesStartNoGoroutine(t *testing.T) {
	s := sqliteBackend(t).open(t).(*sqlStore)
	ctx := context.Background()
	var started int
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		for i := range 20 {
			before := runtime.NumGoroutine()
			var n int
			if err := tx.row(ctx, `SELECT count(*) FROM devices WHERE key <> ?`, fmt.Sprint(i)).Scan(&n); err != nil {
				return err
			}
			rows, err := tx.query(ctx, `SELECT key FROM devices`)
			if err != nil {
				return err
			}
			if runtime.NumGoroutine() > before {
				started++
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if started > 0 {
		t.Errorf("%d of 20 rounds of writer queries started a goroutine, want none", started)
	}
}

// TestWriterSurvivesABrokenTransaction: work that ends the group's
// transaction itself fails, and the writer goes on with a clean one.
func TestWriterSurvivesABrokenTransaction(t *testing.T) {
	s := sqliteBackend(t).open(t).(*sqlStore)
	ctx := context.Background()
	err := s.write(ctx, func(ctx context.Context, tx q) error {
		_, err := tx.exec(ctx, `ROLLBACK`)
		return err
	})
	if err == nil {
		t.Fatal("a write that rolled the transaction back reported success")
	}
	for i := range 3 {
		if err := s.write(ctx, func(ctx context.Context, tx q) error {
			_, err := tx.exec(ctx, `INSERT INTO devices (key) VALUES (?)`, fmt.Sprintf("after%d", i))
			return err
		}); err != nil {
			t.Fatalf("write %d after the broken one: %v", i, err)
		}
	}
	var n int
	if err := s.reader().row(ctx, `SELECT count(*) FROM devices WHERE key LIKE 'after%'`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("%d rows committed after the broken transaction (err %v), want 3", n, err)
	}
}

// TestCommitGap: once groups have more than one call, calls that come
// within the gap after a group began wait and commit together; the calls
// of a lone sender do not wait. The gap is an hour, so that a wait cannot
// pass unnoticed and nothing depends on how fast the machine is: a write
// that waited would not end before the test's deadline, and a gathering
// group ends only when it is full (maxBatch calls).
func TestCommitGap(t *testing.T) {
	s := sqliteBackend(t).open(t).(*sqlStore)
	w := s.writer
	w.gap.Store(int64(time.Hour))
	t.Cleanup(func() { w.gap.Store(int64(commitGap)) })
	ctx := context.Background()
	insert := func(key string) error {
		return s.write(ctx, func(ctx context.Context, tx q) error {
			_, err := tx.exec(ctx, `INSERT INTO devices (key) VALUES (?)`, key)
			return err
		})
	}
	// background runs fn and returns a wait for its error.
	background := func(what string, fn func() error) func() {
		errc := make(chan error, 1)
		go func() { errc <- fn() }()
		return func() {
			t.Helper()
			var err error
			testutil.WaitFor(t, what, func() bool {
				select {
				case err = <-errc:
					return true
				default:
					return false
				}
			})
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}

	// A lone sender: five writes one after the other, each a group of
	// one, none waits.
	before := w.commits.Load()
	background("five writes of a lone sender, none waiting for the gap", func() error {
		for i := range 5 {
			if err := insert(fmt.Sprintf("lone%d", i)); err != nil {
				return err
			}
		}
		return nil
	})()
	if n := w.commits.Load() - before; n != 5 {
		t.Errorf("five writes one after the other took %d group commits, want 5", n)
	}

	// Two calls queue behind one that holds the writer: a group of two
	// (the group before was of one, so they do not wait).
	release := make(chan struct{})
	held := make(chan struct{})
	waitHold := background("the held write", func() error {
		return s.write(ctx, func(ctx context.Context, tx q) error {
			close(held)
			<-release
			_, err := tx.exec(ctx, `INSERT INTO devices (key) VALUES ('hold')`)
			return err
		})
	})
	<-held
	waitQ1 := background("queued write q1", func() error { return insert("q1") })
	waitQ2 := background("queued write q2", func() error { return insert("q2") })
	testutil.WaitFor(t, "two writes queued behind the held one", func() bool { return len(w.reqs) == 2 })
	before = w.commits.Load()
	close(release)
	waitHold()
	waitQ1()
	waitQ2()
	if n := w.commits.Load() - before; n != 2 {
		t.Fatalf("the held write and the two behind it took %d group commits, want 2", n)
	}

	// Right after that group of two began, a call comes: it waits for the
	// rest of the gap, and every call that arrives meanwhile joins its
	// group, until the group is full.
	// The writer is parked while gap0 is queued, so that the writer is
	// seen to take it, alone, before the others are sent.
	before = w.commits.Load()
	resume := make(chan struct{})
	w.pauses <- resume
	waits := []func(){background("write gap0", func() error { return insert("gap0") })}
	testutil.WaitFor(t, "gap0 to be queued", func() bool { return len(w.reqs) == 1 })
	close(resume)
	testutil.WaitFor(t, "the writer to take gap0", func() bool { return len(w.reqs) == 0 })
	for i := 1; i < maxBatch; i++ {
		waits = append(waits, background(fmt.Sprintf("write gap%d", i), func() error { return insert(fmt.Sprintf("gap%d", i)) }))
	}
	for _, wait := range waits {
		wait()
	}
	if n := w.commits.Load() - before; n != 1 {
		t.Errorf("%d writes inside the gap took %d group commits, want 1", maxBatch, n)
	}
}

func TestStatsEmpty(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		st, err := b.open(t).Stats(context.Background())
		if err != nil || st.QueueDepth != 0 || st.OldestDue != 0 || st.OpenActions != 0 || len(st.JobsByState) != 0 {
			t.Errorf("empty stats = %+v, %v", st, err)
		}
	})
}

// NotAttempted gives the claim's attempt back; NothingCreated clears the
// calling flag, which is otherwise kept across retries.
func TestCompleteJobRefundAndCalling(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		res := mustIngest(t, s, delivery(alertIn("nc", quick(dev(machine(7), "")))))
		jobID := one(t, res).JobID
		retry := func(r JobResult) {
			t.Helper()
			r.JobID, r.Owner, r.Outcome = jobID, "A", OutcomeRetry
			if r.RetryAt.IsZero() {
				r.RetryAt = b.clock.Now()
			}
			if err := s.CompleteJob(ctx, r); err != nil {
				t.Fatalf("CompleteJob(%+v): %v", r, err)
			}
		}
		claim := func() Job {
			t.Helper()
			got := claimAll(t, s, "A")
			if len(got) != 1 {
				t.Fatalf("claimed %d jobs, want 1", len(got))
			}
			return got[0]
		}

		// Held back by the local rate limit, twice: still the first attempt.
		for range 2 {
			if j := claim(); j.Attempts != 1 {
				t.Fatalf("attempts = %d, want 1", j.Attempts)
			}
			retry(JobResult{NotAttempted: true, NothingCreated: true, RetryAt: b.clock.Now().Add(time.Hour), Err: "local rate limit"})
			if got := claimAll(t, s, "A"); len(got) != 0 {
				t.Fatalf("claimed before its retry time: %+v", got)
			}
			b.clock.Advance(time.Hour)
		}

		// A call with an unknown end keeps calling set.
		j := claim()
		if j.Attempts != 1 || j.Calling {
			t.Fatalf("job = %+v, want attempt 1, not calling", j)
		}
		if err := s.MarkCalling(ctx, jobID, "A"); err != nil {
			t.Fatal(err)
		}
		retry(JobResult{Err: "timeout after sending"})
		j = claim()
		if j.Attempts != 2 || !j.Calling {
			t.Fatalf("job = %+v, want attempt 2, calling", j)
		}
		// A refund without proof (the look-up itself was held back) keeps
		// it too.
		retry(JobResult{NotAttempted: true, Err: "local rate limit on the look-up"})
		j = claim()
		if j.Attempts != 2 || !j.Calling {
			t.Fatalf("job = %+v, want attempt 2, still calling", j)
		}
		// Looked up, called again, answered 429: nothing exists.
		if err := s.MarkCalling(ctx, jobID, "A"); err != nil {
			t.Fatal(err)
		}
		retry(JobResult{NothingCreated: true, Err: "HTTP 429"})
		j = claim()
		if j.Attempts != 3 || j.Calling {
			t.Fatalf("job = %+v, want attempt 3, calling cleared", j)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: jobID, Owner: "A", Outcome: OutcomeDead, NotAttempted: true, Err: "x"}); err == nil || !strings.Contains(err.Error(), "not_attempted") {
			t.Errorf("NotAttempted with dead = %v, want a not_attempted error", err)
		}

		r, err := s.Receipt(ctx, res.Receipt)
		if err != nil || len(r.Jobs) != 1 {
			t.Fatalf("Receipt = %+v, %v", r, err)
		}
		var got []string
		for _, h := range r.Jobs[0].History {
			got = append(got, fmt.Sprintf("%d %s", h.Attempt, h.Outcome))
		}
		want := []string{"1 not_attempted", "1 not_attempted", "1 retry", "2 not_attempted", "2 retry"}
		if !slices.Equal(got, want) {
			t.Errorf("history = %v, want %v", got, want)
		}
		if r.Jobs[0].Attempts != 3 {
			t.Errorf("attempts = %d, want 3", r.Jobs[0].Attempts)
		}
	})
}

// TestMigrateUpgradesAnOlderDatabase: a database left by an older release
// (here: 0001 only, with the indexes 0002 drops) is brought up to date on
// Open, keeping its data, and opening it again applies nothing twice.
func TestMigrateUpgradesAnOlderDatabase(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		s := b.open(t).(*sqlStore)
		res := mustIngest(t, s, delivery(alertIn("old", quick(dev(machine(1), "old.corp.example")))))
		// Back to the 0001 schema.
		if err := s.write(ctx, func(ctx context.Context, tx q) error {
			for _, stmt := range []string{
				`DROP TABLE machine_names`,
				`DROP INDEX jobs_machine`,
				`ALTER TABLE jobs DROP COLUMN device_ip`,
				`ALTER TABLE jobs DROP COLUMN device_ip_at`,
				`ALTER TABLE decisions DROP COLUMN device_ip`,
				`CREATE INDEX decisions_device_id ON decisions (device_id)`,
				`CREATE INDEX decisions_device_dns ON decisions (device_dns)`,
				`DELETE FROM schema_migrations WHERE version <> '0001_init'`,
			} {
				if _, err := tx.exec(ctx, stmt); err != nil {
					return fmt.Errorf("%s: %w", stmt, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		for range 2 {
			s := b.open(t).(*sqlStore)
			var idx int
			q := `SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index' AND name LIKE 'decisions_device_%'`
			if s.pg {
				q = `SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname LIKE 'decisions_device_%'`
			}
			if err := s.reader().row(ctx, q).Scan(&idx); err != nil || idx != 0 {
				t.Errorf("decisions_device_* indexes after the upgrade: %d, %v; want none", idx, err)
			}
			var versions int
			if err := s.reader().row(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = '0002_drop_decision_device_indexes'`).Scan(&versions); err != nil || versions != 1 {
				t.Errorf("0002 recorded %d times, %v; want once", versions, err)
			}
			det, err := s.Receipt(ctx, res.Receipt)
			if err != nil || len(det.Jobs) != 1 {
				t.Fatalf("the older database's receipt after the upgrade: %+v, %v", det, err)
			}
			// The device filter still works without the indexes.
			scans, err := s.ListScans(ctx, ScanQuery{Device: "old.corp.example"})
			if err != nil || len(scans) != 1 {
				t.Errorf("ListScans(device) after the upgrade = %d, %v; want 1", len(scans), err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestAADOnlyDevice: a device known only by its Entra ID device id gets
// its own key (cooldown, one open scan) and is found in the audit trail by
// that id.
func TestAADOnlyDevice(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		s := b.open(t)
		const aad = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
		d := &alert.Device{AADDeviceID: aad}
		first := mustIngest(t, s, delivery(alertIn("aad-1", quick(d))))
		if len(first.Decisions) != 1 || first.Decisions[0].Status != domain.StatusQueued {
			t.Fatalf("first decision %+v, want queued", first.Decisions)
		}
		again := mustIngest(t, s, delivery(alertIn("aad-2", quick(d))))
		if again.Decisions[0].Status != domain.StatusDuplicate {
			t.Errorf("second alert for the same AAD device: %+v, want duplicate of the open scan", again.Decisions[0])
		}
		other := mustIngest(t, s, delivery(alertIn("aad-3", quick(&alert.Device{AADDeviceID: "ffffffff-4e5f-6071-8293-a4b5c6d7e8f9"}))))
		if other.Decisions[0].Status != domain.StatusQueued {
			t.Errorf("another AAD device: %+v, want queued", other.Decisions[0])
		}
		recs, err := s.ListScans(ctx, ScanQuery{Device: strings.ToUpper(aad)})
		if err != nil || len(recs) != 2 {
			t.Fatalf("ListScans(device=AAD id) = %d records, %v; want the two decisions for it", len(recs), err)
		}
		for _, r := range recs {
			if r.Device == nil || r.Device.AADDeviceID != aad {
				t.Errorf("record device %+v", r.Device)
			}
		}
	})
}
