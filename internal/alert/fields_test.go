package alert

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

func td(t *testing.T, name string) []byte { return readFile(t, filepath.Join("testdata", name)) }

func TestDNSNameProblem(t *testing.T) {
	cases := map[string]string{
		"nginx-1":                  "",
		"ws-0142.corp.example.com": "",
		"ws-01.contoso.local":      "", // AD domains under .local are common: kept
		"172.18.68.209":            "an IP address",
		"[2001:db8::1]":            "an IP address",
		"2001:db8::1":              "an IP address",
		"127.0.0.1":                "loopback IP",
		"::1":                      "loopback IP",
		"169.254.10.1":             "link-local IP",
		"fe80::1c2b:3ff:fe4d:5e6f": "link-local IP",
		"localhost":                "local host",
		"LOCALHOST.":               "local host",
		"localhost.localdomain":    "local host",
		"ip6-localhost":            "local host",
		"app.localhost":            "local host",
		"bad name!":                "not a valid host name",
	}
	for in, want := range cases {
		got := dnsNameProblem(in)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("dnsNameProblem(%q) = %q, want it to say %q", in, got, want)
		}
	}
}

// The Prometheus instance label is usually IP:port, while another label
// holds the host name: the IP is skipped, not fatal.
func TestAlertmanagerSkipsUnusableLabels(t *testing.T) {
	got, err := Decode(domain.SourceAlertmanager, td(t, "alertmanager-instance-ip-hostname.json"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, domain.SourceAlertmanager, got, []want{
		{ID: "3407d122c7e8c961@2023-12-29T10:44:55.492Z", Severity: domain.SeverityCritical, Status: "firing",
			URL: "http://prometheus:9090/graph?g0.expr=nginx_upstream_up", Devices: []Device{{DNSName: "nginx-1"}}},
		{ID: "e069919362a06972@2023-12-29T10:45:10.000Z", Severity: domain.SeverityMedium, Status: "firing",
			URL: "http://prometheus:9090/graph?g0.expr=up", Devices: []Device{{DNSName: "db-7.corp.example.com"}}},
		{ID: "451c9ca7ae1697e6@2021-09-22T02:23:24.38636357Z", Severity: domain.SeverityCritical, Status: "firing",
			URL: "http://prometheus:9090/graph?g0.expr=up%7Bjob%3D%22nacos%22%7D+%3D%3D+0", Dropped: []string{"localhost"}},
	})
	if r := got[2].Dropped[0].Reason; !strings.Contains(r, "local host") {
		t.Errorf("localhost dropped with reason %q", r)
	}
	// An internal IP address alone names the device by IP (the dispatcher
	// looks it up); a public one is dropped with a reason that says so.
	ip, err := Decode(domain.SourceAlertmanager, []byte(`[{"labels":{"instance":"172.18.68.209:58888"},"fingerprint":"f"}]`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := ip[0].Devices; len(d) != 1 || d[0] != (Device{IP: "172.18.68.209"}) || len(ip[0].Dropped) != 0 {
		t.Errorf("internal IP-only device: devices %+v, dropped %+v", d, ip[0].Dropped)
	}
	pub, err := Decode(domain.SourceAlertmanager, []byte(`[{"labels":{"instance":"203.0.113.9:9100"},"fingerprint":"f"}]`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := pub[0].Dropped; len(d) != 1 || d[0].Value != "203.0.113.9" || !strings.Contains(d[0].Reason, "IP address") || len(pub[0].Devices) != 0 {
		t.Errorf("public IP-only device: devices %+v, dropped %+v", pub[0].Devices, d)
	}
	// A machine id label that is not one is skipped for the next label.
	id, _ := Decode(domain.SourceAlertmanager, []byte(`[{"labels":{"machine_id":"n/a","mde_device_id":"95FFD3240BDE37EF347CF836DB74B13F85CBF185"},"fingerprint":"f"}]`), Options{})
	if d := id[0].Devices; len(d) != 1 || d[0].ID != "95ffd3240bde37ef347cf836db74b13f85cbf185" {
		t.Errorf("id labels: devices %+v", d)
	}
	// A configured list replaces the default one.
	opts := Options{Alertmanager: AlertmanagerOptions{DNSNameLabels: []string{"name", "hostname"}}}
	cfg, _ := Decode(domain.SourceAlertmanager, td(t, "alertmanager-instance-ip-hostname.json"), opts)
	if d := cfg[0].Devices; len(d) != 1 || d[0].DNSName != "nginx-1" {
		t.Errorf("configured labels: devices %+v", d)
	}
	if d := cfg[1].Devices; len(d) != 0 {
		t.Errorf("configured labels: nodename is not in the list, yet devices %+v", d)
	}
}

// Splunk CIM dest is often an IP address, with the name in dest_dns or
// dest_nt_host (Enterprise Security's asset correlation adds them).
func TestSplunkSkipsUnusableFields(t *testing.T) {
	body := td(t, "splunk-cim-dest-ip.json")
	got, err := Decode(domain.SourceSplunk, body, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, domain.SourceSplunk, got, []want{{
		ID: "scheduler__admin__SplunkEnterpriseSecuritySuite__RMD5c2f6e1a0b9d8c7e6_at_1777777200_311", Severity: domain.SeverityHigh,
		Title:   "Endpoint - Malware blocked - Rule",
		URL:     "https://splunk.example.com:8000/app/SplunkEnterpriseSecuritySuite/@go?sid=scheduler__admin__SplunkEnterpriseSecuritySuite__RMD5c2f6e1a0b9d8c7e6_at_1777777200_311",
		Devices: []Device{{DNSName: "ws-0142.corp.example.com"}},
	}})
	// Configured fields, in their order.
	got, _ = Decode(domain.SourceSplunk, body, Options{Splunk: SplunkOptions{DeviceFields: []string{"dest_ip", "dest_nt_host"}}})
	if d := got[0].Devices; len(d) != 1 || d[0].DNSName != "ws-0142" {
		t.Errorf("configured fields: devices %+v", d)
	}
	// Only an internal IP address: the device is named by it.
	got, _ = Decode(domain.SourceSplunk, []byte(`{"sid":"s","result":{"dest":"10.11.36.20"}}`), Options{})
	if d := got[0].Devices; len(d) != 1 || d[0].IP != "10.11.36.20" {
		t.Errorf("internal IP only: devices %+v, dropped %+v", d, got[0].Dropped)
	}
	// Only a public one: dropped, saying so.
	got, _ = Decode(domain.SourceSplunk, []byte(`{"sid":"s","result":{"dest":"198.51.100.20"}}`), Options{})
	if d := got[0].Dropped; len(d) != 1 || !strings.Contains(d[0].Reason, "IP address") || len(got[0].Devices) != 0 {
		t.Errorf("public IP only: dropped %+v", d)
	}
}

// values() sorts each field on its own, so equal-length lists of ids and
// names are not paired when both are sorted; list() keeps the row order.
func TestSplunkMultivaluePairing(t *testing.T) {
	got, err := Decode(domain.SourceSplunk, td(t, "splunk-values-multivalue.json"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkAlerts(t, domain.SourceSplunk, got, []want{{
		ID: "scheduler__admin__search__RMD5a1b2c3d4e5f60718_at_1777777200_4242", Severity: domain.SeverityHigh,
		URL: "https://splunk.example.com:8000/app/search/@go?sid=scheduler__admin__search__RMD5a1b2c3d4e5f60718_at_1777777200_4242",
		Devices: []Device{
			{ID: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"},
			{ID: "95ffd3240bde37ef347cf836db74b13f85cbf185"},
			{ID: "c0ffee0123456789abcdef0123456789abcdef01"},
			{DNSName: "ws-0142.corp.example.com"},
			{DNSName: "ws-0907.corp.example.com"},
			{DNSName: "ws-1311.corp.example.com"},
		},
	}})
	for _, c := range []struct {
		name, result string
		want         []Device
	}{
		{"one row, one of each: paired", `{"dest":"ws-1","machineId":"1111111111111111111111111111111111111111"}`,
			[]Device{{ID: "1111111111111111111111111111111111111111", DNSName: "ws-1"}}},
		{"list() order, not sorted: paired", `{"dest":["ws-2","ws-1"],"machineId":["1111111111111111111111111111111111111111","2222222222222222222222222222222222222222"]}`,
			[]Device{{ID: "1111111111111111111111111111111111111111", DNSName: "ws-2"}, {ID: "2222222222222222222222222222222222222222", DNSName: "ws-1"}}},
		{"lengths differ: apart", `{"dest":["ws-1","ws-2"],"machineId":"2222222222222222222222222222222222222222"}`,
			[]Device{{ID: "2222222222222222222222222222222222222222"}, {DNSName: "ws-1"}, {DNSName: "ws-2"}}},
	} {
		got, err := Decode(domain.SourceSplunk, []byte(`{"sid":"s","result":`+c.result+`}`), Options{})
		if err != nil {
			t.Fatal(err)
		}
		checkAlerts(t, domain.SourceSplunk, got, []want{{ID: "s", Severity: domain.SeverityInformational, Devices: c.want}})
	}
}

func TestElasticSkipsUnusableHostName(t *testing.T) {
	got, err := Decode(domain.SourceElastic, []byte(`[{"kibana.alert.uuid":"u","host":{"name":"10.0.0.5","hostname":"web-3"}}]`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := got[0].Devices; len(d) != 1 || d[0].DNSName != "web-3" {
		t.Errorf("devices %+v", d)
	}
}
