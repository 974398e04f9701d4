package defender

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/scanhook/scanhook/internal/defendersim"
)

// familyLimiter lets every call through and remembers the family of each.
type familyLimiter struct {
	mu       sync.Mutex
	families []Family
}

func (l *familyLimiter) Wait(ctx context.Context, f Family) error {
	l.mu.Lock()
	l.families = append(l.families, f)
	l.mu.Unlock()
	return ctx.Err()
}

func (l *familyLimiter) seen() []Family {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Family(nil), l.families...)
}

func TestFindMachineByAADDeviceID(t *testing.T) {
	const (
		aadA    = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
		aadDup  = "11111111-2222-4333-8444-555555555555"
		unknown = "99999999-9999-4999-8999-999999999999"
	)
	ms := []defendersim.Machine{
		{ID: strings.Repeat("a1", 20), ComputerDNSName: "alpha.contoso.com", AADDeviceID: aadA},
		{ID: strings.Repeat("b2", 20), ComputerDNSName: "beta.contoso.com"}, // not Entra-joined
		// A re-onboarded device: two records, one Entra ID device.
		{ID: strings.Repeat("c3", 20), ComputerDNSName: "gamma.contoso.com", AADDeviceID: aadDup},
		{ID: strings.Repeat("d4", 20), ComputerDNSName: "gamma-new.contoso.com", AADDeviceID: aadDup},
	}
	lim := &familyLimiter{}
	e := newEnv(t, defendersim.Options{Machines: ms}, func(_ *Config, d *Deps) { d.Limiter = lim })
	ctx := ctxT(t)

	cases := []struct {
		name     string
		id       string
		wantID   []string // nil : NotFound
		wantWire string   // the guid as it appears in the filter
	}{
		{"lower case", aadA, []string{ms[0].ID}, aadA},
		{"upper case goes out lower case", strings.ToUpper(aadA), []string{ms[0].ID}, aadA},
		// The simulator stamps lastSeen as it answers, so which record is
		// the most recent is not fixed here (TestMostRecentlySeen covers
		// the choice): one machine, either record.
		{"several records: one machine", aadDup, []string{ms[2].ID, ms[3].ID}, aadDup},
		{"unknown", unknown, nil, unknown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.sim.ResetRequests()
			m, err := e.client.FindMachineByAADDeviceID(ctx, tc.id)
			if tc.wantID == nil {
				ee := wantKind(t, err, NotFound)
				if ee.Status != http.StatusOK || ee.Op != "findMachineByAadDeviceId" || !strings.Contains(ee.Message, tc.wantWire) {
					t.Errorf("not found error = %+v", ee)
				}
				if IsRetryable(err) {
					t.Errorf("not found is retryable")
				}
			} else {
				if err != nil {
					t.Fatalf("FindMachineByAADDeviceID(%q): %v", tc.id, err)
				}
				if !slices.Contains(tc.wantID, m.ID) || !strings.EqualFold(m.AADDeviceID, tc.id) || m.ComputerDNSName == "" {
					t.Errorf("machine = %+v, want id %s", m, tc.wantID)
				}
			}
			api := apiRequests(e.sim)
			if len(api) != 1 || api[0].Method != http.MethodGet || api[0].Path != "/api/machines" ||
				api[0].RawQuery != "$filter=aadDeviceId%20eq%20%27"+tc.wantWire+"%27" {
				t.Errorf("requests = %+v", api)
			}
		})
	}
	for i, f := range lim.seen() {
		if f != MachineReads {
			t.Errorf("call %d counted in family %s, want %s", i, f, MachineReads)
		}
	}
	// An empty list is a successful call: its NotFound is the caller's
	// answer, not a failed call (as for FindMachineByDNSName).
	if got := testutil.ToFloat64(e.client.m.calls.WithLabelValues("findMachineByAadDeviceId", "ok")); got != float64(len(cases)) {
		t.Errorf("calls{ok} = %v, want %d", got, len(cases))
	}
}

// Only a canonical GUID goes into the filter: anything else is refused
// before a token is even asked for.
func TestFindMachineByAADDeviceIDInvalidNeverSent(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, nil)
	ctx := ctxT(t)
	good := defendersim.GenerateMachines(1)[0].AADDeviceID
	bad := []string{
		"", "x", "' or 1 eq 1", good + "' or id ne '", "'" + good + "'", "{" + good + "}",
		strings.ReplaceAll(good, "-", ""), good + "\n", " " + good, good + "/x", "../" + good,
		strings.Repeat("a", 40), // a machine id is not an Entra ID device id
		"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8fg", "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f", "%27" + good,
		"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f\u0430",
	}
	for _, s := range bad {
		m, err := e.client.FindMachineByAADDeviceID(ctx, s)
		if m != nil {
			t.Errorf("%q: machine %+v", s, m)
		}
		ee := wantKind(t, err, Invalid)
		if !ee.NotSent || !strings.Contains(ee.Message, "not a GUID") {
			t.Errorf("%q: error %+v", s, ee)
		}
	}
	if n := len(e.sim.Requests()); n != 0 {
		t.Errorf("%d requests reached the simulator (token included), want 0: %+v", n, e.sim.Requests()[0])
	}
	if got := testutil.ToFloat64(e.client.m.calls.WithLabelValues("findMachineByAadDeviceId", "invalid")); got != float64(len(bad)) {
		t.Errorf("calls{invalid} = %v, want %d", got, len(bad))
	}
}

// Failures of the lookup are typed like every other machine read.
func TestFindMachineByAADDeviceIDErrors(t *testing.T) {
	aad := defendersim.GenerateMachines(1)[0].AADDeviceID
	t.Run("server error", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{Seed: 3}, nil)
		e.sim.SetFaults(defendersim.Faults{ErrorRate: 1})
		_, err := e.client.FindMachineByAADDeviceID(ctxT(t), aad)
		ee := wantKind(t, err, Server)
		if ee.Status < 500 || !IsRetryable(err) {
			t.Errorf("error = %+v, retryable %v", ee, IsRetryable(err))
		}
	})
	t.Run("no Machine.Read.All", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{Roles: []string{defendersim.RoleMachineScan}}, nil)
		_, err := e.client.FindMachineByAADDeviceID(ctxT(t), aad)
		if ee := wantKind(t, err, Forbidden); ee.Status != http.StatusForbidden {
			t.Errorf("error = %+v", ee)
		}
		if s := e.client.BreakerState(MachineReads); s != "closed" {
			t.Errorf("a 403 moved the breaker: %s", s)
		}
	})
}

func TestFindMachineByComputerName(t *testing.T) {
	ms := []defendersim.Machine{
		{ID: strings.Repeat("a1", 20), ComputerDNSName: "ws-042.corp.contoso.com"},
		{ID: strings.Repeat("b2", 20), ComputerDNSName: "beta.contoso.com"},
	}
	e := newEnv(t, defendersim.Options{Machines: ms}, nil)
	ctx := ctxT(t)
	cases := []struct {
		name, in string
		wantID   string   // "": NotFound
		wantGets []string // GET /api/machines/{name} paths sent after the filter
		wantMsg  string
	}{
		{"DNS name", "beta.contoso.com.", ms[1].ID, nil, ""},
		{"bare name, through GET by name", "WS-042", ms[0].ID, []string{"/api/machines/WS-042"}, ""},
		{"unknown bare name", "ghost", "", []string{"/api/machines/ghost"}, "tried computerDnsName and the computer name"},
		{"unknown DNS name: no GET", "ghost.contoso.com", "", nil, "computerDnsName"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(e.sim.Requests())
			m, err := e.client.FindMachineByComputerName(ctx, c.in)
			var gets []string
			for _, r := range e.sim.Requests()[before:] {
				if r.Method == http.MethodGet && r.Path != "/api/machines" && strings.HasPrefix(r.Path, "/api/machines/") {
					gets = append(gets, r.Path)
				}
			}
			if !slices.Equal(gets, c.wantGets) {
				t.Errorf("GETs by name %v, want %v", gets, c.wantGets)
			}
			if c.wantID != "" {
				if err != nil || m == nil || m.ID != c.wantID {
					t.Fatalf("= %+v, %v; want machine %s", m, err, c.wantID)
				}
				return
			}
			if KindOf(err) != NotFound || !strings.Contains(err.Error(), c.wantMsg) {
				t.Fatalf("= %+v, %v; want NotFound mentioning %q", m, err, c.wantMsg)
			}
		})
	}
}
