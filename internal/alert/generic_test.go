package alert

import (
	"bytes"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

func TestGenericMapping(t *testing.T) {
	full := &GenericMapping{
		Alerts:          "payload.detections",
		ID:              "detection_id",
		Severity:        "level",
		SeverityMap:     map[string]domain.Severity{"SEV-A": domain.SeverityCritical, "p3": domain.SeverityMedium},
		Title:           "name",
		Description:     "details.text",
		Category:        "classification",
		DetectionSource: "$.product",
		Status:          "state",
		Tags:            "labels",
		MitreTechniques: "attack.techniques",
		TenantID:        "$.tenant",
		Time:            "created_at",
		URL:             "link",
		DeviceID:        "endpoint.mde_id",
		DNSName:         "endpoint.fqdn",
		Devices:         &GenericDevices{Path: "affected_hosts", DeviceID: "mde_id", DNSName: "fqdn", AADDeviceID: "aad_id"},
		SkipWhen:        &GenericSkip{Path: "state", Values: []string{"Resolved"}},
	}
	body := `{"product":"AcmeEDR","tenant":"t-1","payload":{"detections":[
 {"detection_id": 1001, "level": "sev-a", "name": "Cryptominer", "details": {"text": "found"}, "classification": "Malware",
  "state": "open", "labels": ["crown-jewel", "prod"], "attack": {"techniques": "T1496"}, "created_at": "2024-06-01T10:00:00Z",
  "link": "https://edr.example.com/d/1001",
  "endpoint": {"mde_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "fqdn": "srv-1.example.com"},
  "affected_hosts": [{"mde_id": "../../x", "fqdn": "srv-2.example.com", "aad_id": "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}, {"fqdn": "srv-1.example.com"}, {"fqdn": "bad host"}]},
 {"detection_id": "d-2", "level": "P3", "state": "RESOLVED", "endpoint": {"fqdn": "srv-3"}},
 {"detection_id": "d-3", "level": "high"}
]}}`
	got, err := Decode("generic", []byte(body), Options{Generic: full})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, "generic", got, []want{
		{
			ID: "1001", Severity: domain.SeverityCritical, Title: "Cryptominer", Category: "Malware", Status: "open", URL: "https://edr.example.com/d/1001",
			Devices: []Device{
				{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", DNSName: "srv-1.example.com"},
				{DNSName: "srv-2.example.com", AADDeviceID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"},
			},
			Dropped: []string{"bad host"},
			Tags:    []string{"crown-jewel", "prod"}, Mitre: []string{"T1496"},
		},
		{ID: "d-2", Severity: domain.SeverityMedium, Skip: "state is RESOLVED: skipped by the generic mapping's skip_when", Devices: []Device{{DNSName: "srv-3"}}},
		{ID: "d-3", Severity: domain.SeverityHigh},
	})
	a := got[0]
	if a.DetectionSource != "AcmeEDR" || a.TenantID != "t-1" || a.Description != "found" || a.Time.IsZero() {
		t.Errorf("root paths / description / time: %+v", a)
	}
	// Raw is each alert's own text, found through the alerts path.
	if !bytes.HasPrefix(a.Raw, []byte(`{"detection_id": 1001,`)) || !bytes.HasPrefix(got[2].Raw, []byte(`{"detection_id": "d-3"`)) {
		t.Errorf("raw: %s", a.Raw)
	}
}

func TestGenericBodyShapes(t *testing.T) {
	m := &GenericMapping{ID: "event.id", Severity: "event.severity", DNSName: "host.names"}
	// One object.
	got, err := Decode("generic", []byte(`{"event":{"id":"e1","severity":"HIGH"},"host":{"names":["a.example.com","b.example.com"]}}`), Options{Generic: m})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, "generic", got, []want{{ID: "e1", Severity: domain.SeverityHigh, Devices: []Device{{DNSName: "a.example.com"}, {DNSName: "b.example.com"}}}})
	// An array of objects, with dotted keys and bracket indices.
	m2 := &GenericMapping{ID: "event.id", DNSName: "hosts[1].name"}
	got, err = Decode("generic", []byte(`[{"event.id":"x1","hosts":[{"name":"h0"},{"name":"h1"}]},{"event":{"id":"x2"}}]`), Options{Generic: m2})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, "generic", got, []want{{ID: "x1", Severity: domain.SeverityInformational, Devices: []Device{{DNSName: "h1"}}}, {ID: "x2", Severity: domain.SeverityInformational}})
	if string(got[1].Raw) != `{"event":{"id":"x2"}}` {
		t.Errorf("raw %s", got[1].Raw)
	}
}

func TestGenericErrors(t *testing.T) {
	m := &GenericMapping{Alerts: "items", ID: "id", Title: "t", Devices: &GenericDevices{Path: "devs", DNSName: "n"}}
	cases := []struct{ body, field string }{
		{`{"items":[{"id":"a"},{"t":"no id"}]}`, "items[1].id"},
		{`{"items":[{"id":""}]}`, "items[0].id"},
		{`{"items":[{"id":{"x":1}}]}`, "items[0].id"},
		{`{"items":[{"id":"a","t":[1]}]}`, "items[0].t"},
		{`{"items":[{"id":"a","devs":[{"n":{}}]}]}`, "items[0].devs[0].n"},
		{`{"items":[{"id":"a","devs":"x"}]}`, "items[0].devs"},
		{`{"items":{}}`, "items"},
		{`{"other":[]}`, "items"},
		{`{"items":[1]}`, "items[0]"},
	}
	for _, c := range cases {
		_, err := Decode("generic", []byte(c.body), Options{Generic: m})
		wantFieldError(t, err, c.field)
	}
	_, err := Decode("generic", []byte(`"x"`), Options{Generic: &GenericMapping{ID: "id"}})
	wantFieldError(t, err, "body")
}

func TestGenericValidate(t *testing.T) {
	ok := []*GenericMapping{
		{ID: "id"},
		{ID: "a.b[0].c", Alerts: "$.x.y", SeverityMap: map[string]domain.Severity{"p1": domain.SeverityCritical}},
		{ID: "a[0][1]", Devices: &GenericDevices{Path: "d", DeviceID: "i"}},
		{ID: "id", SkipWhen: &GenericSkip{Path: "s", Values: []string{"closed"}}},
	}
	for _, m := range ok {
		if err := m.Validate(); err != nil {
			t.Errorf("%+v: %v", m, err)
		}
	}
	bad := []struct {
		m    *GenericMapping
		want string
	}{
		{nil, "no mapping"},
		{&GenericMapping{}, "id: required"},
		{&GenericMapping{ID: "a..b"}, "id: "},
		{&GenericMapping{ID: "a[x]"}, "id: "},
		{&GenericMapping{ID: "a[1"}, "id: "},
		{&GenericMapping{ID: "a]"}, "id: "},
		{&GenericMapping{ID: "a[0]b"}, "id: "},
		{&GenericMapping{ID: "id", Title: "$."}, "title: "},
		{&GenericMapping{ID: "id", Alerts: strings.Repeat("a.", 40) + "a"}, "alerts: "},
		{&GenericMapping{ID: "id", SeverityMap: map[string]domain.Severity{"p1": "urgent"}}, "severity_map"},
		{&GenericMapping{ID: "id", SeverityMap: map[string]domain.Severity{" ": domain.SeverityHigh}}, "severity_map"},
		{&GenericMapping{ID: "id", Devices: &GenericDevices{DNSName: "n"}}, "devices.path: required"},
		{&GenericMapping{ID: "id", Devices: &GenericDevices{Path: "d"}}, "devices: needs"},
		{&GenericMapping{ID: "id", SkipWhen: &GenericSkip{Path: "s"}}, "skip_when.values"},
	}
	for _, c := range bad {
		err := c.m.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want an error containing %q", c.m, err, c.want)
		}
	}
}

func TestParsePath(t *testing.T) {
	cases := map[string]string{
		"a":           "a",
		"a.b.c":       "a|b|c",
		"a[0].b":      "a|0|b",
		"a[0][12]":    "a|0|12",
		"$.env.x":     "$|env|x",
		"kibana.x[3]": "kibana|x|3",
	}
	for in, want := range cases {
		parts, root, err := parsePath(in)
		got := strings.Join(parts, "|")
		if root {
			got = "$|" + got
		}
		if err != nil || got != want {
			t.Errorf("parsePath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
