package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// jobState is the state of job id as the audit trail for device shows it.
func jobState(t testing.TB, s Store, device string, id int64) string {
	t.Helper()
	recs, err := s.ListScans(context.Background(), ScanQuery{Device: device, Limit: 1000})
	if err != nil {
		t.Fatalf("ListScans: %v", err)
	}
	for _, r := range recs {
		if r.JobID == id {
			return r.JobState
		}
	}
	t.Fatalf("job %d not in the audit trail of %s: %+v", id, device, recs)
	return ""
}

// claimOne claims every due job as owner and returns job id's lease,
// failing if id was not among them.
func claimOne(t testing.TB, s Store, owner string, id int64) Job {
	t.Helper()
	for _, j := range claimAll(t, s, owner) {
		if j.ID == id {
			return j
		}
	}
	t.Fatalf("job %d was not claimable", id)
	return Job{}
}

func TestFullWaitsForClaimedQuick(t *testing.T) {
	const owner = "d1"
	cases := []struct {
		name string
		// end closes the claimed Quick job; before it returns the waiting
		// job must still be waiting wherever check is called.
		end func(t *testing.T, s Store, quickID int64, check func())
	}{
		{"submitted, action goes final", func(t *testing.T, s Store, quickID int64, check func()) {
			ctx := context.Background()
			if err := s.MarkCalling(ctx, quickID, owner); err != nil {
				t.Fatal(err)
			}
			check()
			if err := s.CompleteJob(ctx, JobResult{JobID: quickID, Owner: owner, Outcome: OutcomeSubmitted,
				MachineID: machine(1), ActionID: "act-q", ActionStatus: domain.ActionPending}); err != nil {
				t.Fatal(err)
			}
			check()
			if err := s.UpdateActions(ctx, []ActionUpdate{{ID: "act-q", Status: domain.ActionInProgress}}); err != nil {
				t.Fatal(err)
			}
			check()
			if err := s.UpdateActions(ctx, []ActionUpdate{{ID: "act-q", Status: domain.ActionSucceeded}}); err != nil {
				t.Fatal(err)
			}
		}},
		{"submitted, action already final", func(t *testing.T, s Store, quickID int64, check func()) {
			if err := s.CompleteJob(context.Background(), JobResult{JobID: quickID, Owner: owner, Outcome: OutcomeSubmitted,
				MachineID: machine(1), ActionID: "act-q", ActionStatus: domain.ActionFailed}); err != nil {
				t.Fatal(err)
			}
		}},
		{"dead", func(t *testing.T, s Store, quickID int64, check func()) {
			if err := s.CompleteJob(context.Background(), JobResult{JobID: quickID, Owner: owner, Outcome: OutcomeDead, Err: "machine not found"}); err != nil {
				t.Fatal(err)
			}
		}},
		{"already scanning without an action", func(t *testing.T, s Store, quickID int64, check func()) {
			if err := s.CompleteJob(context.Background(), JobResult{JobID: quickID, Owner: owner, Outcome: OutcomeAlreadyScanning,
				MachineID: machine(1), Reason: "a scan is already pending"}); err != nil {
				t.Fatal(err)
			}
		}},
		{"retry first, then dead", func(t *testing.T, s Store, quickID int64, check func()) {
			ctx := context.Background()
			if err := s.CompleteJob(ctx, JobResult{JobID: quickID, Owner: owner, Outcome: OutcomeRetry, Err: "429"}); err != nil {
				t.Fatal(err)
			}
			// The Quick is open again (retry) and has reached Defender
			// once; the Full keeps waiting and is never claimed.
			check()
			claimOne(t, s, owner, quickID)
			check()
			if err := s.CompleteJob(ctx, JobResult{JobID: quickID, Owner: owner, Outcome: OutcomeDead, Err: "gave up"}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eachBackend(t, func(t *testing.T, b *backend) {
				s := b.open(t)
				ctx := context.Background()
				d := dev(machine(1), "")
				quickID := one(t, mustIngest(t, s, delivery(alertIn("q", quick(d))))).JobID
				claimOne(t, s, owner, quickID)

				o := one(t, mustIngest(t, s, delivery(alertIn("f", full(d)))))
				want := fmt.Sprintf("queued Full scan (job %d) to run after the open Quick scan (job %d) ends", o.JobID, quickID)
				if o.Status != domain.StatusQueued || o.JobID == 0 || o.JobID == quickID || !strings.HasPrefix(o.Reason, want) {
					t.Fatalf("Full after a claimed Quick = %+v, want queued %q", o, want)
				}
				fullID := o.JobID
				check := func() {
					t.Helper()
					if st := jobState(t, s, machine(1), fullID); st != domain.JobWaiting {
						t.Fatalf("Full job state = %q before the Quick ended, want %q", st, domain.JobWaiting)
					}
					st, err := s.Stats(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if st.JobsByState[domain.JobWaiting] != 1 {
						t.Fatalf("stats = %+v, want one waiting job", st)
					}
					for _, j := range claimAll(t, s, "other") {
						if j.ID == fullID {
							t.Fatalf("waiting job %d was claimed", fullID)
						}
					}
					if err := s.ReleaseJobs(ctx, "other"); err != nil {
						t.Fatal(err)
					}
				}
				check()
				tc.end(t, s, quickID, check)

				if st := jobState(t, s, machine(1), fullID); st != domain.JobQueued {
					t.Fatalf("Full job state = %q after the Quick ended, want %q", st, domain.JobQueued)
				}
				st, err := s.Stats(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if st.JobsByState[domain.JobWaiting] != 0 || st.JobsByState[domain.JobQueued] != 1 || st.QueueDepth != 1 {
					t.Errorf("stats after promotion = %+v", st)
				}
				// Promoted, the Full is the device's open job, and due now
				// (the Quick's cooldown does not hold a Full back).
				if o := one(t, mustIngest(t, s, delivery(alertIn("q2", quick(d))))); o.Status != domain.StatusDuplicate ||
					!strings.Contains(o.Reason, fmt.Sprintf("open Full scan (job %d", fullID)) {
					t.Errorf("Quick after promotion = %+v", o)
				}
				j := claimOne(t, s, "d2", fullID)
				if j.Scan != domain.ScanFull || j.State != domain.JobLeased {
					t.Errorf("claimed promoted job = %+v", j)
				}
			})
		})
	}
}

func TestWaitingFullDuplicates(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		d := dev(machine(2), "")
		quickID := one(t, mustIngest(t, s, delivery(alertIn("q", quick(d))))).JobID
		claimOne(t, s, "d1", quickID)
		fullID := one(t, mustIngest(t, s, delivery(alertIn("f1", full(d))))).JobID

		cases := []struct {
			alert string
			in    DecisionInput
		}{
			{"f2", full(d)},
			{"q2", quick(d)},
		}
		for _, tc := range cases {
			o := one(t, mustIngest(t, s, delivery(alertIn(tc.alert, tc.in))))
			if o.Status != domain.StatusDuplicate || o.JobID != 0 || !strings.Contains(o.Reason, fmt.Sprintf("Full scan (job %d, waiting)", fullID)) {
				t.Errorf("%s scan while a Full waits = %+v", tc.in.Scan, o)
			}
		}
		if n := totalJobs(t, s); n != 2 {
			t.Errorf("jobs = %d, want the Quick and one waiting Full", n)
		}
		// Lease expiry hands the Quick out again, never the waiting Full.
		b.clock.Advance(2 * time.Minute)
		jobs := claimAll(t, s, "d2")
		if len(jobs) != 1 || jobs[0].ID != quickID {
			t.Errorf("claimed after lease expiry = %+v, want only the Quick %d", jobs, quickID)
		}
		recs, err := s.ListScans(ctx, ScanQuery{Status: domain.JobWaiting})
		if err != nil || len(recs) != 1 || recs[0].JobID != fullID || recs[0].Status != domain.JobWaiting || recs[0].JobState != domain.JobWaiting {
			t.Errorf("ListScans(status=waiting) = %+v, %v", recs, err)
		}
		// A Full while a Full is open (not waiting) stays a plain duplicate.
		if err := s.CompleteJob(ctx, JobResult{JobID: quickID, Owner: "d2", Outcome: OutcomeDead, Err: "x"}); err != nil {
			t.Fatal(err)
		}
		if o := one(t, mustIngest(t, s, delivery(alertIn("f3", full(d))))); o.Status != domain.StatusDuplicate ||
			o.Reason != fmt.Sprintf("device already has an open Full scan (job %d, queued)", fullID) {
			t.Errorf("Full while the promoted Full is open = %+v", o)
		}
	})
}

func TestConcurrentFullsWhileQuickLeased(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		replicas := []Store{b.open(t), b.open(t)}
		d := dev(machine(3), "")
		quickID := one(t, mustIngest(t, replicas[0], delivery(alertIn("q", quick(d))))).JobID
		claimOne(t, replicas[0], "d1", quickID)
		ingestRace(t, replicas, 20, func(i int) AlertInput { return alertIn(fmt.Sprintf("full-%d", i), full(d)) })
		st, err := replicas[1].Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.JobsByState[domain.JobWaiting] != 1 || st.JobsByState[domain.JobLeased] != 1 || totalJobs(t, replicas[1]) != 2 {
			t.Errorf("stats = %+v, want the leased Quick and one waiting Full", st)
		}
	})
}
