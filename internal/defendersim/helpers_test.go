package defendersim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/testutil"
)

// newClock is a hand-moved clock for lifecycle, expiry and rate-limit tests.
func newClock() *testutil.Clock {
	return testutil.NewClockAt(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}

// plainSim serves the simulator's handler over plain HTTP (httptest) and
// has a token ready.
type plainSim struct {
	t     *testing.T
	s     *Server
	base  string
	token string
}

func newPlain(t *testing.T, opts Options) *plainSim {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	p := &plainSim{t: t, s: s, base: ts.URL}
	p.token = p.getToken(url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {s.opts.ClientID},
		"client_secret": {s.opts.ClientSecret},
		"scope":         {s.opts.Audience + "/.default"},
	})
	return p
}

func (p *plainSim) getToken(form url.Values) string {
	p.t.Helper()
	status, body := p.raw(http.MethodPost, "/"+p.s.opts.TenantID+"/oauth2/v2.0/token",
		map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, form.Encode())
	if status != 200 {
		p.t.Fatalf("token: %d %s", status, body)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal(body, &tr); err != nil || tr.TokenType != "Bearer" || tr.AccessToken == "" {
		p.t.Fatalf("token response %s: %v", body, err)
	}
	return tr.AccessToken
}

func (p *plainSim) raw(method, path string, hdr map[string]string, body string) (int, []byte) {
	p.t.Helper()
	resp, rb := p.do(method, path, hdr, body)
	return resp.StatusCode, rb
}

func (p *plainSim) do(method, path string, hdr map[string]string, body string) (*http.Response, []byte) {
	p.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, p.base+path, rd)
	if err != nil {
		p.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp, b
}

// api calls the API with the token; body, when not empty, is sent as JSON.
func (p *plainSim) api(method, path, body string) (int, []byte) {
	p.t.Helper()
	h := map[string]string{"Authorization": "Bearer " + p.token}
	if body != "" {
		h["Content-Type"] = "application/json"
	}
	return p.raw(method, path, h, body)
}

func errCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message, Target string }
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("not an error envelope: %s", body)
	}
	if e.Error.Target == "" || e.Error.Message == "" {
		t.Fatalf("error envelope lacks message or target: %s", body)
	}
	return e.Error.Code
}

type actionOut struct {
	ID                    string  `json:"id"`
	Type                  string  `json:"type"`
	Scope                 string  `json:"scope"`
	Requestor             string  `json:"requestor"`
	RequestorComment      string  `json:"requestorComment"`
	Status                string  `json:"status"`
	MachineID             string  `json:"machineId"`
	ComputerDNSName       string  `json:"computerDnsName"`
	CreationDateTimeUTC   string  `json:"creationDateTimeUtc"`
	LastUpdateDateTimeUTC string  `json:"lastUpdateDateTimeUtc"`
	CancellationComment   *string `json:"cancellationComment"`
}

func decodeAction(t *testing.T, b []byte) actionOut {
	t.Helper()
	var a actionOut
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("action %s: %v", b, err)
	}
	return a
}

func scanBody(comment, typ string) string {
	var b bytes.Buffer
	_ = json.NewEncoder(&b).Encode(map[string]string{"Comment": comment, "ScanType": typ})
	return b.String()
}
