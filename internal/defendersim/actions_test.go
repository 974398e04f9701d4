package defendersim

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestRunScanRequests(t *testing.T) {
	ms := GenerateMachines(5)
	ms = append(ms, Machine{ID: strings.Repeat("f", 40), ComputerDNSName: "tux.contoso.com", OSPlatform: "Linux"})
	p := newPlain(t, Options{Machines: ms})
	id := func(i int) string { return ms[i].ID }
	path := func(i int) string { return "/api/machines/" + id(i) + "/runAntiVirusScan" }
	cases := []struct {
		name, path, ct, body string
		status               int
		code                 string
	}{
		{"quick", path(0), "application/json", `{"Comment":"alert 1","ScanType":"Quick"}`, 201, ""},
		{"full with charset", path(1), "application/json; charset=utf-8", `{"ScanType":"Full","Comment":"alert 2"}`, 201, ""},
		{"already running", path(0), "application/json", `{"Comment":"again","ScanType":"Full"}`, 400, "ActiveRequestAlreadyExists"},
		{"lower-case keys", path(2), "application/json", `{"comment":"x","scanType":"Quick"}`, 400, "InvalidRequestBody"},
		{"lower-case ScanType key", path(2), "application/json", `{"Comment":"x","scantype":"Quick"}`, 400, "InvalidRequestBody"},
		{"missing ScanType", path(2), "application/json", `{"Comment":"x"}`, 400, "MissingRequiredParameter"},
		{"missing Comment", path(2), "application/json", `{"ScanType":"Quick"}`, 400, "MissingRequiredParameter"},
		{"null Comment", path(2), "application/json", `{"Comment":null,"ScanType":"Quick"}`, 400, "MissingRequiredParameter"},
		{"empty Comment", path(2), "application/json", `{"Comment":"  ","ScanType":"Quick"}`, 400, "MissingRequiredParameter"},
		{"lower-case scan type value", path(2), "application/json", `{"Comment":"x","ScanType":"quick"}`, 400, "InvalidRequestBody"},
		{"other scan type", path(2), "application/json", `{"Comment":"x","ScanType":"Custom"}`, 400, "InvalidRequestBody"},
		{"number comment", path(2), "application/json", `{"Comment":5,"ScanType":"Quick"}`, 400, "InvalidRequestBody"},
		{"extra key", path(2), "application/json", `{"Comment":"x","ScanType":"Quick","Priority":1}`, 400, "InvalidRequestBody"},
		{"duplicate key", path(2), "application/json", `{"Comment":"x","Comment":"y","ScanType":"Quick"}`, 400, "InvalidRequestBody"},
		{"array", path(2), "application/json", `[{"Comment":"x","ScanType":"Quick"}]`, 400, "InvalidRequestBody"},
		{"trailing data", path(2), "application/json", `{"Comment":"x","ScanType":"Quick"}{}`, 400, "InvalidRequestBody"},
		{"truncated", path(2), "application/json", `{"Comment":"x","ScanType":"Qu`, 400, "InvalidRequestBody"},
		{"empty body", path(2), "application/json", ``, 400, "InvalidRequestBody"},
		{"form content type", path(2), "application/x-www-form-urlencoded", `{"Comment":"x","ScanType":"Quick"}`, 415, "UnsupportedMediaType"},
		{"no content type", path(2), "", `{"Comment":"x","ScanType":"Quick"}`, 415, "UnsupportedMediaType"},
		{"unknown machine", "/api/machines/" + strings.Repeat("0", 40) + "/runAntiVirusScan", "application/json", `{"Comment":"x","ScanType":"Quick"}`, 404, "ResourceNotFound"},
		{"name instead of id", "/api/machines/" + ms[2].ComputerDNSName + "/runAntiVirusScan", "application/json", `{"Comment":"x","ScanType":"Quick"}`, 404, "ResourceNotFound"},
		{"linux", "/api/machines/" + strings.Repeat("f", 40) + "/runAntiVirusScan", "application/json", `{"Comment":"x","ScanType":"Quick"}`, 400, "OsPlatformNotSupported"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := map[string]string{"Authorization": "Bearer " + p.token}
			if c.ct != "" {
				h["Content-Type"] = c.ct
			}
			st, body := p.raw("POST", c.path, h, c.body)
			if st != c.status {
				t.Fatalf("status %d want %d: %s", st, c.status, body)
			}
			if c.code != "" {
				if got := errCode(t, body); got != c.code {
					t.Fatalf("code %s want %s: %s", got, c.code, body)
				}
				if c.code == "ActiveRequestAlreadyExists" && !strings.Contains(string(body), "already in progress") {
					t.Fatalf("message must say already in progress: %s", body)
				}
				return
			}
			a := decodeAction(t, body)
			var req map[string]string
			_ = json.Unmarshal([]byte(c.body), &req)
			if a.Type != "RunAntiVirusScan" || a.Status != StatusPending || a.Scope != req["ScanType"] ||
				a.RequestorComment != req["Comment"] || !strings.Contains(c.path, a.MachineID) || a.ComputerDNSName == "" ||
				a.Requestor != DefaultClientID || a.ID == "" || a.CreationDateTimeUTC == "" || a.LastUpdateDateTimeUTC == "" {
				t.Fatalf("action %+v", a)
			}
			if _, err := time.Parse(time.RFC3339Nano, a.CreationDateTimeUTC); err != nil {
				t.Fatal(err)
			}
		})
	}
	if st := p.s.Stats(); st.ScansCreated != 2 || st.AlreadyRunning != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDuplicateScanExistingMode(t *testing.T) {
	p := newPlain(t, Options{DuplicateScan: DuplicateScanExisting})
	path := "/api/machines/" + p.s.Machines()[0].ID + "/runAntiVirusScan"
	st1, b1 := p.api("POST", path, scanBody("one", "Quick"))
	st2, b2 := p.api("POST", path, scanBody("two", "Full"))
	a1, a2 := decodeAction(t, b1), decodeAction(t, b2)
	if st1 != 201 || st2 != 201 || a1.ID != a2.ID || a2.RequestorComment != "one" {
		t.Fatalf("%d %s / %d %s", st1, b1, st2, b2)
	}
	if n := len(p.s.Actions()); n != 1 {
		t.Fatalf("%d actions", n)
	}
}

func TestActionLifecycle(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now, PendingFor: 2 * time.Second, InProgressFor: 5 * time.Second, TokenTTL: 100 * time.Hour})
	m := p.s.Machines()[0]
	st, body := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Full"))
	if st != 201 {
		t.Fatalf("%d %s", st, body)
	}
	a := decodeAction(t, body)
	created := clk.Now()
	steps := []struct {
		at      time.Duration
		status  string
		updated time.Duration
	}{
		{0, StatusPending, 0},
		{1999 * time.Millisecond, StatusPending, 0},
		{2 * time.Second, StatusInProgress, 2 * time.Second},
		{6 * time.Second, StatusInProgress, 2 * time.Second},
		{7 * time.Second, StatusSucceeded, 7 * time.Second},
		{time.Hour, StatusSucceeded, 7 * time.Second},
	}
	for _, s := range steps {
		clk.Set(created.Add(s.at))
		st, body := p.api("GET", "/api/machineactions/"+a.ID, "")
		got := decodeAction(t, body)
		if st != 200 || got.Status != s.status || got.LastUpdateDateTimeUTC != formatTime(created.Add(s.updated)) {
			t.Fatalf("at +%v: %d %+v", s.at, st, got)
		}
		// While running, a second scan is refused; once final it is accepted.
		if s.status == StatusInProgress {
			if st, body := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick")); st != 400 {
				t.Fatalf("second scan while InProgress: %d %s", st, body)
			}
		}
	}
	if st, body := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick")); st != 201 {
		t.Fatalf("scan after final: %d %s", st, body)
	}
	for _, final := range []string{StatusFailed, StatusTimeOut, StatusCancelled} {
		if err := p.s.SetActionOutcome(final); err != nil {
			t.Fatal(err)
		}
		mm := p.s.Machines()[1]
		clk.Advance(time.Hour) // let the previous action on mm finish
		st, body := p.api("POST", "/api/machines/"+mm.ID+"/runAntiVirusScan", scanBody("c", "Quick"))
		if st != 201 {
			t.Fatalf("%d %s", st, body)
		}
		clk.Advance(8 * time.Second)
		_, body = p.api("GET", "/api/machineactions/"+decodeAction(t, body).ID, "")
		if got := decodeAction(t, body); got.Status != final {
			t.Fatalf("outcome %s: %+v", final, got)
		}
	}
	if err := p.s.SetActionOutcome("Pending"); err == nil {
		t.Fatal("non-final outcome accepted")
	}
	if st, body := p.api("GET", "/api/machineactions/"+newID(), ""); st != 404 || errCode(t, body) != "ResourceNotFound" {
		t.Fatalf("unknown action: %d %s", st, body)
	}
}

func TestCancel(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now})
	ms := p.s.Machines()
	_, body := p.api("POST", "/api/machines/"+ms[0].ID+"/runAntiVirusScan", scanBody("c", "Full"))
	a := decodeAction(t, body)
	cases := []struct {
		name, id, body string
		status         int
		code           string
	}{
		{"wrong-case key", a.ID, `{"comment":"stop"}`, 400, "InvalidRequestBody"},
		{"missing comment", a.ID, `{}`, 400, "MissingRequiredParameter"},
		{"unknown action", newID(), `{"Comment":"stop"}`, 404, "ResourceNotFound"},
		{"ok", a.ID, `{"Comment":"stop"}`, 200, ""},
		{"already cancelled", a.ID, `{"Comment":"stop"}`, 400, "BadRequest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.api("POST", "/api/machineactions/"+c.id+"/cancel", c.body)
			if st != c.status {
				t.Fatalf("%d %s", st, body)
			}
			if c.code != "" {
				if got := errCode(t, body); got != c.code {
					t.Fatalf("code %s: %s", got, body)
				}
				return
			}
			got := decodeAction(t, body)
			if got.Status != StatusCancelled || got.CancellationComment == nil || *got.CancellationComment != "stop" {
				t.Fatalf("%+v", got)
			}
		})
	}
	// Cancelling frees the machine for a new scan; a finished one cannot be cancelled.
	st, body := p.api("POST", "/api/machines/"+ms[0].ID+"/runAntiVirusScan", scanBody("c", "Quick"))
	if st != 201 {
		t.Fatalf("after cancel: %d %s", st, body)
	}
	clk.Advance(time.Minute)
	b := decodeAction(t, body)
	if st, body := p.api("POST", "/api/machineactions/"+b.ID+"/cancel", `{"Comment":"late"}`); st != 400 || !strings.Contains(string(body), "Succeeded") {
		t.Fatalf("cancel final: %d %s", st, body)
	}
}

func TestListActionsFilter(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now, PendingFor: 10 * time.Second, InProgressFor: 10 * time.Second})
	ms := p.s.Machines()
	var ids []string
	for i := 0; i < 4; i++ {
		st, body := p.api("POST", "/api/machines/"+ms[i].ID+"/runAntiVirusScan", scanBody("c", "Quick"))
		if st != 201 {
			t.Fatal(st, string(body))
		}
		ids = append(ids, decodeAction(t, body).ID)
		clk.Advance(5 * time.Second)
	}
	// Now: action 0 at +20s Succeeded, 1 at +15s InProgress, 2 at +10s InProgress, 3 at +5s Pending.
	t0 := newClock().Now()
	cases := []struct {
		name, filter string
		want         []int // indexes into ids; nil = 400
	}{
		{"by id", "id eq '" + ids[2] + "'", []int{2}},
		{"many ids", "id eq '" + ids[0] + "' or id eq '" + ids[3] + "'", []int{0, 3}},
		{"status", "status eq 'InProgress'", []int{1, 2}},
		{"id and status", "id eq '" + ids[1] + "' and status eq 'Pending'", []int{}},
		{"ids and status", "(id eq '" + ids[0] + "' or id eq '" + ids[3] + "' or id eq '" + ids[3] + "') and status eq 'Pending'", []int{3}},
		{"upper-case id", "id eq '" + strings.ToUpper(ids[2]) + "'", []int{2}},
		{"ids in reverse come back in creation order", "id eq '" + ids[3] + "' or id eq '" + ids[0] + "'", []int{0, 3}},
		{"id or status is not narrowed", "id eq '" + ids[0] + "' or status eq 'Pending'", []int{0, 3}},
		{"status ne", "status ne 'InProgress'", []int{0, 3}},
		{"machine and type", "machineId eq '" + ms[1].ID + "' and type eq 'RunAntiVirusScan'", []int{1}},
		{"created ge", "creationDateTimeUtc ge " + t0.Add(10*time.Second).Format(time.RFC3339), []int{2, 3}},
		{"created lt with fraction", "creationDateTimeUtc lt " + t0.Add(5*time.Second).Format(time.RFC3339Nano), []int{0}},
		{"requestor", "requestor eq '" + DefaultClientID + "'", []int{0, 1, 2, 3}},
		{"parens", "(status eq 'Pending' or status eq 'Succeeded') and creationDateTimeUtc gt 2000-01-01Z", []int{0, 3}},
		{"bad status", "status eq 'Running'", nil},
		{"bad type", "type eq 'Scan'", nil},
		{"quoted date", "creationDateTimeUtc gt '2020-01-01T00:00:00Z'", nil},
		{"bad date", "creationDateTimeUtc gt 2020-13-01T00:00:00Z", nil},
		{"unknown field", "scope eq 'Quick'", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.api("GET", "/api/machineactions?$filter="+url.QueryEscape(c.filter), "")
			if c.want == nil {
				if st != 400 || errCode(t, body) != "ODataError" {
					t.Fatalf("%d %s", st, body)
				}
				return
			}
			var out struct{ Value []actionOut }
			if st != 200 || json.Unmarshal(body, &out) != nil {
				t.Fatalf("%d %s", st, body)
			}
			var got, want []string
			for _, a := range out.Value {
				got = append(got, a.ID)
			}
			for _, i := range c.want {
				want = append(want, ids[i])
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("got %v want %v", got, want)
			}
		})
	}
	st, body := p.api("GET", "/api/machineactions?$top=2", "")
	var out struct{ Value []actionOut }
	if st != 200 || json.Unmarshal(body, &out) != nil || len(out.Value) != 2 {
		t.Fatalf("$top: %d %s", st, body)
	}
}

func TestDecodeScanRequestNamesField(t *testing.T) {
	for body, field := range map[string]string{
		`{"comment":"x","ScanType":"Quick"}`:       `"Comment"`,
		`{"Comment":"x"}`:                          `"ScanType"`,
		`{"Comment":"x","ScanType":"Deep"}`:        `ScanType`,
		`{"Comment":"x","ScanType":"Quick","x":1}`: `"x"`,
	} {
		_, err := decodeScanRequest([]byte(body))
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v does not name %s", body, err, field)
		}
	}
}

func TestListLastUpdateTimeUtcSpelling(t *testing.T) {
	p := newPlain(t, Options{ListLastUpdateTimeUtc: true})
	m := p.s.Machines()[0]
	st, one := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick"))
	if st != 201 || !strings.Contains(string(one), `"lastUpdateDateTimeUtc"`) {
		t.Fatalf("single action keeps the documented name: %s", one)
	}
	_, list := p.api("GET", "/api/machineactions", "")
	if !strings.Contains(string(list), `"lastUpdateTimeUtc":"`) || strings.Contains(string(list), "lastUpdateDateTimeUtc") ||
		!strings.Contains(string(list), `"requestorComment":"c"`) {
		t.Fatalf("list: %s", list)
	}
}

func TestInactiveMachineTimesOut(t *testing.T) {
	clk := newClock()
	ms := []Machine{{ID: strings.Repeat("d", 40), ComputerDNSName: "sleepy.contoso.com", HealthStatus: "Inactive"}}
	p := newPlain(t, Options{Now: clk.Now, Machines: ms, PendingFor: 2 * time.Second, InProgressFor: 5 * time.Second})
	st, body := p.api("POST", "/api/machines/"+ms[0].ID+"/runAntiVirusScan", scanBody("c", "Quick"))
	if st != 201 {
		t.Fatalf("%d %s", st, body)
	}
	id := decodeAction(t, body).ID
	for _, step := range []struct {
		advance time.Duration
		status  string
	}{{3 * time.Second, StatusPending}, {3 * time.Second, StatusPending}, {time.Second, StatusTimeOut}} {
		clk.Advance(step.advance)
		_, body := p.api("GET", "/api/machineactions/"+id, "")
		if got := decodeAction(t, body).Status; got != step.status {
			t.Fatalf("got %s want %s", got, step.status)
		}
	}
}
