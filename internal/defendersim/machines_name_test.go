package defendersim

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

// GET /api/machines/{name} takes the computer name (docs/defender-api.md, "Finding
// the machine"): the full DNS name or, without a domain, its first label;
// the computerDnsName filter matches the full name only.
func TestGetMachineByComputerName(t *testing.T) {
	ms := []Machine{
		{ID: strings.Repeat("a", 40), ComputerDNSName: "ws-042.contoso.com"},
		{ID: strings.Repeat("b", 40), ComputerDNSName: "kiosk7"}, // not domain-joined
		{ID: strings.Repeat("c", 40), ComputerDNSName: "kiosk7.fabrikam.com"},
		// The same computer name in two domains.
		{ID: strings.Repeat("d", 40), ComputerDNSName: "dup.contoso.com"},
		{ID: strings.Repeat("e", 40), ComputerDNSName: "dup.fabrikam.com"},
	}
	p := newPlain(t, Options{Machines: ms})
	cases := []struct {
		name, key string
		want      string // machine id, "" for 404
	}{
		{"computer name", "WS-042", ms[0].ID},
		{"computer name lower case", "ws-042", ms[0].ID},
		{"full DNS name", "ws-042.contoso.com", ms[0].ID},
		{"name without a domain matches itself first", "kiosk7", ms[1].ID},
		{"the other kiosk7 by its full name", "kiosk7.fabrikam.com", ms[2].ID},
		{"computer name in two domains", "dup", ""},
		{"each by its full name", "dup.fabrikam.com", ms[4].ID},
		{"a partial domain is not a computer name", "ws-042.contoso", ""},
		{"a prefix of the label", "ws-04", ""},
		{"a later label", "contoso", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := p.api("GET", "/api/machines/"+url.PathEscape(c.key), "")
			if c.want == "" {
				if st != 404 || errCode(t, body) != "ResourceNotFound" {
					t.Fatalf("want 404 ResourceNotFound, got %d %s", st, body)
				}
				return
			}
			var got machineJSON
			if st != 200 {
				t.Fatalf("status %d: %s", st, body)
			}
			if err := json.Unmarshal(body, &got); err != nil || got.ID != c.want {
				t.Fatalf("got %+v (%v), want id %s", got, err, c.want)
			}
		})
	}

	// The filter, as in real Defender, matches the whole DNS name only.
	for key, want := range map[string]int{"ws-042": 0, "WS-042.contoso.com": 1, "kiosk7": 1, "dup": 0} {
		st, body := p.api("GET", "/api/machines?$filter="+url.QueryEscape("computerDnsName eq '"+key+"'"), "")
		var out struct {
			Value []machineJSON `json:"value"`
		}
		if st != 200 || json.Unmarshal(body, &out) != nil {
			t.Fatalf("filter %q: %d %s", key, st, body)
		}
		if len(out.Value) != want {
			t.Errorf("filter computerDnsName eq %q: %d machines, want %d", key, len(out.Value), want)
		}
	}
}
