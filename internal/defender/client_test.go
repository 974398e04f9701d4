package defender

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
)

func TestTokenRequestAndScanRequest(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, nil)
	m := windowsMachine(t, e.sim, 0)
	const comment = "scanhook ransomware-full: sentinel alert 3212 (high) Ransom note"

	a, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanFull, comment)
	if err != nil {
		t.Fatalf("RunAntiVirusScan: %v", err)
	}

	// The token request: a client credentials grant for the Defender scope.
	var token *defendersim.Request
	reqs := e.sim.Requests()
	for i := range reqs {
		if reqs[i].Method == "POST" && reqs[i].Path == "/"+defendersim.DefaultTenantID+"/oauth2/v2.0/token" {
			token = &reqs[i]
		}
	}
	if token == nil {
		t.Fatalf("no token request among %d requests", len(reqs))
	}
	if ct := token.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		t.Errorf("token Content-Type = %q", ct)
	}
	form, err := url.ParseQuery(string(token.Body))
	if err != nil {
		t.Fatalf("token body: %v", err)
	}
	for k, want := range map[string]string{
		"grant_type":    "client_credentials",
		"client_id":     defendersim.DefaultClientID,
		"client_secret": defendersim.DefaultClientSecret,
	} {
		if got := form.Get(k); got != want {
			t.Errorf("token form %s = %q, want %q", k, got, want)
		}
	}

	// MSAL adds the OIDC scopes openid, offline_access and profile; the one
	// resource scope must be Defender's.
	var resources []string
	for _, sc := range strings.Fields(form.Get("scope")) {
		if sc != "openid" && sc != "offline_access" && sc != "profile" {
			resources = append(resources, sc)
		}
	}
	if !reflect.DeepEqual(resources, []string{"https://api.securitycenter.microsoft.com/.default"}) {
		t.Errorf("token scope = %q", form.Get("scope"))
	}

	// The scan request, exactly.
	api := apiRequests(e.sim)
	if len(api) != 1 {
		t.Fatalf("API requests = %d, want 1", len(api))
	}
	r := api[0]
	if r.Method != "POST" || r.Path != "/api/machines/"+m.ID+"/runAntiVirusScan" || r.RawQuery != "" {
		t.Errorf("request = %s %s?%s", r.Method, r.Path, r.RawQuery)
	}
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") || len(auth) < len("Bearer ")+20 {
		t.Errorf("Authorization = %q, want a bearer token", auth)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatalf("body %s: %v", r.Body, err)
	}
	if want := map[string]any{"Comment": comment, "ScanType": "Full"}; !reflect.DeepEqual(body, want) {
		t.Errorf("body = %v, want %v", body, want)
	}
	if string(r.Body) != `{"Comment":"`+comment+`","ScanType":"Full"}` {
		t.Errorf("raw body = %s", r.Body)
	}

	// The MachineAction as decoded.
	if !ValidActionID(a.ID) || a.Type != ActionTypeRunAntiVirusScan || a.Scope != "Full" ||
		a.Status != domain.ActionPending || a.MachineID != m.ID || a.ComputerDNSName != m.ComputerDNSName ||
		a.RequestorComment != comment || a.CreationDateTimeUTC.IsZero() || a.LastUpdateDateTimeUTC.IsZero() {
		t.Errorf("action = %+v", a)
	}

	// A second call reuses the cached token: no second token request.
	if _, err := e.client.GetAction(ctxT(t), a.ID); err != nil {
		t.Fatalf("GetAction: %v", err)
	}
	n := 0
	for _, r := range e.sim.Requests() {
		if strings.HasSuffix(r.Path, "/oauth2/v2.0/token") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("token requests = %d, want 1 (azidentity caches)", n)
	}
}

func TestAlreadyScanning400(t *testing.T) {
	e := newEnv(t, defendersim.Options{PendingFor: time.Hour}, nil)
	m := windowsMachine(t, e.sim, 0)
	first, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "first")
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanFull, "second")
	ee := wantKind(t, err, AlreadyScanning)
	if a != nil {
		t.Errorf("action = %+v, want nil with the 400 answer", a)
	}
	if ee.Status != 400 || ee.Code != "ActiveRequestAlreadyExists" || !strings.Contains(ee.Message, first.ID) || ee.Target == "" {
		t.Errorf("error = %#v", ee)
	}
	if IsRetryable(err) {
		t.Error("already scanning must not be retryable")
	}
}

func TestAlreadyScanningExistingAction(t *testing.T) {
	var offset atomic.Int64 // the client's clock runs ahead by this much
	e := newEnv(t, defendersim.Options{PendingFor: time.Hour, DuplicateScan: defendersim.DuplicateScanExisting},
		func(_ *Config, d *Deps) {
			d.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		})
	m := windowsMachine(t, e.sim, 0)
	first, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "first")
	if err != nil {
		t.Fatalf("first scan: %v", err)
	}

	t.Run("other comment", func(t *testing.T) {
		a, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanFull, "second")
		ee := wantKind(t, err, AlreadyScanning)
		if a == nil || a.ID != first.ID {
			t.Fatalf("action = %+v, want the pending %s", a, first.ID)
		}
		if ee.Status != 201 || !strings.Contains(ee.Message, first.ID) {
			t.Errorf("error = %v", ee)
		}
	})
	t.Run("same comment, old action", func(t *testing.T) {
		offset.Store(int64(10 * time.Minute))
		a, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "first")
		wantKind(t, err, AlreadyScanning)
		if a == nil || a.ID != first.ID {
			t.Fatalf("action = %+v, want the pending %s", a, first.ID)
		}
	})
	if n := len(e.sim.Actions()); n != 1 {
		t.Errorf("simulator actions = %d, want 1", n)
	}
	if s := e.client.BreakerState(ScanActions); s != "closed" {
		t.Errorf("breaker = %s", s)
	}
}

func TestErrorKinds(t *testing.T) {
	linux := defendersim.Machine{ID: strings.Repeat("ab", 20), ComputerDNSName: "tux.contoso.com", OSPlatform: "Linux"}
	win := defendersim.Machine{ID: strings.Repeat("cd", 20), ComputerDNSName: "win.contoso.com", OSPlatform: "Windows11"}
	e := newEnv(t, defendersim.Options{Machines: []defendersim.Machine{linux, win}, PendingFor: time.Millisecond, InProgressFor: time.Millisecond}, nil)
	ctx := ctxT(t)

	cases := []struct {
		name      string
		call      func() error
		kind      Kind
		status    int
		code      string
		retryable bool
	}{
		{"unknown machine", func() error {
			_, err := e.client.RunAntiVirusScan(ctx, strings.Repeat("0", 40), domain.ScanQuick, "x")
			return err
		}, NotFound, 404, "ResourceNotFound", false},
		{"unknown machine name", func() error { _, err := e.client.GetMachine(ctx, "nope.contoso.com"); return err }, NotFound, 404, "ResourceNotFound", false},
		{"no dns match", func() error { _, err := e.client.FindMachineByDNSName(ctx, "nope.contoso.com"); return err }, NotFound, 200, "", false},
		{"unknown action", func() error {
			_, err := e.client.GetAction(ctx, "00000000-0000-4000-8000-000000000000")
			return err
		}, NotFound, 404, "ResourceNotFound", false},
		{"unsupported platform", func() error { _, err := e.client.RunAntiVirusScan(ctx, linux.ID, domain.ScanQuick, "x"); return err }, BadRequest, 400, "OsPlatformNotSupported", false},
		{"cancel final action", func() error {
			a, err := e.client.RunAntiVirusScan(ctx, win.ID, domain.ScanQuick, "x")
			if err != nil {
				return err
			}
			for !a.Final() {
				time.Sleep(5 * time.Millisecond)
				if a, err = e.client.GetAction(ctx, a.ID); err != nil {
					return err
				}
			}
			_, err = e.client.CancelAction(ctx, a.ID, "too late")
			return err
		}, BadRequest, 400, "BadRequest", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			ee := wantKind(t, err, tc.kind)
			if ee.Status != tc.status || ee.Code != tc.code {
				t.Errorf("status %d code %q, want %d %q (%v)", ee.Status, ee.Code, tc.status, tc.code, err)
			}
			if IsRetryable(err) != tc.retryable {
				t.Errorf("retryable = %v", IsRetryable(err))
			}
			if tc.status >= 400 && ee.Target == "" {
				t.Errorf("no target (correlation id) in %v", err)
			}
		})
	}
	if s := e.client.BreakerState(ScanActions); s != "closed" {
		t.Errorf("per-request errors moved the breaker: %s", s)
	}
}

func TestUnauthorizedAndForbidden(t *testing.T) {
	t.Run("wrong secret", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{}, func(_ *Config, d *Deps) {
			d.Getenv = func(k string) string {
				if k == envClientSecret {
					return "not-the-secret"
				}
				return ""
			}
		})
		_, err := e.client.GetMachine(ctxT(t), windowsMachine(t, e.sim, 0).ID)
		wantKind(t, err, Unauthorized)
		if len(apiRequests(e.sim)) != 0 {
			t.Error("an API call went out without a token")
		}
		if strings.Contains(err.Error(), "not-the-secret") {
			t.Error("the secret is in the error")
		}
	})
	t.Run("wrong audience", func(t *testing.T) {
		// The simulator's API is for another audience than the one we ask
		// a token for: Entra ID refuses the scope.
		e := newEnv(t, defendersim.Options{Audience: "https://api-gov.securitycenter.microsoft.us"}, nil)
		_, err := e.client.GetMachine(ctxT(t), windowsMachine(t, e.sim, 0).ID)
		wantKind(t, err, Unauthorized)
	})
	t.Run("missing permission", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{Roles: []string{defendersim.RoleMachineReadAll}}, nil)
		_, err := e.client.RunAntiVirusScan(ctxT(t), windowsMachine(t, e.sim, 0).ID, domain.ScanQuick, "x")
		ee := wantKind(t, err, Forbidden)
		if ee.Status != 403 || IsRetryable(err) {
			t.Errorf("error = %#v", ee)
		}
	})
}

func TestThrottledRetryAfter(t *testing.T) {
	e := newEnv(t, defendersim.Options{RateLimit: defendersim.RateLimit{PerMinute: 2, PerHour: 100}},
		func(_ *Config, d *Deps) { d.Limiter = noLimit{} })
	m := windowsMachine(t, e.sim, 0)
	for range 2 {
		if _, err := e.client.GetMachine(ctxT(t), m.ID); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.client.GetMachine(ctxT(t), m.ID)
	ee := wantKind(t, err, Throttled)
	if ee.Status != 429 || ee.Code != "TooManyRequests" {
		t.Errorf("error = %#v", ee)
	}
	// The simulator asks for the seconds until the oldest call leaves the minute.
	if ee.RetryAfter < 55*time.Second || ee.RetryAfter > 60*time.Second {
		t.Errorf("RetryAfter = %s, want about a minute", ee.RetryAfter)
	}
	if RetryAfterOf(err) != ee.RetryAfter || !IsRetryable(err) {
		t.Error("RetryAfterOf / IsRetryable disagree")
	}
	if !strings.Contains(err.Error(), "retry after") {
		t.Errorf("Error() = %q does not say when to retry", err)
	}
	// Another family is not affected.
	if _, err := e.client.ListActions(ctxT(t), ActionFilter{}); err != nil {
		t.Errorf("action reads: %v", err)
	}
}

func TestServerTimeoutNetworkCanceled(t *testing.T) {
	e := newEnv(t, defendersim.Options{Seed: 1}, func(c *Config, d *Deps) {
		c.Timeout = 300 * time.Millisecond
		d.BreakerFailures = 1000 // this test is about classification
	})
	m := windowsMachine(t, e.sim, 0)
	ctx := ctxT(t)
	if _, err := e.client.GetMachine(ctx, m.ID); err != nil { // token first
		t.Fatal(err)
	}

	e.sim.SetFaults(defendersim.Faults{ErrorRate: 1})
	statuses := map[int]bool{}
	for range 20 {
		_, err := e.client.GetMachine(ctx, m.ID)
		ee := wantKind(t, err, Server)
		statuses[ee.Status] = true
		if !IsRetryable(err) {
			t.Fatal("server error not retryable")
		}
	}
	if !statuses[500] || !statuses[503] || len(statuses) != 2 {
		t.Errorf("statuses = %v, want 500 and 503", statuses)
	}

	e.sim.SetFaults(defendersim.Faults{Latency: 2 * time.Second})
	_, err := e.client.GetMachine(ctx, m.ID)
	ee := wantKind(t, err, Timeout)
	if !IsRetryable(err) || !strings.Contains(ee.Message, "300ms") {
		t.Errorf("timeout error = %v", err)
	}

	e.sim.SetFaults(defendersim.Faults{ResetRate: 1})
	_, err = e.client.GetMachine(ctx, m.ID)
	wantKind(t, err, Network)
	if !IsRetryable(err) {
		t.Error("network error not retryable")
	}

	e.sim.SetFaults(defendersim.Faults{Latency: 2 * time.Second})
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = e.client.GetMachine(cctx, m.ID)
	wantKind(t, err, Canceled)
	if IsRetryable(err) {
		t.Error("canceled is retryable")
	}
}

func TestBreakerOpensAndCloses(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, func(_ *Config, d *Deps) {
		d.BreakerFailures = 3
		d.BreakerOpenFor = 300 * time.Millisecond
	})
	m := windowsMachine(t, e.sim, 0)
	ctx := ctxT(t)
	gauge := func() float64 {
		return testutil.ToFloat64(e.client.m.breaker.WithLabelValues(MachineReads.String()))
	}

	// 404s are about one machine: they never open the breaker.
	for range 10 {
		_, err := e.client.GetMachine(ctx, strings.Repeat("e", 40))
		wantKind(t, err, NotFound)
	}
	if s := e.client.BreakerState(MachineReads); s != "closed" {
		t.Fatalf("breaker after 404s = %s", s)
	}

	e.sim.SetFaults(defendersim.Faults{ErrorRate: 1})
	for range 3 {
		_, err := e.client.GetMachine(ctx, m.ID)
		wantKind(t, err, Server)
	}
	if s := e.client.BreakerState(MachineReads); s != "open" || gauge() != 2 {
		t.Fatalf("breaker = %s, gauge %v, want open, 2", s, gauge())
	}
	before := len(apiRequests(e.sim))
	_, err := e.client.GetMachine(ctx, m.ID)
	ee := wantKind(t, err, Unavailable)
	if ee.RetryAfter <= 0 || ee.RetryAfter > 300*time.Millisecond || !IsRetryable(err) {
		t.Errorf("unavailable = %#v", ee)
	}
	if got := len(apiRequests(e.sim)); got != before {
		t.Errorf("an open breaker let %d calls through", got-before)
	}
	// Other families have their own breaker.
	if _, err := e.client.ListActions(ctx, ActionFilter{}); KindOf(err) != Server {
		t.Errorf("action reads: %v, want a server error (not the machine breaker)", err)
	}

	// Recovery: after the open period one probe goes through and closes it.
	e.sim.SetFaults(defendersim.Faults{})
	time.Sleep(350 * time.Millisecond)
	if _, err := e.client.GetMachine(ctx, m.ID); err != nil {
		t.Fatalf("probe: %v", err)
	}
	if s := e.client.BreakerState(MachineReads); s != "closed" || gauge() != 0 {
		t.Fatalf("breaker after recovery = %s, gauge %v", s, gauge())
	}
	logs := e.logs.String()
	for _, want := range []string{`"to":"open"`, `"to":"half-open"`, `"to":"closed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("no breaker log with %s", want)
		}
	}
}

func TestInjectedInputNeverReachesTheWire(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, nil)
	ctx := ctxT(t)
	bad := []string{
		"", "../x", "..", "%2e%2e", "%2e%2e/%2e%2e/admin", "a b", "x'y", "x' or '1' eq '1",
		"1e5bc9d7e413ddd7902c2932e418702b84d0cc0/", "1e5bc9d7e413ddd7902c2932e418702b84d0cc07/../..",
		"1e5bc9d7e413ddd7902c2932e418702b84d0cc07?x=1", "1e5bc9d7e413ddd7902c2932e418702b84d0cc07#f",
		"host.contoso.com/../../machineactions", "host\r\nX-Evil: 1", "host%00", "-host.contoso.com",
		"host..contoso.com", strings.Repeat("a", 64) + ".com", "\u0430pple.com",
	}
	for _, s := range bad {
		calls := map[string]func() error{
			"RunAntiVirusScan": func() error { _, err := e.client.RunAntiVirusScan(ctx, s, domain.ScanQuick, "x"); return err },
			"GetMachine":       func() error { _, err := e.client.GetMachine(ctx, s); return err },
			"FindByDNSName":    func() error { _, err := e.client.FindMachineByDNSName(ctx, s); return err },
			"GetAction":        func() error { _, err := e.client.GetAction(ctx, s); return err },
			"CancelAction":     func() error { _, err := e.client.CancelAction(ctx, s, "x"); return err },
			"ListActions.ID":   func() error { _, err := e.client.ListActions(ctx, ActionFilter{IDs: []string{s}}); return err },
			"ListActions.Machine": func() error {
				_, err := e.client.ListActions(ctx, ActionFilter{MachineID: s})
				return err
			},
			"ListActions.Status": func() error {
				_, err := e.client.ListActions(ctx, ActionFilter{Status: s})
				return err
			},
		}
		if s == "" {
			// Empty filter fields mean "no filter", not bad input.
			delete(calls, "ListActions.Machine")
			delete(calls, "ListActions.Status")
		}
		for name, call := range calls {
			if err := call(); KindOf(err) != Invalid {
				t.Errorf("%s(%q) = %v, want invalid", name, s, err)
			}
		}
	}
	// Bad scan types and comments too.
	m := windowsMachine(t, e.sim, 0)
	for _, st := range []string{"", "quick", "Quick'", "Custom"} {
		if _, err := e.client.RunAntiVirusScan(ctx, m.ID, st, "x"); KindOf(err) != Invalid {
			t.Errorf("scan type %q: %v", st, err)
		}
	}
	if _, err := e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "  "); KindOf(err) != Invalid {
		t.Errorf("empty comment: %v", err)
	}
	if n := len(e.sim.Requests()); n != 0 {
		t.Errorf("%d requests reached the simulator (token included), want 0: %+v", n, e.sim.Requests()[0])
	}

	// Valid names go out escaped and filtered exactly.
	if _, err := e.client.FindMachineByDNSName(ctx, m.ComputerDNSName); err != nil {
		t.Fatal(err)
	}
	api := apiRequests(e.sim)
	if len(api) != 1 || api[0].Path != "/api/machines" ||
		api[0].RawQuery != "$filter=computerDnsName%20eq%20%27"+m.ComputerDNSName+"%27" {
		t.Errorf("requests = %+v", api)
	}
}

func TestLookupsAndCancel(t *testing.T) {
	e := newEnv(t, defendersim.Options{PendingFor: time.Hour}, nil)
	ctx := ctxT(t)
	m := windowsMachine(t, e.sim, 3)

	byID, err := e.client.GetMachine(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	byName, err := e.client.GetMachine(ctx, m.ComputerDNSName)
	if err != nil {
		t.Fatal(err)
	}
	found, err := e.client.FindMachineByDNSName(ctx, strings.ToUpper(m.ComputerDNSName)+".")
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []*Machine{byID, byName, found} {
		if got.ID != m.ID || got.ComputerDNSName != m.ComputerDNSName || got.OSPlatform != m.OSPlatform || got.LastSeen.IsZero() {
			t.Errorf("machine = %+v, want %+v", got, m)
		}
	}

	a, err := e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "to cancel")
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.client.CancelAction(ctx, a.ID, "alert closed")
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != domain.ActionCancelled || c.CancellationComment != "alert closed" || c.CancellationDateTimeUTC.IsZero() || !c.Final() {
		t.Errorf("cancelled = %+v", c)
	}
	last := apiRequests(e.sim)
	r := last[len(last)-1]
	if r.Path != "/api/machineactions/"+a.ID+"/cancel" || string(r.Body) != `{"Comment":"alert closed"}` {
		t.Errorf("cancel request = %s %s", r.Path, r.Body)
	}
}

func TestListActionsChunks(t *testing.T) {
	e := newEnv(t, defendersim.Options{GenerateMachines: 80, PendingFor: time.Hour}, nil)
	ctx := ctxT(t)
	var ids []string
	for _, m := range e.sim.Machines() {
		if len(ids) == 60 {
			break
		}
		a, err := e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "bulk")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.ID)
	}
	e.sim.ResetRequests()

	// Duplicates and an unknown id: the unknown one is simply absent.
	unknown := "00000000-0000-4000-8000-000000000001"
	got, err := e.client.ListActions(ctx, ActionFilter{IDs: append(append([]string{unknown}, ids...), ids[:5]...)})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range got {
		seen[a.ID] = true
	}
	if len(got) != len(ids) || len(seen) != len(ids) {
		t.Errorf("got %d actions (%d distinct), want %d", len(got), len(seen), len(ids))
	}
	api := apiRequests(e.sim)
	if len(api) < 2 || len(api) > 4 {
		t.Errorf("%d list calls for %d ids, want 2-4", len(api), len(ids)+1)
	}
	for _, r := range api {
		if len(r.RawQuery) > maxQuery {
			t.Errorf("query of %d bytes", len(r.RawQuery))
		}
		if !strings.HasPrefix(r.RawQuery, "$filter=id%20eq%20%27") {
			t.Errorf("query = %s", r.RawQuery)
		}
	}

	// Other filters, combined with ids.
	m := e.sim.Machines()[0]
	got, err = e.client.ListActions(ctx, ActionFilter{
		IDs: ids[:3], MachineID: m.ID, Type: ActionTypeRunAntiVirusScan, Status: domain.ActionPending,
		CreatedSince: time.Now().Add(-time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].MachineID != m.ID {
		t.Errorf("filtered = %+v", got)
	}
	got, err = e.client.ListActions(ctx, ActionFilter{Status: domain.ActionSucceeded})
	if err != nil || len(got) != 0 {
		t.Errorf("succeeded = %v, %v", got, err)
	}
	got, err = e.client.ListActions(ctx, ActionFilter{Top: 7})
	if err != nil || len(got) != 7 {
		t.Errorf("top 7 = %d, %v", len(got), err)
	}
}

func TestDryRun(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, func(c *Config, _ *Deps) { c.DryRun = true })
	m := windowsMachine(t, e.sim, 0)
	if _, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "x"); KindOf(err) != DryRun {
		t.Fatalf("scan in dry run: %v", err)
	}
	if _, err := e.client.CancelAction(ctxT(t), "00000000-0000-4000-8000-000000000001", "x"); KindOf(err) != DryRun {
		t.Fatalf("cancel in dry run: %v", err)
	}
	if len(apiRequests(e.sim)) != 0 {
		t.Fatal("dry run sent a call")
	}
	// Reads still work: resolution is part of a dry run's report.
	if _, err := e.client.GetMachine(ctxT(t), m.ID); err != nil {
		t.Fatal(err)
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	e := newEnv(t, defendersim.Options{PendingFor: time.Hour, Seed: 7}, func(_ *Config, d *Deps) {
		d.BreakerFailures = 2
	})
	ctx := ctxT(t)
	m := windowsMachine(t, e.sim, 0)
	var errs []error
	record := func(_ any, err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	record(e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "x"))
	record(e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "x"))
	record(e.client.GetMachine(ctx, strings.Repeat("0", 40)))
	e.sim.SetFaults(defendersim.Faults{ErrorRate: 1})
	for range 3 {
		record(e.client.GetMachine(ctx, m.ID))
	}
	var token string
	for _, r := range apiRequests(e.sim) {
		token = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	if token == "" || len(errs) < 4 {
		t.Fatalf("setup: token %q, %d errors", token, len(errs))
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "defender call") {
		t.Fatal("no call logs at debug level")
	}
	for _, secret := range []string{token, defendersim.DefaultClientSecret} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret is in the logs")
		}
		for _, err := range errs {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("a secret is in the error %v", err)
			}
		}
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, defendersim.Options{PendingFor: time.Hour}, nil)
	ctx := ctxT(t)
	m := windowsMachine(t, e.sim, 0)
	_, _ = e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "x")
	_, _ = e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "x")
	_, _ = e.client.RunAntiVirusScan(ctx, "nope", domain.ScanQuick, "x")
	for op, want := range map[[2]string]float64{
		{"runAntiVirusScan", "ok"}:               1,
		{"runAntiVirusScan", "already_scanning"}: 1,
		{"runAntiVirusScan", "invalid"}:          1,
	} {
		if got := testutil.ToFloat64(e.client.m.calls.WithLabelValues(op[0], op[1])); got != want {
			t.Errorf("calls%v = %v, want %v", op, got, want)
		}
	}
	n, err := testutil.GatherAndCount(e.reg,
		"scanhook_defender_calls_total", "scanhook_defender_call_duration_seconds",
		"scanhook_defender_breaker_state", "scanhook_defender_limiter_wait_seconds")
	if err != nil || n < 3+1+3+1 {
		t.Errorf("gathered %d series, %v", n, err)
	}
	// A second client on the same registry shares the collectors.
	cfg := simConfig(e.sim)
	if _, err := New(cfg, simDeps(e.sim, e.reg, &syncBuffer{})); err != nil {
		t.Errorf("second client on one registry: %v", err)
	}
}

// A limiter wait that cannot end before the caller's deadline comes back at
// once as a local throttle: nothing sent, the predicted wait as RetryAfter,
// the breaker untouched. (It used to block until the deadline and come back
// as Timeout, which the dispatcher counted as a failed attempt.)
func TestLocalThrottle(t *testing.T) {
	lim, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{{Limit: 1, Length: time.Hour}}, Margin: -1})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, defendersim.Options{}, func(_ *Config, d *Deps) {
		d.Limiter = lim
		d.BreakerFailures = 1
	})
	m := windowsMachine(t, e.sim, 0)
	if _, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "uses the hour's budget"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "throttled")
		// It did not sit out the 30s deadline: it came back with the
		// deadline still ahead.
		sat := ctx.Err()
		cancel()
		ee := wantKind(t, err, Throttled)
		if !ee.Local || !ee.NotSent || ee.Code != LocalRateLimit || ee.Status != 0 {
			t.Errorf("call %d: local %v, not sent %v, code %q, status %d", i, ee.Local, ee.NotSent, ee.Code, ee.Status)
		}
		if !IsLocalThrottle(err) || !NothingCreated(err) || !IsRetryable(err) {
			t.Errorf("call %d: IsLocalThrottle %v, NothingCreated %v, IsRetryable %v", i, IsLocalThrottle(err), NothingCreated(err), IsRetryable(err))
		}
		if ee.RetryAfter < 59*time.Minute || ee.RetryAfter > time.Hour {
			t.Errorf("call %d: RetryAfter = %s, want the hour window's remaining wait", i, ee.RetryAfter)
		}
		var le *LimitError
		if !errors.As(err, &le) || le.Family != ScanActions {
			t.Errorf("call %d: %v does not wrap the limiter's LimitError", i, err)
		}
		if sat != nil {
			t.Errorf("call %d came back only when its context ended: %v", i, sat)
		}
	}
	if n := len(apiRequests(e.sim)); n != 1 {
		t.Errorf("%d API calls, want 1", n)
	}
	if s := e.client.BreakerState(ScanActions); s != "closed" {
		t.Errorf("breaker = %s after local throttles, want closed", s)
	}
	if got := testutil.ToFloat64(e.client.m.calls.WithLabelValues("runAntiVirusScan", "throttled_local")); got != 3 {
		t.Errorf("throttled_local calls counted = %v, want 3", got)
	}
	if got := testutil.ToFloat64(e.client.m.calls.WithLabelValues("runAntiVirusScan", "timeout")); got != 0 {
		t.Errorf("timeout calls counted = %v, want 0", got)
	}

	// A cancellation is not a throttle.
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	_, err = e.client.RunAntiVirusScan(cctx, m.ID, domain.ScanQuick, "canceled")
	if ee := wantKind(t, err, Canceled); !ee.NotSent || ee.Local {
		t.Errorf("canceled in the limiter: not sent %v, local %v", ee.NotSent, ee.Local)
	}
}

// NotSent and NothingCreated as the client sets them on real failures.
func TestNothingCreated(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		e := newEnv(t, defendersim.Options{}, func(c *Config, _ *Deps) { c.APIURL = "https://" + addr })
		_, err = e.client.RunAntiVirusScan(ctxT(t), windowsMachine(t, e.sim, 0).ID, domain.ScanQuick, "refused")
		ee := wantKind(t, err, Network)
		if !ee.NotSent || !NothingCreated(err) {
			t.Errorf("refused connection: not sent %v, nothing created %v (%v)", ee.NotSent, NothingCreated(err), err)
		}
	})
	t.Run("429", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{RateLimit: defendersim.RateLimit{PerMinute: 1}}, nil)
		m := windowsMachine(t, e.sim, 0)
		if _, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "budget"); err != nil {
			t.Fatal(err)
		}
		_, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "429")
		ee := wantKind(t, err, Throttled)
		if ee.Local || ee.NotSent || !NothingCreated(err) || IsLocalThrottle(err) {
			t.Errorf("429: local %v, not sent %v, nothing created %v", ee.Local, ee.NotSent, NothingCreated(err))
		}
	})
	t.Run("503", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{}, nil)
		e.sim.SetFaults(defendersim.Faults{OutageFor: time.Hour})
		_, err := e.client.RunAntiVirusScan(ctxT(t), windowsMachine(t, e.sim, 0).ID, domain.ScanQuick, "503")
		ee := wantKind(t, err, Server)
		if ee.NotSent || !NothingCreated(err) {
			t.Errorf("503: not sent %v, nothing created %v", ee.NotSent, NothingCreated(err))
		}
	})
	t.Run("timeout after sending", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{}, func(c *Config, _ *Deps) { c.Timeout = 200 * time.Millisecond })
		m := windowsMachine(t, e.sim, 0)
		// Get the token first: the latency applies to API calls only.
		if _, err := e.client.GetMachine(ctxT(t), m.ID); err != nil {
			t.Fatal(err)
		}
		e.sim.SetFaults(defendersim.Faults{Latency: 2 * time.Second})
		_, err := e.client.RunAntiVirusScan(ctxT(t), m.ID, domain.ScanQuick, "slow")
		ee := wantKind(t, err, Timeout)
		if ee.NotSent || NothingCreated(err) {
			t.Errorf("timeout: not sent %v, nothing created %v", ee.NotSent, NothingCreated(err))
		}
	})
	t.Run("connection reset", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{}, nil)
		e.sim.SetFaults(defendersim.Faults{ResetRate: 1})
		_, err := e.client.RunAntiVirusScan(ctxT(t), windowsMachine(t, e.sim, 0).ID, domain.ScanQuick, "reset")
		if err == nil || NothingCreated(err) {
			t.Errorf("reset: nothing created %v (%v)", NothingCreated(err), err)
		}
	})
	t.Run("invalid input", func(t *testing.T) {
		e := newEnv(t, defendersim.Options{}, nil)
		_, err := e.client.RunAntiVirusScan(ctxT(t), "not-a-machine", domain.ScanQuick, "x")
		if !NothingCreated(err) {
			t.Errorf("invalid input: nothing created false (%v)", err)
		}
	})
}

type brokenLimiter struct{}

func (brokenLimiter) Wait(context.Context, Family) error {
	return errors.New("redis: connection refused")
}

// A shared limiter that fails sends nothing and leaves the breaker alone.
func TestLimiterFailure(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, func(_ *Config, d *Deps) {
		d.Limiter = brokenLimiter{}
		d.BreakerFailures = 1
	})
	for range 3 {
		_, err := e.client.GetMachine(ctxT(t), windowsMachine(t, e.sim, 0).ID)
		ee := wantKind(t, err, Unavailable)
		if !strings.Contains(ee.Error(), "connection refused") || !IsRetryable(err) {
			t.Errorf("error = %v", err)
		}
	}
	if s := e.client.BreakerState(MachineReads); s != "closed" {
		t.Errorf("breaker = %s", s)
	}
	if n := len(e.sim.Requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}
