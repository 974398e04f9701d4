package app

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
)

// e2eSamples is one body per source, each naming at least one usable device.
var e2eSamples = []struct{ source, file string }{
	{"defender", "../../testdata/samples/mde-alert.json"},
	{"graph", "../../testdata/samples/graph-alert-v2.json"},
	{"sentinel", "../../examples/demo/sentinel-incident.json"},
	{"azuremonitor", "../alert/testdata/azuremonitor-fired-custom.json"},
	{"splunk", "../alert/testdata/splunk-device.json"},
	{"elastic", "../alert/testdata/elastic-two-alerts.json"},
	{"alertmanager", "../alert/testdata/alertmanager-firing-resolved.json"},
	{"generic", "inline"},
}

const genericBody = `{"items":[{"ref":"G-1","level":"high","asset":{"fqdn":"generic-host.corp.example.com"}}]}`

const genericSource = `sources:
  generic:
    auth: {bearer_token_file: token-generic}
    mapping:
      alerts: items
      id: ref
      severity: level
      dns_name: asset.fqdn
`

// inventory builds the simulator's machines from the devices the samples
// name, so every scan can succeed: a device known only by name gets a
// made-up id, as Defender would have one.
func inventory(t *testing.T, bodies map[string][]byte, opts alert.Options) []defendersim.Machine {
	t.Helper()
	seenID, seenName := map[string]bool{}, map[string]bool{}
	var out []defendersim.Machine
	for source, body := range bodies {
		alerts, err := alert.Decode(source, body, opts)
		if err != nil {
			t.Fatalf("%s sample: %v", source, err)
		}
		for _, a := range alerts {
			for _, d := range a.Devices {
				id, name := d.ID, d.DNSName
				if id == "" {
					sum := sha1.Sum([]byte(name))
					id = hex.EncodeToString(sum[:])
				}
				if name == "" {
					name = "host-" + id[:8] + ".corp.example.com"
				}
				if seenID[id] || seenName[name] {
					continue
				}
				seenID[id], seenName[name] = true, true
				out = append(out, defendersim.Machine{ID: id, ComputerDNSName: name, OSPlatform: "Windows11", HealthStatus: "Active"})
			}
		}
	}
	return out
}

type webhookAnswer struct {
	Receipt   string `json:"receipt"`
	Duplicate bool   `json:"duplicate"`
	Decisions []struct {
		AlertID string `json:"alert_id"`
		Status  string `json:"status"`
		Scan    string `json:"scan"`
		Reason  string `json:"reason"`
	} `json:"decisions"`
}

type receiptAnswer struct {
	Jobs []struct {
		Scan      string `json:"scan"`
		State     string `json:"state"`
		LastError string `json:"last_error"`
	} `json:"jobs"`
	Actions []struct {
		Status string `json:"status"`
	} `json:"actions"`
}

// TestEverySourceEndToEnd sends one body of every source through auth,
// decoding, rules, the store, the dispatcher and the simulator, and
// follows each queued scan to Succeeded through GET /v1/receipts.
func TestEverySourceEndToEnd(t *testing.T) {
	bodies := map[string][]byte{}
	for _, s := range e2eSamples {
		if s.file == "inline" {
			bodies[s.source] = []byte(genericBody)
			continue
		}
		b, err := os.ReadFile(s.file)
		if err != nil {
			t.Fatal(err)
		}
		bodies[s.source] = b
	}
	opts := alert.Options{Generic: &alert.GenericMapping{Alerts: "items", ID: "ref", Severity: "level", DNSName: "asset.fqdn"}}
	sim, err := defendersim.New(defendersim.Options{Machines: inventory(t, bodies, opts), PendingFor: 300 * time.Millisecond, InProgressFor: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()

	extra := "dispatch:\n  poll_interval: 200ms\n" + genericSource
	for _, s := range []string{"defender", "graph", "sentinel", "azuremonitor", "splunk", "elastic", "alertmanager"} {
		extra += "  " + s + ":\n    auth: {bearer_token_file: " + sourceTokenFile(s) + "}\n"
	}
	svc := startTestService(t, sim, nil, "rules:\n  - name: all-quick\n    scan: Quick\n    cooldown: 1s\n", extra)

	receipts := map[string]int{} // receipt → queued decisions
	for _, s := range e2eSamples {
		var ans webhookAnswer
		code := svc.do(t, http.MethodPost, "/v1/webhooks/"+s.source, "application/json", bodies[s.source], &ans)
		if code != http.StatusAccepted {
			t.Fatalf("%s: status %d: %+v", s.source, code, ans)
		}
		queued := 0
		for _, d := range ans.Decisions {
			if d.Status == "queued" {
				queued++
			}
		}
		if queued == 0 {
			t.Fatalf("%s: no scan queued: %+v", s.source, ans.Decisions)
		}
		receipts[ans.Receipt] = queued
	}

	for receipt, queued := range receipts {
		var r receiptAnswer
		testutil.WaitForState(t, fmt.Sprintf("receipt %s: %d actions Succeeded", receipt, queued), func() bool {
			r = receiptAnswer{}
			if code := svc.do(t, http.MethodGet, "/v1/receipts/"+receipt, "", nil, &r); code != http.StatusOK {
				t.Fatalf("receipt %s: %d", receipt, code)
			}
			done := len(r.Actions) == queued
			for _, a := range r.Actions {
				done = done && a.Status == "Succeeded"
			}
			return done
		}, func() string { return fmt.Sprintf("actions %+v, jobs %+v", r.Actions, r.Jobs) })
	}
	if st := sim.Stats(); st.AlreadyRunning != 0 || st.Throttled != 0 {
		t.Errorf("simulator saw %d already-running answers and %d 429s, want none", st.AlreadyRunning, st.Throttled)
	}
}

// TestServiceOutcomes covers the outcomes a SOC engineer must be able to
// see in the audit trail: a device Defender does not know ends dead with
// the reason; a dry-run rule records its decision and calls nobody; a
// second alert for a device with an open scan is a duplicate; a Full after
// a queued Quick upgrades it, after a claimed one it waits for it.
func TestServiceOutcomes(t *testing.T) {
	known := defendersim.Machine{ID: strings.Repeat("ab", 20), ComputerDNSName: "known.corp.example.com", OSPlatform: "Windows11", HealthStatus: "Active"}
	sim, err := defendersim.New(defendersim.Options{Machines: []defendersim.Machine{known}, PendingFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	rulesYAML := `rules:
  - name: trial
    match: {title: {glob: "trial*"}}
    scan: Full
    dry_run: true
  - name: full
    match: {severity: high}
    scan: Full
  - name: quick
    scan: Quick
`
	svc := startTestService(t, sim, nil, rulesYAML, "dispatch:\n  poll_interval: 200ms\n")
	send := func(id, severity, title, machine, name string) webhookAnswer {
		t.Helper()
		body := fmt.Sprintf(`{"id":%q,"severity":%q,"title":%q,"machineId":%q,"computerDnsName":%q}`, id, severity, title, machine, name)
		var ans webhookAnswer
		if code := svc.do(t, http.MethodPost, "/v1/webhooks/defender", "application/json", []byte(body), &ans); code != http.StatusAccepted {
			t.Fatalf("%s: %d", id, code)
		}
		if len(ans.Decisions) != 1 {
			t.Fatalf("%s: decisions %+v", id, ans.Decisions)
		}
		return ans
	}

	unknown := send("a-unknown", "medium", "x", "", "ghost.corp.example.com")
	if unknown.Decisions[0].Status != "queued" {
		t.Fatalf("unknown device: %+v", unknown.Decisions)
	}
	dry := send("a-dry", "high", "trial detection", known.ID, known.ComputerDNSName)
	if dry.Decisions[0].Status != "dry_run" {
		t.Fatalf("dry run: %+v", dry.Decisions)
	}

	// Pause Defender so the Quick stays queued long enough to be upgraded.
	// The outage starts inside SetFaults, under the simulator's lock: every
	// call it answers after SetFaults returns sees it, so there is no event
	// to wait for before sending.
	const outage = 3 * time.Second
	sim.SetFaults(defendersim.Faults{OutageFor: outage})
	q := send("a-quick", "low", "x", known.ID, known.ComputerDNSName)
	f := send("a-full", "high", "x", known.ID, known.ComputerDNSName)
	again := send("a-again", "low", "x", known.ID, known.ComputerDNSName)
	if q.Decisions[0].Status != "queued" || again.Decisions[0].Status != "duplicate" {
		t.Fatalf("quick %+v, again %+v", q.Decisions, again.Decisions)
	}
	// A Full upgrades the Quick only while the Quick is still queued; once
	// the dispatcher has claimed it, the Full is queued to wait for the
	// Quick to end (its action stays pending here, so only the Quick goes
	// out). Which one happened depends on timing, but it must be one of the
	// two, explained, and match what reached Defender.
	wantScope := "Quick"
	switch {
	case f.Decisions[0].Status == "queued" && strings.Contains(f.Decisions[0].Reason, "upgraded"):
		wantScope = "Full"
	case f.Decisions[0].Status == "queued" && strings.Contains(f.Decisions[0].Reason, "to run after the open Quick scan"):
	default:
		t.Fatalf("full after quick: %+v", f.Decisions)
	}

	// Calls that meet the outage are retried after the default backoff (2 s,
	// then 4 s at most): the jobs cannot settle before that.
	settleWithin := outage + 6*time.Second + testutil.WaitTimeout
	testutil.WaitForWithin(t, settleWithin, "the unknown device's job to die", func() bool {
		var r receiptAnswer
		svc.do(t, http.MethodGet, "/v1/receipts/"+unknown.Receipt, "", nil, &r)
		return len(r.Jobs) == 1 && r.Jobs[0].State == "dead" && strings.Contains(r.Jobs[0].LastError, "ghost.corp.example.com")
	})

	// "Exactly one scan" without a pause: wait until no job of the known
	// device can still call Defender, stop the service (its dispatcher ends
	// the calls in flight and makes no new one), then count. The Quick's job
	// (a Full if upgraded; the Full's decision then has no job of its own)
	// settles once Defender has answered it. A Full that waits for the Quick
	// is queued only when the Quick's job closes, which needs its action to
	// be final: the simulator keeps it Pending for an hour, checked below.
	var qr, fr receiptAnswer
	testutil.WaitForStateWithin(t, settleWithin, "the known device's jobs to settle", func() bool {
		qr, fr = receiptAnswer{}, receiptAnswer{}
		svc.do(t, http.MethodGet, "/v1/receipts/"+q.Receipt, "", nil, &qr)
		svc.do(t, http.MethodGet, "/v1/receipts/"+f.Receipt, "", nil, &fr)
		if len(qr.Jobs) != 1 || !testutil.JobSettled(qr.Jobs[0].State) {
			return false
		}
		for _, j := range fr.Jobs {
			if !testutil.JobSettled(j.State) && j.State != domain.JobWaiting {
				return false
			}
		}
		return true
	}, func() string {
		return fmt.Sprintf("quick's receipt: jobs %+v; full's receipt: jobs %+v", qr.Jobs, fr.Jobs)
	})
	if qr.Jobs[0].State != domain.JobSubmitted || qr.Jobs[0].Scan != wantScope {
		t.Errorf("the known device's job is %s %s, want submitted %s", qr.Jobs[0].State, qr.Jobs[0].Scan, wantScope)
	}
	if len(qr.Actions) != 1 || domain.ActionFinal(qr.Actions[0].Status) {
		t.Fatalf("the known device's action %+v must be open, or a waiting Full could still go out", qr.Actions)
	}
	if upgraded := wantScope == domain.ScanFull; upgraded != (len(fr.Jobs) == 0) {
		t.Errorf("the Full was upgraded: %v, but its receipt has jobs %+v", upgraded, fr.Jobs)
	}

	var scans struct {
		Scans []struct {
			AlertID string `json:"alert_id"`
			Status  string `json:"status"`
		} `json:"scans"`
	}
	if code := svc.do(t, http.MethodGet, "/v1/scans?status=dry_run", "", nil, &scans); code != http.StatusOK || len(scans.Scans) != 1 || scans.Scans[0].AlertID != "a-dry" {
		t.Fatalf("audit trail of dry runs: %d %+v", code, scans)
	}

	svc.stop(t)
	if st := sim.Stats(); st.ScansCreated != 1 || st.AlreadyRunning != 0 {
		t.Fatalf("scans created %d, already running %d: want exactly one scan for one device", st.ScansCreated, st.AlreadyRunning)
	}
	for _, a := range sim.Actions() {
		if a.Scope != wantScope {
			t.Errorf("the scan that went out is %s, want %s after %+v", a.Scope, wantScope, f.Decisions)
		}
	}
}
