package defender

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Seeds live in testdata/fuzz/<FuzzName>/ as well; these f.Add calls keep
// the most telling ones next to the target.

func FuzzParseErrorBody(f *testing.F) {
	f.Add([]byte(`{"error":{"code":"ResourceNotFound","message":"Machine 123 was not found","target":"c0ffee"}}`))
	f.Add([]byte(`{"error":{"code":"BadRequest","message":{"lang":"en","value":"v3"}}}`))
	f.Add([]byte("<html>502</html>\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		code, msg, target := parseErrorBody(body)
		for _, s := range []string{code, msg, target} {
			if !utf8.ValidString(s) {
				t.Fatalf("invalid UTF-8 %q", s)
			}
			if len(s) > maxErrorField+len("…") {
				t.Fatalf("field of %d bytes", len(s))
			}
			for _, r := range s {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("control character in %q", s)
				}
			}
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Sat, 28 Nov 2026 12:00:30 GMT", "-1", "1e3", "99999999999999999999", "Sat Nov 28 12:00:05 2026"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseRetryAfter(v, now)
		if d < 0 || d > maxRetryAfter+time.Second {
			t.Fatalf("%q: %s out of range", v, d)
		}
		if !ok && d != 0 {
			t.Fatalf("%q: unreadable but %s", v, d)
		}
		if ok && d%time.Second != 0 {
			t.Fatalf("%q: %s is not whole seconds", v, d)
		}
	})
}

func FuzzDecodeMachineAction(f *testing.F) {
	f.Add([]byte(`{"id":"f123cb8d-1cee-4da9-8cd1-74b4d14f5dc2","type":"RunAntiVirusScan","status":"Pending","creationDateTimeUtc":"2021-01-26T20:33:57.7220239Z","lastUpdateTimeUtc":"2021-01-26T20:33:59.2","commands":[],"relatedFileInfo":null,"errorHResult":0}`))
	f.Add([]byte(`{"value":[{"id":"a"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a MachineAction
		if json.Unmarshal(b, &a) != nil {
			return
		}
		// What we decoded must survive our own encoding and decoding.
		b2, err := json.Marshal(a)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", a, err)
		}
		var a2 MachineAction
		if err := json.Unmarshal(b2, &a2); err != nil {
			t.Fatalf("re-decode %s: %v", b2, err)
		}
		b3, _ := json.Marshal(a2)
		if !bytes.Equal(b2, b3) {
			t.Fatalf("unstable: %s vs %s", b2, b3)
		}
	})
}

func FuzzDecodeMachine(f *testing.F) {
	f.Add([]byte(`{"id":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07","computerDnsName":"m.contoso.com","lastSeen":"2026-01-01T00:00:00.0000000Z","machineTags":["a",null],"rbacGroupId":3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Machine
		if json.Unmarshal(b, &m) != nil {
			return
		}
		b2, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var m2 Machine
		if err := json.Unmarshal(b2, &m2); err != nil {
			t.Fatalf("re-decode %s: %v", b2, err)
		}
	})
}

// Whatever an alert carries, a filter value stays one OData string literal
// and a name that passes ValidDNSName needs no escaping in a path.
func FuzzFilterAndNames(f *testing.F) {
	for _, s := range []string{"host.contoso.com", "o'brien", "x' or '1' eq '1", "../x", "%2e%2e", "a b", "''"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lit := odataString(s)
		inner := lit[1 : len(lit)-1]
		if strings.Contains(strings.ReplaceAll(inner, "''", ""), "'") {
			t.Fatalf("lone quote in %s", lit)
		}
		if strings.ReplaceAll(inner, "''", "'") != s {
			t.Fatalf("%q does not round-trip through %s", s, lit)
		}
		q := queryEscape(lit)
		if strings.ContainsAny(q, "&#+ '") {
			t.Fatalf("query value %q not fully escaped", q)
		}
		if back, err := url.QueryUnescape(q); err != nil || back != lit {
			t.Fatalf("query %q decodes to %q, %v", q, back, err)
		}
		if ValidDNSName(s) {
			if url.PathEscape(s) != s || strings.ContainsAny(s, "/%?#' ") || strings.Contains(s, "..") {
				t.Fatalf("valid name %q is not path-safe", s)
			}
		}
		if ValidMachineID(s) || ValidActionID(s) {
			if url.PathEscape(s) != s {
				t.Fatalf("valid id %q is not path-safe", s)
			}
		}
	})
}
