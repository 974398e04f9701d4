package defender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/defendersim/simtest"
	"github.com/scanhook/scanhook/internal/domain"
)

func TestParseErrorBody(t *testing.T) {
	cases := []struct {
		body                  string
		code, message, target string
	}{
		{`{"error":{"code":"ResourceNotFound","message":"Machine 123 was not found","target":"c0ffee"}}`, "ResourceNotFound", "Machine 123 was not found", "c0ffee"},
		{`{"error":{"code":"BadRequest","message":{"lang":"en-US","value":"OData v3 style"}}}`, "BadRequest", "OData v3 style", ""},
		{`{"error":{"code":"X","message":"line1\nline2\u0000"}}`, "X", "line1 line2", ""},
		{`{"error":{"code":42,"message":null}}`, "42", "", ""},
		{`<html><body>Bad Gateway</body></html>` + "\nmore", "", "<html><body>Bad Gateway</body></html>", ""},
		{``, "", "", ""},
		{`{"error":"flat"}`, "", `{"error":"flat"}`, ""},
		{"\xff\xfe{", "", "\uFFFD{", ""},
	}
	for _, tc := range cases {
		code, msg, target := parseErrorBody([]byte(tc.body))
		if code != tc.code || msg != tc.message || target != tc.target {
			t.Errorf("%q: got %q %q %q, want %q %q %q", tc.body, code, msg, target, tc.code, tc.message, tc.target)
		}
	}
	long := `{"error":{"message":"` + strings.Repeat("é", 2000) + `"}}`
	if _, msg, _ := parseErrorBody([]byte(long)); len(msg) > maxErrorField+len("…") || !utf8.ValidString(msg) {
		t.Errorf("long message not capped cleanly: %d bytes", len(msg))
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"99999999999999999999999", maxRetryAfter, true},
		{"86401", maxRetryAfter, true},
		{"-3", 0, false},
		{"1.5", 0, false},
		{"12abc", 0, false},
		{"Sat, 28 Nov 2026 12:00:30 GMT", 30 * time.Second, true},
		{"Saturday, 28-Nov-26 12:01:00 GMT", time.Minute, true},
		{"Sat Nov 28 12:00:05 2026", 5 * time.Second, true},
		{"Sat, 28 Nov 2026 11:00:00 GMT", 0, true},
		{"Sat, 28 Nov 2099 11:00:00 GMT", maxRetryAfter, true},
		{"tomorrow", 0, false},
	}
	for _, tc := range cases {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q: %s %v, want %s %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	// A date with a sub-second offset rounds up.
	if got, _ := parseRetryAfter("Sat, 28 Nov 2026 12:00:30 GMT", now.Add(100*time.Millisecond)); got != 30*time.Second {
		t.Errorf("rounding: %s", got)
	}
}

func TestAlreadyPendingDetection(t *testing.T) {
	yes := [][2]string{
		{"ActiveRequestAlreadyExists", ""},
		{"activerequestalreadyexists", "whatever"},
		{"BadRequest", "Action is already in progress"},
		{"", "Machine has a pending machine action of type RunAntiVirusScan"},
		{"BadRequest", "A RunAntiVirusScan action is already pending on this device"},
		{"InvalidRequest", "An action of this type already exists for the machine"},
	}
	no := [][2]string{
		{"BadRequest", "Invalid ScanType"},
		{"OsPlatformNotSupported", "Action RunAntiVirusScan is not supported on OS platform Linux"},
		{"InvalidRequestBody", "property Comment is missing"},
		{"", "already cancelled"},
	}
	for _, c := range yes {
		if !isAlreadyPending(c[0], c[1]) {
			t.Errorf("%q %q not recognised", c[0], c[1])
		}
	}
	for _, c := range no {
		if isAlreadyPending(c[0], c[1]) {
			t.Errorf("%q %q taken for already pending", c[0], c[1])
		}
	}
}

func TestKindsAndRetryable(t *testing.T) {
	retryable := map[Kind]bool{
		Throttled: true, Server: true, Timeout: true, Network: true, Unavailable: true, Unauthorized: true,
		AlreadyScanning: false, NotFound: false, BadRequest: false, Forbidden: false, Invalid: false,
		Canceled: false, DryRun: false, KindUnknown: false,
	}
	for k, want := range retryable {
		err := fmt.Errorf("dispatch: %w", &Error{Kind: k, Op: "x"})
		if KindOf(err) != k || IsRetryable(err) != want {
			t.Errorf("%s: KindOf %s retryable %v", k, KindOf(err), IsRetryable(err))
		}
		if strings.HasPrefix(k.String(), "kind(") {
			t.Errorf("kind %d has no name", int(k))
		}
	}
	if KindOf(nil) != KindUnknown || KindOf(errors.New("x")) != KindUnknown || IsRetryable(nil) {
		t.Error("non-client errors")
	}
	for status, want := range map[int]Kind{400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 408: Timeout,
		409: BadRequest, 410: NotFound, 429: Throttled, 500: Server, 502: Server, 503: Server, 504: Timeout} {
		if got := kindForStatus(status); got != want {
			t.Errorf("HTTP %d: %s, want %s", status, got, want)
		}
	}
	e := &Error{Kind: Throttled, Op: "runAntiVirusScan", Status: 429, Code: "TooManyRequests", Message: "quota", Target: "abc", RetryAfter: 3 * time.Second}
	if got := e.Error(); got != "defender runAntiVirusScan: throttled (HTTP 429 TooManyRequests): quota [target abc]; retry after 3s" {
		t.Errorf("Error() = %q", got)
	}
	inner := context.DeadlineExceeded
	e = &Error{Kind: Timeout, Op: "getMachine", Err: inner}
	if !errors.Is(e, inner) || !strings.HasSuffix(e.Error(), inner.Error()) {
		t.Errorf("unwrap: %v", e)
	}
}

func TestMachineActionDecoding(t *testing.T) {
	var a MachineAction
	raw := `{"id":"f123cb8d-1cee-4da9-8cd1-74b4d14f5dc2","type":"RunAntiVirusScan","scope":"Full","requestor":"admin@contoso.com",
		"requestorComment":"c","externalID":"ext","requestSource":"PublicApi","status":"Pending",
		"machineId":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07","computerDnsName":"m.contoso.com",
		"creationDateTimeUtc":"2021-01-26T20:33:57.7220239Z","lastUpdateTimeUtc":"2021-01-26T20:33:59.2",
		"cancellationRequestor":null,"cancellationComment":null,"cancellationDateTimeUtc":null,
		"title":null,"commands":[],"errorHResult":-2147467259,"relatedFileInfo":null,"troubleshootInfo":null}`
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		t.Fatal(err)
	}
	if a.ID != "f123cb8d-1cee-4da9-8cd1-74b4d14f5dc2" || a.ExternalID != "ext" || a.RequestSource != "PublicApi" ||
		a.ErrorHResult != -2147467259 || a.RelatedFileInfo != nil || string(a.Commands) != "[]" ||
		!a.CreationDateTimeUTC.Equal(time.Date(2021, 1, 26, 20, 33, 57, 722023900, time.UTC)) ||
		!a.LastUpdateDateTimeUTC.Equal(time.Date(2021, 1, 26, 20, 33, 59, 200000000, time.UTC)) ||
		!a.CancellationDateTimeUTC.IsZero() || a.Final() {
		t.Errorf("decoded %+v", a)
	}
	// The documented spelling wins over the list spelling.
	_ = json.Unmarshal([]byte(`{"lastUpdateDateTimeUtc":"2021-01-01T00:00:00Z","lastUpdateTimeUtc":"2022-01-01T00:00:00Z"}`), &a)
	if a.LastUpdateDateTimeUTC.Year() != 2021 {
		t.Errorf("update time %s", a.LastUpdateDateTimeUTC)
	}
	for _, bad := range []string{`{"creationDateTimeUtc":"yesterday"}`, `{"status":5}`, `[]`, `{"errorHResult":"x"}`} {
		if err := json.Unmarshal([]byte(bad), &a); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	// Round trip through our own JSON.
	b, _ := json.Marshal(MachineAction{ID: "x", CreationDateTimeUTC: time.Unix(1, 0).UTC()})
	var back MachineAction
	if err := json.Unmarshal(b, &back); err != nil || back.ID != "x" || !back.CreationDateTimeUTC.Equal(time.Unix(1, 0)) {
		t.Errorf("round trip %s: %+v %v", b, back, err)
	}
	for s, final := range map[string]bool{"Pending": false, "InProgress": false, "Succeeded": true, "Failed": true, "TimeOut": true, "Cancelled": true, "": false} {
		if domain.ActionFinal(s) != final {
			t.Errorf("domain.ActionFinal(%q)", s)
		}
	}
}

func TestMostRecentlySeen(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   []Machine
		want string
	}{
		{nil, ""},
		{[]Machine{{ComputerDNSName: "no id"}}, ""},
		{[]Machine{{ID: "a", LastSeen: t0}}, "a"},
		{[]Machine{{ID: "old", LastSeen: t0}, {ID: "new", LastSeen: t0.Add(time.Hour)}, {ID: "mid", LastSeen: t0.Add(time.Minute)}}, "new"},
		{[]Machine{{ID: "first", LastSeen: t0}, {ID: "second", LastSeen: t0}}, "first"},
		{[]Machine{{ID: "never"}, {ID: "seen", LastSeen: t0}}, "seen"},
	}
	for _, tc := range cases {
		got := mostRecentlySeen(tc.in)
		if (got == nil && tc.want != "") || (got != nil && got.ID != tc.want) {
			t.Errorf("%+v: got %+v, want %q", tc.in, got, tc.want)
		}
	}
}

func TestValidators(t *testing.T) {
	for s, want := range map[string]bool{
		"1e5bc9d7e413ddd7902c2932e418702b84d0cc07": true, "1E5BC9D7E413DDD7902C2932E418702B84D0CC07": true,
		"1e5bc9d7e413ddd7902c2932e418702b84d0cc0": false, "1e5bc9d7e413ddd7902c2932e418702b84d0cc0g": false,
		"1e5bc9d7e413ddd7902c2932e418702b84d0cc07\n": false, "": false,
	} {
		if ValidMachineID(s) != want {
			t.Errorf("ValidMachineID(%q) != %v", s, want)
		}
	}
	for s, want := range map[string]bool{
		"f123cb8d-1cee-4da9-8cd1-74b4d14f5dc2": true, "F123CB8D-1CEE-4DA9-8CD1-74B4D14F5DC2": true,
		"f123cb8d1cee4da98cd174b4d14f5dc2": false, "{f123cb8d-1cee-4da9-8cd1-74b4d14f5dc2}": false,
		"f123cb8d-1cee-4da9-8cd1-74b4d14f5dc2/cancel": false, "../../machines": false,
	} {
		if ValidActionID(s) != want {
			t.Errorf("ValidActionID(%q) != %v", s, want)
		}
	}
	for s, want := range map[string]bool{
		"host": true, "host.contoso.com": true, "host.contoso.com.": true, "WS_01.corp.local": true, "a-b.c": true,
		"": false, ".": false, "host..com": false, "-host": false, "host-": false, "ho st": false, "h'st": false,
		"h%2e": false, "../x": false, strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
		strings.Repeat("a.", 127) + "a": false, "héllo.com": false,
	} {
		if ValidDNSName(s) != want {
			t.Errorf("ValidDNSName(%q) != %v", s, want)
		}
	}
	if got := odataString("o'brien's"); got != "'o''brien''s'" {
		t.Errorf("odataString = %s", got)
	}
	if got := queryEscape("computerDnsName eq 'a+b&c=d#e'"); got != "computerDnsName%20eq%20%27a%2Bb%26c%3Dd%23e%27" {
		t.Errorf("queryEscape = %s", got)
	}
}

// A token the API did not issue: the API answers 401, the client reports
// Unauthorized and counts it against the breaker.
func TestAPIUnauthorized(t *testing.T) {
	issuer := simtest.Start(t, defendersim.Options{})
	api := simtest.Start(t, defendersim.Options{})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(issuer.CACertPEM())
	pool.AppendCertsFromPEM(api.CACertPEM())
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.Cleanup(tr.CloseIdleConnections)

	cfg := simConfig(api)
	cfg.AuthorityHost = issuer.URL()
	deps := simDeps(api, nil, &syncBuffer{})
	deps.Transport = tr
	deps.BreakerFailures = 2
	c, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		_, err = c.GetMachine(ctxT(t), api.Machines()[0].ID)
		ee := wantKind(t, err, Unauthorized)
		if ee.Status != 401 || ee.Code != "Unauthorized" || ee.Message == "" {
			t.Errorf("error = %#v", ee)
		}
	}
	if c.BreakerState(MachineReads) != "open" {
		t.Errorf("breaker after 401s = %s, want open", c.BreakerState(MachineReads))
	}
	if u, _ := url.Parse(issuer.URL()); !cfg.InstanceDiscoveryDisabled() || u.Hostname() != "127.0.0.1" {
		t.Error("the simulator's authority must run without instance discovery")
	}
}

func TestNothingCreatedByStatus(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"not ours", errors.New("boom"), false},
		{"400", &Error{Kind: BadRequest, Status: 400}, true},
		{"400 already scanning", &Error{Kind: AlreadyScanning, Status: 400}, true},
		{"201 with an existing action", &Error{Kind: AlreadyScanning, Status: 201}, false},
		{"401", &Error{Kind: Unauthorized, Status: 401}, true},
		{"404", &Error{Kind: NotFound, Status: 404}, true},
		{"408", &Error{Kind: Timeout, Status: 408}, false},
		{"429", &Error{Kind: Throttled, Status: 429}, true},
		{"500", &Error{Kind: Server, Status: 500}, false},
		{"502", &Error{Kind: Server, Status: 502}, false},
		{"503", &Error{Kind: Server, Status: 503}, true},
		{"504", &Error{Kind: Timeout, Status: 504}, false},
		{"malformed 201", &Error{Kind: Server, Status: 201}, false},
		{"timeout", &Error{Kind: Timeout}, false},
		{"network", &Error{Kind: Network}, false},
		{"not sent", &Error{Kind: Network, NotSent: true}, true},
		{"breaker", &Error{Kind: Unavailable, NotSent: true}, true},
		{"wrapped 429", fmt.Errorf("scan: %w", &Error{Kind: Throttled, Status: 429}), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := NothingCreated(tc.err); got != tc.want {
				t.Errorf("NothingCreated(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
