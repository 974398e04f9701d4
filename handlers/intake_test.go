package handlers

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
)

// slowSigned opens a connection to e and sends a signed delivery for path
// whose headers promise a body of size bytes, then only the first byte of
// it: a sender dribbling its body. The signature is well formed and fresh,
// so the server has to read the body to check it.
func slowSigned(t *testing.T, e *env, path string, size int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	sig := sign(hmacSecret, e.clock.Now(), []byte("{not the body}"))
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: scanhook\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\n%s: %s\r\n\r\n{", path, size, SignatureHeader, sig)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// TestUnverifiedBodiesDoNotStarveAuthenticated fills the unverified budget
// with slow signed bodies, on a server whose max_in_flight they would fill
// too if they held its slots: a bearer-authenticated delivery still gets
// 202, while one more signed body gets 429 before any of it is read, on
// the webhook and on explain.
func TestUnverifiedBodiesDoNotStarveAuthenticated(t *testing.T) {
	taken := make(chan struct{}, 8)
	e := newEnv(t, func(d *Deps) {
		d.MaxInFlight = 2
		d.MaxUnverifiedInFlight = 2
		d.UnverifiedReadTimeout = time.Hour // not reached here: see TestUnverifiedReadDeadline
		d.unverifiedTaken = func() { taken <- struct{}{} }
	})
	s := samples(t)
	slow := []net.Conn{
		slowSigned(t, e, "/v1/webhooks/sentinel", 1000),
		slowSigned(t, e, "/v1/webhooks/sentinel", 1000),
	}
	<-taken
	<-taken

	for _, src := range []string{domain.SourceSentinel, domain.SourceDefender} {
		if r := e.post("/v1/webhooks/"+src, s[src], bearer(src)); r.status != http.StatusAccepted {
			t.Fatalf("bearer delivery to %s while the unverified budget is full: %d %s", src, r.status, r.body)
		}
	}
	if r := e.post("/v1/webhooks/splunk?token="+queryToken, s[domain.SourceSplunk], nil); r.status != http.StatusAccepted {
		t.Fatalf("query-token delivery while the unverified budget is full: %d %s", r.status, r.body)
	}
	if r := e.post("/v1/explain/sentinel", s[domain.SourceSentinel], bearer("sentinel")); r.status != http.StatusOK {
		t.Fatalf("bearer explain while the unverified budget is full: %d %s", r.status, r.body)
	}
	body := s[domain.SourceSentinel]
	for _, path := range []string{"/v1/webhooks/sentinel", "/v1/explain/sentinel"} {
		r := e.post(path, body, map[string]string{SignatureHeader: sign(hmacSecret, e.clock.Now(), body)})
		p := problemBody(t, r, http.StatusTooManyRequests, TypeRateLimited)
		if r.header.Get("Retry-After") == "" || !strings.Contains(p.Detail, "signature") {
			t.Errorf("%s: 429 without Retry-After or naming the signature check: %+v", path, p)
		}
	}
	// No credential at all is refused without a slot or a read.
	problemBody(t, e.post("/v1/webhooks/sentinel", body, nil), http.StatusUnauthorized, TypeUnauthorized)

	// Once the slow senders have sent the rest (signed for another body:
	// 401), their slots are free again.
	for _, c := range slow {
		if _, err := io.WriteString(c, strings.Repeat(" ", 999)); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a slow body signed for another: %d", res.StatusCode)
		}
	}
	r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sign(hmacSecret, e.clock.Now(), body)})
	if r.status != http.StatusAccepted {
		t.Fatalf("a signed delivery once the slow ones were done: %d %s", r.status, r.body)
	}
}

// TestUnverifiedReadDeadline checks that a signed body that does not
// arrive within the unverified read timeout is cut: the connection is
// closed, after a 400 that says why, and its slot is free again.
func TestUnverifiedReadDeadline(t *testing.T) {
	taken := make(chan struct{}, 8)
	e := newEnv(t, func(d *Deps) {
		d.MaxUnverifiedInFlight = 1
		d.UnverifiedReadTimeout = 20 * time.Millisecond
		d.unverifiedTaken = func() { taken <- struct{}{} }
	})
	for _, path := range []string{"/v1/webhooks/sentinel", "/v1/explain/sentinel"} {
		conn := slowSigned(t, e, path, 1000)
		<-taken
		// Blocks until the server closes the connection.
		out, err := io.ReadAll(bufio.NewReader(conn))
		if err != nil {
			t.Fatalf("%s: reading until the server closes: %v", path, err)
		}
		if !strings.HasPrefix(string(out), "HTTP/1.1 400 ") || !strings.Contains(string(out), "server.unverified_read_timeout") {
			t.Fatalf("%s: a slow signed body got\n%s", path, out)
		}
	}
	body := samples(t)[domain.SourceSentinel]
	r := e.post("/v1/webhooks/sentinel", body, map[string]string{SignatureHeader: sign(hmacSecret, e.clock.Now(), body)})
	if r.status != http.StatusAccepted {
		t.Fatalf("a signed delivery after the slow ones were cut: %d %s", r.status, r.body)
	}
}

// TestMaxDevicesPerDelivery sends an Elastic delivery of 1,000 alerts with
// three host names each to a server that decides on at most 10 devices per
// delivery: exactly 10 decisions name a device, and every other device is
// recorded as dropped with the reason, in the 202 and in explain alike.
func TestMaxDevicesPerDelivery(t *testing.T) {
	e := newEnv(t, func(d *Deps) { d.MaxDevicesPerDelivery = 10 })
	var b strings.Builder
	b.WriteString(`{"rule":{"name":"Cap"},"alerts":[`)
	for i := range 1000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"kibana.alert.uuid":"cap-%04d","kibana.alert.severity":"high","kibana.alert.status":"active",`+
			`"host.name":["a-%04d.corp.example.com","b-%04d.corp.example.com","c-%04d.corp.example.com"]}`, i, i, i, i)
	}
	b.WriteString(`]}`)
	body := []byte(b.String())
	const reason = "over server.max_devices_per_delivery (10) for one delivery"

	type decision struct {
		AlertID string         `json:"alert_id"`
		Device  map[string]any `json:"device"`
		Reason  string         `json:"reason"`
	}
	check := func(what string, decs []decision) {
		t.Helper()
		var devices []string
		dropped := 0
		for _, d := range decs {
			if d.Device != nil {
				devices = append(devices, d.AlertID+" "+fmt.Sprint(d.Device["dns_name"]))
				continue
			}
			if !strings.HasPrefix(d.Reason, "device dropped: ") && !strings.HasPrefix(d.Reason, "no usable device: ") {
				t.Fatalf("%s: a decision without a device and with reason %q", what, d.Reason)
			}
			dropped += strings.Count(d.Reason, " ("+reason+")")
		}
		want := []string{
			"cap-0000 a-0000.corp.example.com", "cap-0000 b-0000.corp.example.com", "cap-0000 c-0000.corp.example.com",
			"cap-0001 a-0001.corp.example.com", "cap-0001 b-0001.corp.example.com", "cap-0001 c-0001.corp.example.com",
			"cap-0002 a-0002.corp.example.com", "cap-0002 b-0002.corp.example.com", "cap-0002 c-0002.corp.example.com",
			"cap-0003 a-0003.corp.example.com",
		}
		if strings.Join(devices, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: devices decided on:\n%s\nwant the first 10 in order:\n%s", what, strings.Join(devices, "\n"), strings.Join(want, "\n"))
		}
		if dropped != 3000-10 {
			t.Errorf("%s: %d devices dropped with the reason, want %d", what, dropped, 3000-10)
		}
	}

	r := e.post("/v1/webhooks/elastic", body, bearer("elastic"))
	if r.status != http.StatusAccepted {
		t.Fatalf("webhook: %d %s", r.status, r.body)
	}
	check("webhook", decodeJSON[struct {
		Decisions []decision `json:"decisions"`
	}](t, r).Decisions)

	r = e.post("/v1/explain/elastic", body, bearer("elastic"))
	if r.status != http.StatusOK {
		t.Fatalf("explain: %d %s", r.status, r.body)
	}
	check("explain", decodeJSON[struct {
		Decisions []decision `json:"decisions"`
	}](t, r).Decisions)
}
