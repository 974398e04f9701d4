package store

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// TestBindMachineOneScanPerMachine: four names of one machine decided
// under four device keys; once resolved, only the first job proceeds, the
// others are closed as deduplicated with duplicate (while the first is
// open) or cooldown (after it is final), naming the machine and the name it
// was scanned as, and GET /v1/scans?device= by any name finds them all.
func TestBindMachineOneScanPerMachine(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		m := machine(4)
		names := []*alert.Device{
			{DNSName: "ws-004.contoso.com"},
			{DNSName: "ws-004"},
			{AADDeviceID: "80fe8ff8-2624-418e-9591-41f0491218f9"},
			{IP: "10.1.2.3"},
		}
		var jobIDs []int64
		for i, d := range names {
			o := one(t, mustIngest(t, s, delivery(alertIn("a"+string(rune('1'+i)), full(d)))))
			if o.Status != domain.StatusQueued {
				t.Fatalf("%+v: %+v", d, o)
			}
			jobIDs = append(jobIDs, o.JobID)
		}
		jobs := claimAll(t, s, "w")
		if len(jobs) != 4 {
			t.Fatalf("claimed %d jobs", len(jobs))
		}
		if jobs[3].Device.IP != "10.1.2.3" || jobs[3].IPSeenAt.IsZero() {
			t.Errorf("IP job: %+v", jobs[3])
		}
		c, err := s.BindMachine(ctx, jobIDs[0], "w", strings.ToUpper(m))
		if err != nil || c.Verdict != MachineProceed {
			t.Fatalf("first bind: %+v %v", c, err)
		}
		if err := s.MarkCalling(ctx, jobIDs[0], "w"); err != nil {
			t.Fatal(err)
		}
		if err := s.CompleteJob(ctx, JobResult{JobID: jobIDs[0], Owner: "w", Outcome: OutcomeSubmitted, MachineID: m,
			ActionID: "act-1", ActionStatus: domain.ActionPending}); err != nil {
			t.Fatal(err)
		}
		// Open: the second name is a duplicate.
		c, err = s.BindMachine(ctx, jobIDs[1], "w", m)
		if err != nil || c.Verdict != MachineDuplicate || !strings.Contains(c.Reason, m) || !strings.Contains(c.Reason, "as ws-004.contoso.com") {
			t.Fatalf("second bind: %+v %v", c, err)
		}
		// A bind once closed is a lost lease.
		if _, err := s.BindMachine(ctx, jobIDs[1], "w", m); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("bind of a closed job: %v", err)
		}
		finish(t, s, "act-1")
		b.clock.Advance(10 * time.Second)
		for _, id := range jobIDs[2:] {
			c, err := s.BindMachine(ctx, id, "w", m)
			if err != nil || c.Verdict != MachineCooldown || !strings.Contains(c.Reason, "machine "+m+" already scanned at") ||
				!strings.Contains(c.Reason, "(Full scan, job ") || !strings.Contains(c.Reason, "as ws-004.contoso.com); cooldown 6h0m0s until ") {
				t.Fatalf("bind job %d: %+v %v", id, c, err)
			}
		}
		for _, name := range []string{"WS-004", "ws-004.contoso.com.", "10.1.2.3", m} {
			recs, err := s.ListScans(ctx, ScanQuery{Device: name})
			if err != nil {
				t.Fatal(err)
			}
			// Every name was resolved only in this test's binds; the
			// records of the others are found through the jobs' machine.
			if name == m && len(recs) != 4 {
				t.Fatalf("?device=%s: %d records", name, len(recs))
			}
			for _, r := range recs {
				if r.MachineID != m {
					t.Errorf("?device=%s: record %+v", name, r)
				}
				want := []string{"10.1.2.3", "80fe8ff8-2624-418e-9591-41f0491218f9", "ws-004", "ws-004.contoso.com"}
				if !slices.Equal(r.KnownAs, want) {
					t.Errorf("known_as %v, want %v", r.KnownAs, want)
				}
			}
		}
		recs, _ := s.ListScans(ctx, ScanQuery{Device: m})
		statuses := map[string]int{}
		for _, r := range recs {
			statuses[r.Status]++
			if r.JobState == domain.JobDeduplicated && (r.DecisionStatus != r.Status || !strings.Contains(r.Reason, m)) {
				t.Errorf("deduplicated record: %+v", r)
			}
		}
		if statuses[domain.ActionSucceeded] != 1 || statuses[domain.StatusDuplicate] != 1 || statuses[domain.StatusCooldown] != 2 {
			t.Errorf("statuses %v", statuses)
		}
		st, _ := s.Stats(ctx)
		if st.JobsByState[domain.JobDeduplicated] != 3 {
			t.Errorf("jobs by state %v", st.JobsByState)
		}
	})
}

// TestBindMachineRace: two names of one machine bound at once from two
// replicas; exactly one proceeds.
func TestBindMachineRace(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s1, s2 := b.open(t), b.open(t)
		ctx := context.Background()
		m := machine(9)
		for i := range 20 {
			b.clock.Advance(24 * time.Hour)
			one(t, mustIngest(t, s1, delivery(alertIn("x"+string(rune('a'+i)), quick(&alert.Device{DNSName: "pc-9"})))))
			one(t, mustIngest(t, s1, delivery(alertIn("y"+string(rune('a'+i)), quick(&alert.Device{DNSName: "pc-9.corp.example"})))))
			jobs := claimAll(t, s1, "w")
			if len(jobs) != 2 {
				t.Fatalf("round %d: claimed %d", i, len(jobs))
			}
			var wg sync.WaitGroup
			checks := make([]MachineCheck, 2)
			errs := make([]error, 2)
			for k, st := range []Store{s1, s2} {
				wg.Go(func() { checks[k], errs[k] = st.BindMachine(ctx, jobs[k].ID, "w", m) })
			}
			wg.Wait()
			proceed := 0
			for k := range 2 {
				if errs[k] != nil {
					t.Fatal(errs[k])
				}
				if checks[k].Verdict == MachineProceed {
					proceed++
					if err := s1.CompleteJob(ctx, JobResult{JobID: jobs[k].ID, Owner: "w", Outcome: OutcomeSubmitted, MachineID: m,
						ActionID: "act-" + string(rune('a'+i)), ActionStatus: domain.ActionSucceeded}); err != nil {
						t.Fatal(err)
					}
				} else if checks[k].Verdict != MachineDuplicate {
					t.Errorf("round %d: %+v", i, checks[k])
				}
			}
			if proceed != 1 {
				t.Fatalf("round %d: %d proceeded", i, proceed)
			}
		}
	})
}

// TestBindMachineFullWaitsForQuick: a Full decided under another name than
// the machine's open Quick is neither dropped nor sent alongside it.
func TestBindMachineFullWaitsForQuick(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s := b.open(t)
		ctx := context.Background()
		m := machine(5)
		q := one(t, mustIngest(t, s, delivery(alertIn("q", quick(dev(m, ""))))))
		f := one(t, mustIngest(t, s, delivery(alertIn("f", full(&alert.Device{DNSName: "pc-5"})))))
		claimAll(t, s, "w")
		c, err := s.BindMachine(ctx, f.JobID, "w", m)
		if err != nil || c.Verdict != MachineLater || !strings.Contains(c.Reason, "job "+strconv.FormatInt(q.JobID, 10)) {
			t.Fatalf("%+v %v", c, err)
		}
	})
}

// TestMachineNames: resolved names are shared between replicas and read
// only while younger than the caller's TTL.
func TestMachineNames(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		s1, s2 := b.open(t), b.open(t)
		ctx := context.Background()
		if err := s1.RememberMachineName(ctx, "dns:ws-004", strings.ToUpper(machine(1))); err != nil {
			t.Fatal(err)
		}
		id, _, ok, err := s2.MachineByName(ctx, "dns:ws-004", time.Hour)
		if err != nil || !ok || id != machine(1) {
			t.Fatalf("%q %v %v", id, ok, err)
		}
		b.clock.Advance(time.Hour)
		if _, _, ok, _ := s2.MachineByName(ctx, "dns:ws-004", time.Hour); ok {
			t.Error("an expired name was answered")
		}
		if err := s2.RememberMachineName(ctx, "dns:ws-004", machine(2)); err != nil {
			t.Fatal(err)
		}
		if id, _, ok, _ := s1.MachineByName(ctx, "dns:ws-004", time.Hour); !ok || id != machine(2) {
			t.Errorf("after update: %q %v", id, ok)
		}
		if err := s2.RememberMachineName(ctx, "dns:ws-004", ""); err != nil {
			t.Fatal(err)
		}
		if _, _, ok, _ := s1.MachineByName(ctx, "dns:ws-004", time.Hour); ok {
			t.Error("a forgotten name was answered")
		}
	})
}
