package dispatch

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/internal/testutil"
)

// queueCooldown queues a scan decision with a cooldown, as a rule would.
func (e *env) queueCooldown(t testing.TB, dev alert.Device, scan string, cooldown time.Duration) string {
	t.Helper()
	e.seq++
	id := fmt.Sprintf("alert-cd-%d", e.seq)
	res, err := e.st.Ingest(context.Background(), store.Delivery{
		Source: "generic",
		Alerts: []store.AlertInput{{
			Alert:     alert.Alert{ID: id, Source: "generic", Severity: domain.SeverityHigh, Devices: []alert.Device{dev}},
			Decisions: []store.DecisionInput{{Device: &dev, Rule: "r", Scan: scan, Comment: "scanhook r: " + id, Cooldown: cooldown}},
		}},
	})
	if err != nil || len(res.Decisions) != 1 || res.Decisions[0].Status != domain.StatusQueued {
		t.Fatalf("Ingest: %+v %v", res, err)
	}
	return res.Receipt
}

// TestOneMachineManyNames: one machine named by its DNS name, its short
// name and its Entra ID device id in three alerts inside its cooldown is
// scanned once; the other two jobs are closed as deduplicated without a
// Defender call, their decisions duplicate or cooldown naming the machine.
func TestOneMachineManyNames(t *testing.T) {
	ms := defendersim.GenerateMachines(2)
	e := newEnv(t, envOpts{sim: defendersim.Options{Machines: ms}})
	m := ms[0]
	var receipts []string
	for _, dev := range []alert.Device{{DNSName: m.ComputerDNSName}, {DNSName: "ws-001"}, {AADDeviceID: m.AADDeviceID}} {
		receipts = append(receipts, e.queueCooldown(t, dev, domain.ScanFull, 12*time.Hour))
	}
	d := e.dispatcher(t, Options{Workers: 4})
	stop := start(t, d)
	states := map[string]int{}
	for _, r := range receipts {
		j := e.waitJob(t, r, domain.JobSubmitted, domain.JobDeduplicated, domain.JobDead, domain.JobAlreadyScanning)
		states[j.State]++
		if j.MachineID != m.ID {
			t.Errorf("job %d machine %q, want %s", j.ID, j.MachineID, m.ID)
		}
		if j.State == domain.JobDeduplicated && !strings.Contains(j.LastError, "machine "+m.ID) {
			t.Errorf("deduplicated job %d: %q", j.ID, j.LastError)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(scanRequests(e.sim)); n != 1 {
		t.Errorf("%d scan requests, want 1", n)
	}
	if states[domain.JobSubmitted] != 1 || states[domain.JobDeduplicated] != 2 {
		t.Errorf("job states %v", states)
	}
	recs, err := e.st.ListScans(context.Background(), store.ScanQuery{Device: m.ID})
	if err != nil || len(recs) != 3 {
		t.Fatalf("ListScans: %d %v", len(recs), err)
	}
	for _, r := range recs {
		if r.JobState != domain.JobDeduplicated {
			continue
		}
		if (r.DecisionStatus != domain.StatusDuplicate && r.DecisionStatus != domain.StatusCooldown) || !strings.Contains(r.Reason, m.ID) {
			t.Errorf("record %+v", r)
		}
	}
}

// TestResolvedNamesSharedThroughStore: a name resolved by one dispatcher is
// answered from the store to another (a replica, or after a restart),
// without a Defender lookup, while younger than ResolveTTL.
func TestResolvedNamesSharedThroughStore(t *testing.T) {
	ms := defendersim.GenerateMachines(2)
	e := newEnv(t, envOpts{sim: defendersim.Options{Machines: ms}})
	dev := alert.Device{DNSName: ms[1].ComputerDNSName}
	r1 := e.queueCooldown(t, dev, domain.ScanQuick, 0)
	stop := start(t, e.dispatcher(t, Options{Workers: 1, Owner: "one"}))
	e.waitJob(t, r1, domain.JobSubmitted)
	testutil.WaitFor(t, "the first scan's action final", func() bool {
		_, acts := e.job(t, r1)
		return len(acts) == 1 && domain.ActionFinal(acts[0].Status)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := lookups(t, e.sim); len(got) != 1 {
		t.Fatalf("lookups %q, want 1", got)
	}
	e2 := *e
	e2.reg = prometheus.NewRegistry()
	d2 := e2.dispatcher(t, Options{Workers: 1, Owner: "two"})
	r2 := e.queueCooldown(t, dev, domain.ScanQuick, 0)
	stop = start(t, d2)
	j := e.waitJob(t, r2, domain.JobSubmitted, domain.JobDeduplicated, domain.JobAlreadyScanning)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if j.MachineID != ms[1].ID {
		t.Errorf("job %+v", j)
	}
	if got := lookups(t, e.sim); len(got) != 1 {
		t.Errorf("lookups %q, want still 1", got)
	}
	testutil.WaitFor(t, "the store hit counted", func() bool {
		return counter(t, e2.reg, "scanhook_dispatch_resolves_total", map[string]string{"result": "store_hit"}) == 1
	})
}

// TestResolveByIP: a device named only by an internal IP is scanned when
// exactly one machine was seen with it near the alert's time; none or
// several make the job dead, saying so, with no scan.
func TestResolveByIP(t *testing.T) {
	now := time.Now()
	ms := defendersim.GenerateMachines(3)
	ms[0].IPHistory = []defendersim.IPSeen{{IP: "10.1.2.3", At: now.Add(-time.Minute)}}
	ms[1].IPHistory = []defendersim.IPSeen{{IP: "10.1.2.4", At: now.Add(-time.Minute)}}
	ms[2].IPHistory = []defendersim.IPSeen{{IP: "10.1.2.4", At: now.Add(-2 * time.Minute)}}
	e := newEnv(t, envOpts{sim: defendersim.Options{Machines: ms}})
	one, _ := e.queue(t, alert.Device{IP: "10.1.2.3"}, domain.ScanQuick)
	two, _ := e.queue(t, alert.Device{IP: "10.1.2.4"}, domain.ScanQuick)
	none, _ := e.queue(t, alert.Device{IP: "10.1.2.5"}, domain.ScanQuick)
	stop := start(t, e.dispatcher(t, Options{Workers: 2}))
	j := e.waitJob(t, one, domain.JobSubmitted, domain.JobDead)
	if j.State != domain.JobSubmitted || j.MachineID != ms[0].ID {
		t.Errorf("one match: %s on %q (%s)", j.State, j.MachineID, j.LastError)
	}
	j = e.waitJob(t, two, domain.JobSubmitted, domain.JobDead)
	if j.State != domain.JobDead || !strings.Contains(j.LastError, "IP 10.1.2.4 matched 2 machines at ") || !strings.Contains(j.LastError, ": not scanned") {
		t.Errorf("two matches: %s (%s)", j.State, j.LastError)
	}
	j = e.waitJob(t, none, domain.JobSubmitted, domain.JobDead)
	if j.State != domain.JobDead || !strings.Contains(j.LastError, "IP 10.1.2.5 matched no Defender machine") {
		t.Errorf("no match: %s (%s)", j.State, j.LastError)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(scanRequests(e.sim)); n != 1 {
		t.Errorf("%d scans, want 1", n)
	}
	if n := len(apiRequests(e.sim, "GET", "/api/machines/findbyip(")); n != 3 {
		t.Errorf("%d findbyip calls, want 3", n)
	}
}
