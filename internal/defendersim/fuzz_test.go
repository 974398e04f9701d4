package defendersim

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzFilter: any $filter either parses or fails with a FilterError, never
// panics, and a parsed filter evaluates against both entity kinds.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{
		"computerDnsName eq 'host.contoso.com'",
		"computerDnsName eq 'o''brien'",
		"id eq 'a' or id eq 'b'",
		"(status eq 'Pending' or status eq 'InProgress') and creationDateTimeUtc ge 2024-01-01T00:00:00Z",
		"not (healthStatus eq 'Active')",
		"machineTags/any(t: t eq 'vip')",
		"rbacGroupId gt 1",
		"lastIpAddress eq null",
		"computerDnsName eq 'x' or id ne '''",
		"((((id eq 'a'))))",
		"creationDateTimeUtc lt 2021-01-26T20:33:57.7220239Z",
	} {
		f.Add(s)
	}
	ms := GenerateMachines(3)
	s, err := New(Options{Machines: ms})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	act := MachineAction{ID: "x", Type: "RunAntiVirusScan", Status: StatusPending, MachineID: ms[0].ID,
		CreationDateTimeUTC: now, LastUpdateDateTimeUTC: now}
	f.Fuzz(func(t *testing.T, src string) {
		for _, sc := range []schema{machineSchema, actionSchema} {
			n, err := parseFilter(src, sc)
			if err != nil {
				var fe *FilterError
				if !errors.As(err, &fe) {
					t.Fatalf("error of type %T: %v", err, err)
				}
				continue
			}
			if n == nil {
				t.Fatal("nil node without error")
			}
			for _, m := range ms {
				n.eval(s.machineGetter(m), nil)
			}
			n.eval(actionGetter(act), nil)
		}
	})
}

// FuzzFilterLiteral: a value escaped by doubling its quotes is one literal,
// whatever it holds; it matches exactly the machine with that name and can
// never widen the filter.
func FuzzFilterLiteral(f *testing.F) {
	for _, s := range []string{"ws-001.contoso.com", "o'brien", "' or id ne '", "''", "x') or (id ne 'y", "a\x00b", "ÄÖ.contoso.com"} {
		f.Add(s)
	}
	s, err := New(Options{GenerateMachines: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if v == "" || !utf8.ValidString(v) {
			return
		}
		inv, err := newInventory([]Machine{
			{ID: strings.Repeat("a", 40), ComputerDNSName: v},
			{ID: strings.Repeat("b", 40), ComputerDNSName: v + "-other"},
		})
		if err != nil {
			t.Fatal(err)
		}
		src := "computerDnsName eq '" + strings.ReplaceAll(v, "'", "''") + "'"
		n, err := parseFilter(src, machineSchema)
		if err != nil {
			t.Fatalf("escaped literal rejected: %q: %v", src, err)
		}
		if !n.eval(s.machineGetter(inv.list[0]), nil) {
			t.Fatalf("%q does not match its own machine", src)
		}
		if n.eval(s.machineGetter(inv.list[1]), nil) {
			t.Fatalf("%q matches another machine", src)
		}
	})
}

// FuzzScanRequestBody: the runAntiVirusScan body decoder never panics,
// rejects with a documented code, and what it accepts is exactly a Comment
// and a Quick/Full ScanType that survive a round trip.
func FuzzScanRequestBody(f *testing.F) {
	for _, s := range []string{
		`{"Comment":"alert 1","ScanType":"Quick"}`,
		`{"ScanType":"Full","Comment":"x"}`,
		`{"comment":"x","ScanType":"Quick"}`,
		`{"Comment":"x"}`,
		`{"Comment":"x","Comment":"y","ScanType":"Quick"}`,
		`{"Comment":"x","ScanType":"Quick"} trailing`,
		`[]`,
		``,
		`{"Comment":"\u0000","ScanType":"Full"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeScanRequest(body)
		if err != nil {
			var be *bodyError
			if !errors.As(err, &be) || (be.Code != "InvalidRequestBody" && be.Code != "MissingRequiredParameter") || be.Msg == "" {
				t.Fatalf("bad error %T %v", err, err)
			}
			return
		}
		if req.ScanType != "Quick" && req.ScanType != "Full" || strings.TrimSpace(req.Comment) == "" {
			t.Fatalf("accepted %+v", req)
		}
		again, _ := json.Marshal(map[string]string{"Comment": req.Comment, "ScanType": req.ScanType})
		back, err := decodeScanRequest(again)
		if err != nil || back != req {
			t.Fatalf("round trip %+v -> %s -> %+v %v", req, again, back, err)
		}
	})
}
