package app

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
)

// TestOneMachineOneScanWhateverItIsCalled (issue #15): one machine named by
// its FQDN, by its short name in another case, by its Entra ID device id
// and by an internal IP, in four alerts inside its cooldown, gets exactly
// one scan; the other three decisions end duplicate or cooldown, naming
// the machine id, and the audit trail lists every name it was known by.
func TestOneMachineOneScanWhateverItIsCalled(t *testing.T) {
	now := time.Now().UTC()
	ms := defendersim.GenerateMachines(5)
	target := ms[3]
	target.ComputerDNSName = "ws-004.contoso.com"
	target.IPHistory = []defendersim.IPSeen{{IP: "10.1.2.3", At: now.Add(-2 * time.Minute)}}
	ms[3] = target
	// Another machine had the address an hour earlier: findbyip at the
	// alert's time must not match it.
	ms[0].IPHistory = []defendersim.IPSeen{{IP: "10.1.2.3", At: now.Add(-time.Hour)}}
	sim, err := defendersim.New(defendersim.Options{Machines: ms, PendingFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()

	extra := `dispatch:
  poll_interval: 200ms
sources:
  defender:
    auth: {bearer_token_file: token}
  generic:
    auth: {bearer_token_file: token-generic}
    mapping:
      alerts: items
      id: ref
      severity: level
      time: at
      dns_name: host
      aad_device_id: aad
      ip: ip
`
	svc := startTestService(t, sim, nil, "rules:\n  - name: full\n    scan: Full\n    cooldown: 12h\n", extra)
	bodies := []string{
		`{"host":"ws-004.contoso.com"}`,
		`{"host":"WS-004"}`,
		fmt.Sprintf(`{"aad":%q}`, strings.ToUpper(target.AADDeviceID)),
		`{"ip":"10.1.2.3"}`,
	}
	var receipts []string
	for i, dev := range bodies {
		body := fmt.Sprintf(`{"items":[{"ref":"om-%d","level":"high","at":%q,"device":0}]}`, i, now.Format(time.RFC3339))
		body = strings.Replace(body, `"device":0`, strings.Trim(dev, "{}"), 1)
		var ans webhookAnswer
		if code := svc.do(t, http.MethodPost, "/v1/webhooks/generic", "application/json", []byte(body), &ans); code != http.StatusAccepted {
			t.Fatalf("alert %d: %d %+v", i, code, ans)
		}
		if len(ans.Decisions) != 1 || ans.Decisions[0].Status != domain.StatusQueued {
			// Each name is its own device key at intake: the machine is
			// only known once resolved.
			t.Fatalf("alert %d: %+v", i, ans.Decisions)
		}
		receipts = append(receipts, ans.Receipt)
	}
	svc.waitSettled(t, testutil.WaitTimeout, receipts)

	var scans struct {
		Scans []struct {
			AlertID        string   `json:"alert_id"`
			Status         string   `json:"status"`
			DecisionStatus string   `json:"decision_status"`
			JobState       string   `json:"job_state"`
			Reason         string   `json:"reason"`
			MachineID      string   `json:"machine_id"`
			KnownAs        []string `json:"known_as"`
		} `json:"scans"`
	}
	if code := svc.do(t, http.MethodGet, "/v1/scans?device="+url.QueryEscape("WS-004"), "", nil, &scans); code != http.StatusOK || len(scans.Scans) != 4 {
		t.Fatalf("GET /v1/scans?device=WS-004: %d, %d records: %+v", code, len(scans.Scans), scans)
	}
	wantNames := []string{"10.1.2.3", target.AADDeviceID, "ws-004", "ws-004.contoso.com"}
	slices.Sort(wantNames)
	submitted, deduplicated := 0, 0
	for _, s := range scans.Scans {
		if s.MachineID != target.ID || !slices.Equal(s.KnownAs, wantNames) {
			t.Errorf("%s: machine %q known as %v, want %s known as %v", s.AlertID, s.MachineID, s.KnownAs, target.ID, wantNames)
		}
		switch s.JobState {
		case domain.JobSubmitted:
			submitted++
		case domain.JobDeduplicated:
			deduplicated++
			if (s.DecisionStatus != domain.StatusDuplicate && s.DecisionStatus != domain.StatusCooldown) ||
				s.Status != s.DecisionStatus || !strings.Contains(s.Reason, "machine "+target.ID) {
				t.Errorf("%s: %+v", s.AlertID, s)
			}
		default:
			t.Errorf("%s: job %s (%s)", s.AlertID, s.JobState, s.Reason)
		}
	}
	if submitted != 1 || deduplicated != 3 {
		t.Errorf("%d submitted, %d deduplicated; want 1 and 3", submitted, deduplicated)
	}

	svc.stop(t)
	if st := sim.Stats(); st.ScansCreated != 1 || st.AlreadyRunning != 0 {
		t.Fatalf("scans created %d, already running %d: want exactly one scan for one machine", st.ScansCreated, st.AlreadyRunning)
	}
	if a := sim.Actions(); len(a) != 1 || !strings.EqualFold(a[0].MachineID, target.ID) {
		t.Errorf("actions %+v", a)
	}
}
