package defendersim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestBearerChecks(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now})
	now := clk.Now()
	good := tokenClaims{Audience: DefaultAudience, TenantID: DefaultTenantID, AppID: DefaultClientID,
		IssuedAt: now.Unix(), NotBefore: now.Add(-time.Minute).Unix(), Expires: now.Add(time.Hour).Unix(), Roles: []string{RoleMachineReadAll}}
	sign := func(mut func(*tokenClaims)) string {
		c := good
		mut(&c)
		tok, err := p.s.sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	other, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.sign(good)
	tampered := sign(func(*tokenClaims) {})
	parts := strings.Split(tampered, ".")
	parts[1] = b64([]byte(`{"aud":"` + DefaultAudience + `","tid":"` + DefaultTenantID + `","exp":9999999999,"roles":["Machine.Scan"]}`))
	tampered = strings.Join(parts, ".")
	cases := []struct {
		name, auth string
		want       int
	}{
		{"valid", "Bearer " + sign(func(*tokenClaims) {}), 200},
		{"lower-case scheme", "bearer " + sign(func(*tokenClaims) {}), 200},
		{"missing", "", 401},
		{"basic", "Basic dXNlcjpwYXNz", 401},
		{"not a jwt", "Bearer abc", 401},
		{"signed by another sim", "Bearer " + foreign, 401},
		{"tampered payload", "Bearer " + tampered, 401},
		{"expired", "Bearer " + sign(func(c *tokenClaims) { c.Expires = now.Add(-time.Second).Unix() }), 401},
		{"not yet valid", "Bearer " + sign(func(c *tokenClaims) { c.NotBefore = now.Add(time.Minute).Unix() }), 401},
		{"wrong audience", "Bearer " + sign(func(c *tokenClaims) { c.Audience = "https://graph.microsoft.com" }), 401},
		{"wrong tenant", "Bearer " + sign(func(c *tokenClaims) { c.TenantID = "x" }), 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := map[string]string{}
			if c.auth != "" {
				h["Authorization"] = c.auth
			}
			st, body := p.raw(http.MethodGet, "/api/machines", h, "")
			if st != c.want {
				t.Fatalf("status %d, want %d: %s", st, c.want, body)
			}
			if st == 401 && errCode(t, body) != "Unauthorized" {
				t.Fatalf("code: %s", body)
			}
		})
	}
	// An issued token expires with the clock.
	clk.Advance(time.Hour)
	if st, body := p.api(http.MethodGet, "/api/machines", ""); st != 401 {
		t.Fatalf("token past TokenTTL: %d %s", st, body)
	}
	if st := p.s.Stats().Unauthorized; st < 9 {
		t.Fatalf("Unauthorized counter %d", st)
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	p := newPlain(t, Options{})
	tokenPath := "/" + DefaultTenantID + "/oauth2/v2.0/token"
	form := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	okScope := DefaultAudience + "/.default"
	formCT := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	cases := []struct {
		name     string
		method   string
		path     string
		hdr      map[string]string
		body     string
		status   int
		aadError string
		aadsts   int
	}{
		{"ok", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", DefaultClientSecret, "scope", okScope), 200, "", 0},
		{"GET", "GET", tokenPath, nil, "", 405, "invalid_request", 900561},
		{"json body", "POST", tokenPath, map[string]string{"Content-Type": "application/json"}, `{}`, 400, "invalid_request", 900144},
		{"no grant", "POST", tokenPath, formCT, form("client_id", DefaultClientID), 400, "invalid_request", 900144},
		{"password grant", "POST", tokenPath, formCT, form("grant_type", "password", "client_id", DefaultClientID), 400, "unsupported_grant_type", 70003},
		{"no client", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_secret", DefaultClientSecret, "scope", okScope), 400, "invalid_request", 900144},
		{"no secret", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "scope", okScope), 401, "invalid_client", 7000218},
		{"bad secret", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", "x", "scope", okScope), 401, "invalid_client", 7000215},
		{"secret twice", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", DefaultClientSecret, "client_secret", DefaultClientSecret, "scope", okScope), 400, "invalid_request", 90014},
		{"assertion without cert", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_assertion", "a.b.c", "client_assertion_type", assertionType, "scope", okScope), 401, "invalid_client", 700027},
		{"assertion wrong type", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_assertion", "a.b.c", "client_assertion_type", "x", "scope", okScope), 400, "invalid_request", 900144},
		{"no scope", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", DefaultClientSecret), 400, "invalid_request", 900144},
		{"scope without .default", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", DefaultClientSecret, "scope", DefaultAudience+"/Machine.Scan"), 400, "invalid_scope", 1002012},
		{"two resources", "POST", tokenPath, formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", DefaultClientSecret, "scope", okScope+" https://graph.microsoft.com/.default"), 400, "invalid_scope", 1002012},
		{"wrong tenant", "POST", "/other/oauth2/v2.0/token", formCT, form("grant_type", "client_credentials", "client_id", DefaultClientID, "client_secret", DefaultClientSecret, "scope", okScope), 400, "invalid_request", 90002},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.raw(c.method, c.path, c.hdr, c.body)
			if st != c.status {
				t.Fatalf("status %d, want %d: %s", st, c.status, body)
			}
			if c.aadError == "" {
				return
			}
			var e aadError
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatal(err)
			}
			if e.Error != c.aadError || len(e.ErrorCodes) != 1 || e.ErrorCodes[0] != c.aadsts ||
				!strings.HasPrefix(e.ErrorDescription, fmt.Sprintf("AADSTS%d:", c.aadsts)) {
				t.Fatalf("got %+v", e)
			}
			if strings.Contains(string(body), DefaultClientSecret) {
				t.Fatal("error echoes the secret")
			}
		})
	}
}

func TestRolesEnforced(t *testing.T) {
	p := newPlain(t, Options{Roles: []string{RoleMachineReadWriteAll}})
	m := p.s.Machines()[0]
	if st, body := p.api("GET", "/api/machines/"+m.ID, ""); st != 200 {
		t.Fatalf("ReadWrite.All must read: %d %s", st, body)
	}
	st, body := p.api("POST", "/api/machines/"+m.ID+"/runAntiVirusScan", scanBody("c", "Quick"))
	if st != 403 || errCode(t, body) != "Forbidden" {
		t.Fatalf("scan without Machine.Scan: %d %s", st, body)
	}
}

func TestGetMachine(t *testing.T) {
	p := newPlain(t, Options{})
	m := p.s.Machines()[3]
	cases := []struct {
		name, path string
		status     int
		code       string
	}{
		{"by id", "/api/machines/" + m.ID, 200, ""},
		{"by upper-case id", "/api/machines/" + strings.ToUpper(m.ID), 200, ""},
		{"by name", "/api/machines/" + m.ComputerDNSName, 200, ""},
		{"by name, other case", "/api/machines/" + strings.ToUpper(m.ComputerDNSName), 200, ""},
		{"unknown id", "/api/machines/" + strings.Repeat("0", 40), 404, "ResourceNotFound"},
		{"unknown name", "/api/machines/nope.contoso.com", 404, "ResourceNotFound"},
		{"escaped slash stays one segment", "/api/machines/" + url.PathEscape(m.ID+"/x"), 404, "ResourceNotFound"},
		{"query on entity", "/api/machines/" + m.ID + "?$select=id", 400, "ODataError"},
		{"unknown collection", "/api/devices", 404, "NotFound"},
		{"wrong-case path", "/api/Machines/" + m.ID, 404, "NotFound"},
		{"trailing slash", "/api/machines/", 404, "NotFound"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.api("GET", c.path, "")
			if st != c.status {
				t.Fatalf("status %d want %d: %s", st, c.status, body)
			}
			if c.code != "" {
				if got := errCode(t, body); got != c.code {
					t.Fatalf("code %s want %s", got, c.code)
				}
				return
			}
			var got machineJSON
			if err := json.Unmarshal(body, &got); err != nil || got.ID != m.ID || got.ComputerDNSName != m.ComputerDNSName || got.OSPlatform != m.OSPlatform {
				t.Fatalf("got %+v (%v)", got, err)
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	p := newPlain(t, Options{})
	m := p.s.Machines()[0]
	cases := []struct{ method, path, allow string }{
		{"POST", "/api/machines", "GET"},
		{"DELETE", "/api/machines/" + m.ID, "GET"},
		{"GET", "/api/machines/" + m.ID + "/runAntiVirusScan", "POST"},
		{"PUT", "/api/machineactions", "GET"},
		{"GET", "/api/machineactions/abc/cancel", "POST"},
	}
	for _, c := range cases {
		resp, body := p.do(c.method, c.path, map[string]string{"Authorization": "Bearer " + p.token}, "")
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != c.allow || errCode(t, body) != "MethodNotAllowed" {
			t.Errorf("%s %s: %d Allow=%q %s", c.method, c.path, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}
}

func TestListMachinesFilter(t *testing.T) {
	ms := []Machine{
		{ID: strings.Repeat("a", 40), ComputerDNSName: "alpha.contoso.com", OSPlatform: "Windows11", MachineTags: []string{"crown-jewel"}, LastIPAddress: "10.1.1.1", RBACGroupID: 1},
		{ID: strings.Repeat("b", 40), ComputerDNSName: "o'brien.contoso.com", OSPlatform: "Windows10", HealthStatus: "Inactive", LastIPAddress: "10.1.1.2", RBACGroupID: 2},
		{ID: strings.Repeat("c", 40), ComputerDNSName: "gamma.contoso.com", OSPlatform: "Linux", MachineTags: []string{"finance", "vip"}, RBACGroupID: 3},
	}
	p := newPlain(t, Options{Machines: ms})
	cases := []struct {
		name, filter string
		want         []string // dns names, or nil for an error
	}{
		{"by name", "computerDnsName eq 'alpha.contoso.com'", []string{"alpha.contoso.com"}},
		{"name case-insensitive", "computerDnsName eq 'ALPHA.contoso.com'", []string{"alpha.contoso.com"}},
		{"doubled quote", "computerDnsName eq 'o''brien.contoso.com'", []string{"o'brien.contoso.com"}},
		{"by id", "id eq '" + strings.Repeat("c", 40) + "'", []string{"gamma.contoso.com"}},
		{"or", "id eq '" + strings.Repeat("a", 40) + "' or id eq '" + strings.Repeat("b", 40) + "'", []string{"alpha.contoso.com", "o'brien.contoso.com"}},
		{"and with parens", "(osPlatform eq 'Windows11' or osPlatform eq 'Windows10') and healthStatus eq 'Active'", []string{"alpha.contoso.com"}},
		{"not", "not (healthStatus eq 'Active')", []string{"o'brien.contoso.com"}},
		{"tag any", "machineTags/any(t: t eq 'vip')", []string{"gamma.contoso.com"}},
		{"rbac group gt", "rbacGroupId gt 1", []string{"o'brien.contoso.com", "gamma.contoso.com"}},
		{"null ip", "lastIpAddress eq null", []string{"gamma.contoso.com"}},
		{"lastSeen datetime", "lastSeen gt 2020-01-01T00:00:00Z", []string{"alpha.contoso.com", "o'brien.contoso.com", "gamma.contoso.com"}},
		{"nothing", "computerDnsName eq 'zzz'", []string{}},
		// Injection: the quote is data, not syntax, when doubled.
		{"escaped injection is a literal", "computerDnsName eq 'x'' or id ne '''", []string{}},
		{"unescaped injection is malformed", "computerDnsName eq 'x' or id ne ''' ", nil},
		{"unterminated", "computerDnsName eq 'alpha", nil},
		{"unknown property", "computerName eq 'alpha'", nil},
		{"wrong-case property", "ComputerDnsName eq 'alpha'", nil},
		{"string vs datetime", "lastSeen gt '2020-01-01'", nil},
		{"bad enum", "healthStatus eq 'active'", nil},
		{"enum gt", "healthStatus gt 'Active'", nil},
		{"missing operand", "computerDnsName eq", nil},
		{"upper-case operator", "computerDnsName EQ 'x'", nil},
		{"function", "startswith(computerDnsName,'a')", nil},
		{"trailing garbage", "id eq 'a' id", nil},
		{"unbalanced", "(id eq 'a'", nil},
		{"semicolon", "id eq 'a'; drop", nil},
		{"collection without any", "machineTags eq 'vip'", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.api("GET", "/api/machines?$filter="+url.QueryEscape(c.filter), "")
			if c.want == nil {
				if st != 400 || errCode(t, body) != "ODataError" {
					t.Fatalf("want 400 ODataError, got %d %s", st, body)
				}
				return
			}
			if st != 200 {
				t.Fatalf("status %d: %s", st, body)
			}
			var out struct {
				Value []machineJSON `json:"value"`
			}
			if err := json.Unmarshal(body, &out); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range out.Value {
				got = append(got, m.ComputerDNSName)
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
	t.Run("top and skip", func(t *testing.T) {
		for _, c := range []struct {
			q      string
			status int
			n      int
		}{{"$top=2", 200, 2}, {"$top=0", 200, 0}, {"$skip=2", 200, 1}, {"$top=10000", 200, 3}, {"$top=10001", 400, 0}, {"$top=-1", 400, 0}, {"$top=x", 400, 0},
			{"$orderby=id", 400, 0}, {"$filter=id%20eq%20'a'&$filter=id%20eq%20'b'", 400, 0}, {"$filter=%zz", 400, 0}, {"$filter=", 400, 0}, {"other=1", 200, 3}} {
			st, body := p.api("GET", "/api/machines?"+c.q, "")
			if st != c.status {
				t.Fatalf("%s: %d %s", c.q, st, body)
			}
			if st == 200 {
				var out struct{ Value []json.RawMessage }
				_ = json.Unmarshal(body, &out)
				if len(out.Value) != c.n {
					t.Fatalf("%s: %d values", c.q, len(out.Value))
				}
			}
		}
	})
}

func TestGenerateMachinesDeterministic(t *testing.T) {
	a, b := GenerateMachines(60), GenerateMachines(60)
	seen := map[string]bool{}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].ComputerDNSName != b[i].ComputerDNSName {
			t.Fatal("not deterministic")
		}
		if !machineIDRe.MatchString(a[i].ID) || seen[a[i].ID] || seen[a[i].ComputerDNSName] {
			t.Fatalf("bad or duplicate machine %+v", a[i])
		}
		seen[a[i].ID], seen[a[i].ComputerDNSName] = true, true
	}
	s, err := New(Options{})
	if err != nil || len(s.Machines()) != 50 {
		t.Fatalf("default inventory: %d %v", len(s.Machines()), err)
	}
	for _, bad := range [][]Machine{
		{{ID: "short", ComputerDNSName: "a"}},
		{{ID: strings.Repeat("A", 40), ComputerDNSName: "a"}},
		{{ID: strings.Repeat("a", 40)}},
		{{ID: strings.Repeat("a", 40), ComputerDNSName: "a"}, {ID: strings.Repeat("a", 40), ComputerDNSName: "b"}},
		{{ID: strings.Repeat("a", 40), ComputerDNSName: "a"}, {ID: strings.Repeat("b", 40), ComputerDNSName: "A"}},
	} {
		if _, err := New(Options{Machines: bad}); err == nil {
			t.Errorf("inventory %+v accepted", bad)
		}
	}
}

func TestFindByIP(t *testing.T) {
	clk := newClock()
	p := newPlain(t, Options{Now: clk.Now})
	m := p.s.Machines()[5]
	ts := clk.Now().Add(-time.Hour).Format(time.RFC3339)
	st, body := p.api("GET", "/api/machines/findbyip(ip='"+m.LastIPAddress+"',timestamp="+ts+")", "")
	if st != 200 || !strings.Contains(string(body), m.ID) {
		t.Fatalf("%d %s", st, body)
	}
	for _, path := range []string{
		"/api/machines/findbyip(ip='nope',timestamp=" + ts + ")",
		"/api/machines/findbyip(ip='10.0.0.1',timestamp=" + clk.Now().Add(-31*24*time.Hour).Format(time.RFC3339) + ")",
		"/api/machines/findbyip(ip=10.0.0.1,timestamp=" + ts + ")",
	} {
		if st, body := p.api("GET", path, ""); st != 400 || errCode(t, body) != "InvalidInput" {
			t.Errorf("%s: %d %s", path, st, body)
		}
	}
}
