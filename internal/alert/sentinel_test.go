package alert

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func devicesOf(t *testing.T, body string) Alert {
	t.Helper()
	got, err := Decode("sentinel", []byte(body), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d alerts", len(got))
	}
	return got[0]
}

func wantDevices(t *testing.T, a Alert, want ...Device) {
	t.Helper()
	if fmt.Sprint(a.Devices) != fmt.Sprint(want) {
		t.Errorf("devices %+v, want %+v (dropped %+v)", a.Devices, want, a.Dropped)
	}
}

// TestSentinelNestedHosts: a host written out in full only inside another
// entity (an account's or a process's Host), and referred to elsewhere by
// {"$ref": ...}, is found, once.
func TestSentinelNestedHosts(t *testing.T) {
	ents := `[` +
		`{"$id":"3","Type":"account","Name":"bob","Host":{"$id":"4","Type":"host","HostName":"ws-01","DnsDomain":"corp.example.com","MdatpDeviceId":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}},` +
		`{"$id":"5","Type":"process","CommandLine":"x","Host":{"$ref":"4"},"Account":{"$ref":"3"},` +
		`"ParentProcess":{"$id":"6","Type":"process","Host":{"$id":"7","Type":"host","HostName":"srv-2","DnsDomain":"corp.example.com"}}},` +
		`{"$ref":"4"},{"$ref":"99"},` +
		`{"$id":"8","Type":"host","HostName":"ws-01","DnsDomain":"corp.example.com","MdatpDeviceId":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},` +
		`{"$id":"9","Type":"ip","Address":"10.0.0.1","Location":{"Type":7}}]`
	ws01 := Device{ID: strings.Repeat("a", 40), DNSName: "ws-01.corp.example.com"}
	srv2 := Device{DNSName: "srv-2.corp.example.com"}

	for _, asString := range []bool{false, true} {
		entities := ents
		if asString {
			b, _ := json.Marshal(ents)
			entities = string(b)
		}
		a := devicesOf(t, `{"SystemAlertId":"x1","Entities":`+entities+`}`)
		wantDevices(t, a, ws01, srv2)
		if len(a.Dropped) != 0 {
			t.Errorf("dropped %+v", a.Dropped)
		}
	}

	// The same host twice under one $id is read once: the second copy is
	// not even looked at (here it would be dropped as unusable).
	a := devicesOf(t, `{"SystemAlertId":"x2","Entities":[`+
		`{"$id":"1","Type":"account","Host":{"$id":"2","Type":"host","HostName":"pc-1"}},`+
		`{"$id":"3","Type":"process","Host":{"$id":"2","Type":"host","HostName":"bad name"}}]}`)
	wantDevices(t, a, Device{DNSName: "pc-1"})
	if len(a.Dropped) != 0 {
		t.Errorf("dropped %+v", a.Dropped)
	}

	// Incident relatedEntities: a host nested in an entity's properties.
	a = devicesOf(t, `{"object":{"id":"inc-1","properties":{"relatedEntities":[`+
		`{"kind":"Account","properties":{"accountName":"alice","host":{"$id":"h1","Type":"host","HostName":"ws-9","DnsDomain":"corp.example.com"}}},`+
		`{"kind":"Host","properties":{"hostName":"ws-10","dnsDomain":"corp.example.com"}}]}}}`)
	wantDevices(t, a, Device{DNSName: "ws-9.corp.example.com"}, Device{DNSName: "ws-10.corp.example.com"})
}

// TestSentinelEntityWalkBounds: the walk into nested entities stops at its
// depth and size bounds, says so, and keeps what it found before.
func TestSentinelEntityWalkBounds(t *testing.T) {
	deep := strings.Repeat(`{"Type":"account","Host":`, maxEntityDepth+2) + `{"Type":"host","HostName":"deep-1"}` + strings.Repeat(`}`, maxEntityDepth+2)
	a := devicesOf(t, `{"SystemAlertId":"d","Entities":[{"Type":"host","HostName":"top-1"},`+deep+`]}`)
	wantDevices(t, a, Device{DNSName: "top-1"})
	if len(a.Dropped) != 1 || !strings.Contains(a.Dropped[0].Reason, "not all read") {
		t.Errorf("dropped %+v, want the walk's stop noted", a.Dropped)
	}

	var sb strings.Builder
	sb.WriteString(`{"SystemAlertId":"w","Entities":[{"Type":"host","HostName":"first-1"}`)
	for range maxEntityNodes {
		sb.WriteString(`,{"Type":"file"}`)
	}
	sb.WriteString(`,{"Type":"host","HostName":"last-1"}]}`)
	a = devicesOf(t, sb.String())
	wantDevices(t, a, Device{DNSName: "first-1"})
	if len(a.Dropped) != 1 || !strings.Contains(a.Dropped[0].Reason, "not all read") {
		t.Errorf("dropped %+v, want the walk's stop noted", a.Dropped)
	}
}

// TestSentinelNestedLenient: what is nested inside an entity is read
// leniently (a non-string "Type" deep inside is not an error), while the
// top-level entity keeps its checked shape.
func TestSentinelNestedLenient(t *testing.T) {
	a := devicesOf(t, `{"SystemAlertId":"l","Entities":[{"Type":"account","Host":{"Type":5,"HostName":"x"},"Extra":[{"kind":{}}]}]}`)
	wantDevices(t, a)
	_, err := Decode("sentinel", []byte(`{"SystemAlertId":"l","Entities":[{"Type":5}]}`), Options{})
	wantFieldError(t, err, "Entities[0].Type")
}

// TestRefs: each alert carries the short reference people know it by.
func TestRefs(t *testing.T) {
	tests := []struct{ source, body, want string }{
		{"sentinel", `{"object":{"id":"/subscriptions/s/providers/Microsoft.SecurityInsights/Incidents/g-1","name":"g-1","properties":{"incidentNumber":1042}}}`, "Sentinel incident #1042"},
		{"sentinel", `{"object":{"id":"/x/Incidents/g-1","name":"g-1","properties":{"incidentNumber":"77"}}}`, "Sentinel incident #77"},
		{"sentinel", `{"object":{"id":"/x/Incidents/g-1","name":"g-1","properties":{"incidentNumber":1.5}}}`, "Sentinel incident g-1"},
		{"sentinel", `{"object":{"id":"/x/Incidents/g-2","properties":{}}}`, "Sentinel alert g-2"},
		{"sentinel", `{"SystemAlertId":"2518_a1b2","AlertDisplayName":"x"}`, "Sentinel alert 2518_a1b2"},
		{"defender", `{"id":"da637_1"}`, "Defender alert da637_1"},
		{"graph", `{"value":[{"id":"da638_2"}]}`, "Graph security alert da638_2"},
		{"defender", `{"id":"` + strings.Repeat("z", 100) + `"}`, "Defender alert " + strings.Repeat("z", maxRefIDLen) + "…"},
	}
	for _, tt := range tests {
		got, err := Decode(tt.source, []byte(tt.body), Options{})
		if err != nil {
			t.Fatalf("%s: %v", tt.body, err)
		}
		if got[0].Ref != tt.want {
			t.Errorf("%s: ref %q, want %q", tt.body, got[0].Ref, tt.want)
		}
	}
}
