package defendersim

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now, Seed: 42, RateLimit: RateLimit{Disabled: true}})

	t.Run("outage", func(t *testing.T) {
		p.s.SetFaults(Faults{OutageFor: time.Minute})
		if st, body := p.api("GET", "/api/machines", ""); st != 503 || errCode(t, body) != "ServiceUnavailable" {
			t.Fatalf("%d %s", st, body)
		}
		// Unauthenticated calls fail the same way: the outage is in front.
		if st, _ := p.raw("GET", "/api/machines", nil, ""); st != 503 {
			t.Fatalf("%d", st)
		}
		clk.Advance(time.Minute)
		if st, body := p.api("GET", "/api/machines", ""); st != 200 {
			t.Fatalf("after the outage: %d %s", st, body)
		}
	})
	t.Run("error rate", func(t *testing.T) {
		p.s.SetFaults(Faults{ErrorRate: 0.5})
		got := map[int]int{}
		for i := 0; i < 200; i++ {
			st, _ := p.api("GET", "/api/machines?$top=1", "")
			got[st]++
		}
		if got[500] == 0 || got[503] == 0 || got[200] < 60 || got[200] > 140 {
			t.Fatalf("statuses %v", got)
		}
		// The token endpoint is not faulted.
		p.getToken(map[string][]string{"grant_type": {"client_credentials"}, "client_id": {DefaultClientID},
			"client_secret": {DefaultClientSecret}, "scope": {DefaultAudience + "/.default"}})
		p.s.SetFaults(Faults{ErrorRate: 1})
		m := p.s.Machines()[0]
		if st, _ := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick")); st < 500 {
			t.Fatalf("status %d", st)
		}
		if len(p.s.Actions()) != 0 {
			t.Fatal("a faulted scan created an action")
		}
	})
	t.Run("reset", func(t *testing.T) {
		p.s.SetFaults(Faults{ResetRate: 1})
		req, _ := http.NewRequest("GET", p.base+"/api/machines", nil)
		req.Header.Set("Authorization", "Bearer "+p.token)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("connection not reset: %d", resp.StatusCode)
		}
	})
	t.Run("latency", func(t *testing.T) {
		p.s.SetFaults(Faults{Latency: time.Hour})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", p.base+"/api/machines", nil)
		req.Header.Set("Authorization", "Bearer "+p.token)
		_, err := http.DefaultClient.Do(req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("want a client timeout, got %v", err)
		}
	})
	t.Run("token errors", func(t *testing.T) {
		p.s.SetFaults(Faults{TokenErrorRate: 1})
		st, body := p.raw("POST", "/"+DefaultTenantID+"/oauth2/v2.0/token", map[string]string{"Content-Type": "application/x-www-form-urlencoded"},
			"grant_type=client_credentials&client_id="+DefaultClientID+"&client_secret="+DefaultClientSecret+"&scope="+DefaultAudience+"/.default")
		if st != 503 || !strings.Contains(string(body), "temporarily_unavailable") {
			t.Fatalf("%d %s", st, body)
		}
		// The API itself is unaffected.
		if st, _ := p.api("GET", "/api/machines", ""); st != 200 {
			t.Fatalf("API: %d", st)
		}
	})
	p.s.SetFaults(Faults{})
	if st, _ := p.api("GET", "/api/machines", ""); st != 200 {
		t.Fatalf("faults cleared: %d", st)
	}
	if p.s.Stats().FaultsInjected < 100 {
		t.Fatalf("stats %+v", p.s.Stats())
	}
}

func TestResetOverTLSAndHTTP2(t *testing.T) {
	s := startTest(t, Options{})
	s.SetFaults(Faults{ResetRate: 1})
	tok := tokenFor(t, s)
	for _, h2 := range []bool{false, true} {
		c := s.Client()
		c.Transport.(*http.Transport).ForceAttemptHTTP2 = h2
		req, _ := http.NewRequest("GET", s.URL()+"/api/machines", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("h2=%v: got %d", h2, resp.StatusCode)
		}
	}
}

func TestAdminEndpoints(t *testing.T) {
	p := newPlain(t, Options{AdminToken: "adm"})
	admin := map[string]string{"Authorization": "Bearer adm"}
	cases := []struct {
		name, method, path string
		hdr                map[string]string
		body               string
		status             int
		contains           string
	}{
		{"no token", "GET", "/admin/stats", nil, "", 401, "Unauthorized"},
		{"api token is not admin", "GET", "/admin/stats", map[string]string{"Authorization": "Bearer " + p.token}, "", 401, "Unauthorized"},
		{"stats", "GET", "/admin/stats", admin, "", 200, `"tokens_issued":1`},
		{"set faults", "PUT", "/admin/faults", admin, `{"error_rate":0.25,"latency":"5ms","outage_for":"0s"}`, 200, `"error_rate":0.25`},
		{"get faults", "GET", "/admin/faults", admin, "", 200, `"latency":"5ms"`},
		{"bad rate", "PUT", "/admin/faults", admin, `{"error_rate":2}`, 400, "error_rate"},
		{"bad token rate", "PUT", "/admin/faults", admin, `{"token_error_rate":-1}`, 400, "token_error_rate"},
		{"bad latency", "PUT", "/admin/faults", admin, `{"latency":"soon"}`, 400, "latency"},
		{"unknown field", "PUT", "/admin/faults", admin, `{"errors":1}`, 400, "errors"},
		{"faults delete", "DELETE", "/admin/faults", admin, "", 405, "MethodNotAllowed"},
		{"outcome", "PUT", "/admin/outcome", admin, `{"status":"Failed"}`, 200, "Failed"},
		{"bad outcome", "PUT", "/admin/outcome", admin, `{"status":"Pending"}`, 400, "status"},
		{"requests", "GET", "/admin/requests", admin, "", 200, "/oauth2/v2.0/token"},
		{"actions", "GET", "/admin/actions", admin, "", 200, `"value":[]`},
		{"machines", "GET", "/admin/machines", admin, "", 200, p.s.Machines()[0].ID},
		{"unknown", "GET", "/admin/nope", admin, "", 404, "NotFound"},
		{"clear requests", "DELETE", "/admin/requests", admin, "", 204, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.raw(c.method, c.path, c.hdr, c.body)
			if st != c.status || !strings.Contains(string(body), c.contains) {
				t.Fatalf("%d %s", st, body)
			}
			if strings.Contains(string(body), DefaultClientSecret) || strings.Contains(string(body), p.token) {
				t.Fatal("admin output leaks a secret or token")
			}
		})
	}
	if f := p.s.CurrentFaults(); f.ErrorRate != 0.25 || f.Latency != 5*time.Millisecond {
		t.Fatalf("faults %+v", f)
	}
	if n := len(p.s.Requests()); n != 0 {
		t.Fatalf("%d requests after clear", n)
	}
	// Admin calls are not recorded as API traffic.
	resp, body := p.do("GET", "/admin/stats", admin, "")
	var st Stats
	if resp.StatusCode != 200 || json.Unmarshal(body, &st) != nil || len(p.s.Requests()) != 0 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestRequestsRecordHeadersAndBodies(t *testing.T) {
	p := newPlain(t, Options{MaxRecordedRequests: 20})
	m := p.s.Machines()[0]
	p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("rec", "Quick"))
	reqs := p.s.Requests()
	last := reqs[len(reqs)-1]
	if last.Method != "POST" || last.Status != 201 || last.Header.Get("Authorization") != "Bearer "+p.token ||
		!strings.Contains(string(last.Body), `"Comment":"rec"`) || last.Time.IsZero() {
		t.Fatalf("%+v", last)
	}
	for i := 0; i < 50; i++ {
		p.api("GET", "/api/machines/"+m.ID, "")
	}
	if n := len(p.s.Requests()); n > 20 || n < 10 {
		t.Fatalf("%d recorded with a cap of 20", n)
	}
	p.s.ResetRequests()
	if len(p.s.Requests()) != 0 {
		t.Fatal("not reset")
	}
}
