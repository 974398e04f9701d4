package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

// want is what a test checks of one decoded alert. Nil slices in want are
// not checked, except Devices and Dropped which are always compared.
type want struct {
	ID, Title, URL, Skip, Status, Category string
	Severity                               domain.Severity
	Devices                                []Device
	Dropped                                []string // DroppedDevice.Value
	Tags, Mitre                            []string
}

func checkAlerts(t *testing.T, source string, got []Alert, wants []want) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("got %d alerts, want %d: %+v", len(got), len(wants), got)
	}
	for i, w := range wants {
		g := got[i]
		if g.Source != source {
			t.Errorf("alert %d: source %q, want %q", i, g.Source, source)
		}
		if g.ID != w.ID {
			t.Errorf("alert %d: id %q, want %q", i, g.ID, w.ID)
		}
		if g.Severity != w.Severity {
			t.Errorf("alert %d: severity %q, want %q", i, g.Severity, w.Severity)
		}
		if w.Title != "" && g.Title != w.Title {
			t.Errorf("alert %d: title %q, want %q", i, g.Title, w.Title)
		}
		if g.URL != w.URL {
			t.Errorf("alert %d: url %q, want %q", i, g.URL, w.URL)
		}
		if g.Skip != w.Skip {
			t.Errorf("alert %d: skip %q, want %q", i, g.Skip, w.Skip)
		}
		if w.Status != "" && g.Status != w.Status {
			t.Errorf("alert %d: status %q, want %q", i, g.Status, w.Status)
		}
		if w.Category != "" && g.Category != w.Category {
			t.Errorf("alert %d: category %q, want %q", i, g.Category, w.Category)
		}
		wd := w.Devices
		if wd == nil {
			wd = []Device{}
		}
		if !slices.Equal(g.Devices, wd) {
			t.Errorf("alert %d: devices\n got %+v\nwant %+v", i, g.Devices, wd)
		}
		var dropped []string
		for _, d := range g.Dropped {
			dropped = append(dropped, d.Value)
			if d.Reason == "" {
				t.Errorf("alert %d: dropped %q has no reason", i, d.Value)
			}
		}
		if !slices.Equal(dropped, w.Dropped) {
			t.Errorf("alert %d: dropped %q, want %q", i, dropped, w.Dropped)
		}
		if w.Tags != nil && !slices.Equal(g.Tags, w.Tags) {
			t.Errorf("alert %d: tags %q, want %q", i, g.Tags, w.Tags)
		}
		if w.Mitre != nil && !slices.Equal(g.MitreTechniques, w.Mitre) {
			t.Errorf("alert %d: mitre %q, want %q", i, g.MitreTechniques, w.Mitre)
		}
		if !json.Valid(g.Raw) {
			t.Errorf("alert %d: Raw is not JSON: %q", i, g.Raw)
		}
		checkDevicesValid(t, g)
	}
}

func checkDevicesValid(t *testing.T, a Alert) {
	t.Helper()
	for _, d := range a.Devices {
		if d.ID == "" && d.DNSName == "" {
			t.Errorf("device with neither id nor name: %+v", d)
		}
		if d.ID != "" && (!ValidMachineID(d.ID) || d.ID != strings.ToLower(d.ID)) {
			t.Errorf("device id %q not a lower-case machine id", d.ID)
		}
		if d.DNSName != "" && (!ValidDNSName(d.DNSName) || d.DNSName != strings.ToLower(d.DNSName) || strings.HasSuffix(d.DNSName, ".")) {
			t.Errorf("device name %q not a normalized host name", d.DNSName)
		}
		if d.AADDeviceID != "" && !validGUID(d.AADDeviceID) {
			t.Errorf("aad device id %q not a GUID", d.AADDeviceID)
		}
	}
	if len(a.Devices) > MaxDevicesPerAlert {
		t.Errorf("%d devices, more than the cap", len(a.Devices))
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sample(t testing.TB, name string) []byte {
	return readFile(t, filepath.Join("..", "..", "testdata", "samples", name))
}

// wrapIncident puts the published relatedEntities fragment into an incident
// trigger envelope, unchanged.
func wrapIncident(entities []byte) []byte {
	var b bytes.Buffer
	b.WriteString(`{"eventUniqueId":"e1","objectSchemaType":"Incident","objectEventType":"Create","object":{"id":"/subscriptions/x/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/w/providers/Microsoft.SecurityInsights/Incidents/abc","properties":{"incidentNumber":12,"title":"EICAR on Linux","severity":"Informational","incidentUrl":"https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident/abc","relatedEntities":`)
	b.Write(entities)
	b.WriteString(`}}}`)
	return b.Bytes()
}

// wrapAlertTrigger puts the published "Get Hosts" item into an alert
// trigger's Entities, as an array or as a string holding the array.
func wrapAlertTrigger(host []byte, asString bool) []byte {
	ents := []byte("[" + string(bytes.TrimSpace(host)) + "]")
	if asString {
		ents, _ = json.Marshal(string(ents))
	}
	return []byte(`{"SystemAlertId":"sa-1","AlertDisplayName":"EICAR","AlertSeverity":"Low","Entities":` + string(ents) + `}`)
}

func TestPublishedSamples(t *testing.T) {
	eicarHost := Device{ID: "95ffd3240bde37ef347cf836db74b13f85cbf185", DNSName: "vmlinuxcustomlog.rglnoiucbtnuzarcriubjs2azc.lx.internal.cloudapp.net"}
	cases := []struct {
		name, source string
		body         []byte
		rawIsBody    bool
		want         []want
	}{
		{name: "mde-alert", source: "defender", body: sample(t, "mde-alert.json"), rawIsBody: true, want: []want{{
			ID: "da637472900382838869_1364969609", Severity: domain.SeverityLow, Status: "New", Category: "Execution",
			Title:   "Low-reputation arbitrary code executed by signed executable",
			URL:     "https://security.microsoft.com/alerts/da637472900382838869_1364969609",
			Devices: []Device{{ID: "111e6dd8c833c8a052ea231ec1b19adaf497b625", DNSName: "temp123.middleeast.corp.microsoft.com"}},
			Mitre:   []string{"T1064", "T1085", "T1220"},
		}}},
		{name: "mde-alerts-list", source: "defender", body: sample(t, "mde-alerts-list.json"), want: []want{{
			ID: "da637308392288907382_-880718168", Severity: domain.SeverityLow, Category: "SuspiciousActivity",
			Title:   "Suspicious 'Meterpreter' behavior was detected",
			URL:     "https://security.microsoft.com/alerts/da637308392288907382_-880718168",
			Devices: []Device{{ID: "12ee6dd8c833c8a052ea231ec1b19adaf497b625", DNSName: "temp123.middleeast.corp.microsoft.com"}},
		}}},
		{name: "graph-alert-v2", source: "graph", body: sample(t, "graph-alert-v2.json"), rawIsBody: true, want: []want{{
			ID: "da637578995287051192_756343937", Severity: domain.SeverityLow, Category: "DefenseEvasion",
			Title:   "Suspicious execution of hidden file",
			URL:     "https://security.microsoft.com/alerts/da637578995287051192_756343937?tid=b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c",
			Devices: []Device{{ID: "73e7e2de709dff64ef64b1d0c30e67fab63279db", DNSName: "tempdns"}},
			Tags:    []string{"Defender Experts"}, Mitre: []string{"T1564.001"},
		}}},
		{name: "sentinel-incident-relatedEntities", source: "sentinel", body: wrapIncident(sample(t, "sentinel-incident-relatedEntities.json")), rawIsBody: true, want: []want{{
			ID:       "/subscriptions/x/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/w/providers/Microsoft.SecurityInsights/Incidents/abc",
			Severity: domain.SeverityInformational, Title: "EICAR on Linux",
			URL:     "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident/abc",
			Devices: []Device{eicarHost},
		}}},
		{name: "sentinel-get-hosts-item in Entities array", source: "sentinel", body: wrapAlertTrigger(sample(t, "sentinel-get-hosts-item.json"), false), rawIsBody: true, want: []want{{
			ID: "sa-1", Severity: domain.SeverityLow, Title: "EICAR", Devices: []Device{eicarHost},
		}}},
		{name: "sentinel-get-hosts-item in Entities string", source: "sentinel", body: wrapAlertTrigger(sample(t, "sentinel-get-hosts-item.json"), true), rawIsBody: true, want: []want{{
			ID: "sa-1", Severity: domain.SeverityLow, Title: "EICAR", Devices: []Device{eicarHost},
		}}},
		{name: "azure-monitor-common-alert (log, Fired)", source: "azuremonitor", body: sample(t, "azure-monitor-common-alert.json"), rawIsBody: true, want: []want{{
			ID:       "/subscriptions/12345a-1234b-123c-123d-12345678e/providers/Microsoft.AlertsManagement/alerts/12345a-1234b-123c-123d-12345678e",
			Severity: domain.SeverityInformational, Title: "AcmeRule", Status: "Fired", Category: "Log",
			URL: "https://portal.azure.com/#blade/Microsoft_Azure_Monitoring/AlertDetailsTemplateBlade/alertId/%2Fsubscriptions%2F12345a-1234b-123c-123d-12345678e%2Fproviders%2FMicrosoft.AlertsManagement%2Falerts%2F12345a-1234b-123c-123d-12345678e",
			// The target and the ResourceId dimension are the VM testvm.
			Devices: []Device{{DNSName: "testvm"}},
		}}},
		{name: "azure-monitor-common-alert-metric (Resolved)", source: "azuremonitor", body: sample(t, "azure-monitor-common-alert-metric.json"), rawIsBody: true, want: []want{{
			ID:       "/subscriptions/<subscription ID>/providers/Microsoft.AlertsManagement/alerts/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e",
			Severity: domain.SeverityLow, Title: "WCUS-R2-Gen2",
			URL:     "https://portal.azure.com/#blade/Microsoft_Azure_Monitoring/AlertDetailsTemplateBlade/alertId/%2Fsubscriptions%2F%3Csubscription%20ID%3E%2Fproviders%2FMicrosoft.AlertsManagement%2Falerts%2Faaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e",
			Skip:    "monitorCondition is Resolved: scanhook acts on Fired alerts only",
			Devices: []Device{{DNSName: "wcus-r2-gen2"}},
		}}},
		{name: "splunk-webhook", source: "splunk", body: sample(t, "splunk-webhook.json"), rawIsBody: true, want: []want{{
			ID: "scheduler_admin_search_W2_at_14232356_132", Severity: domain.SeverityInformational,
			URL: "http://web.example.local:8000/app/search/@go?sid=scheduler_admin_search_W2_at_14232356_132",
		}}},
		{name: "alertmanager-webhook", source: "alertmanager", body: sample(t, "alertmanager-webhook.json"), want: []want{{
			// No fingerprint in this older body: the id is the label hash.
			ID:       "labels-c62c38f8e2fe30f151f0e396b98a9818@2018-03-07T06:33:21.873077559-05:00",
			Severity: domain.SeverityMedium, Title: "Server High Memory usage", Status: "firing", Category: "high_memory_load",
			Dropped: []string{"instance-with-hyphen_and_underscore"},
		}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Decode(c.source, c.body, Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkAlerts(t, c.source, got, c.want)
			if c.rawIsBody && !bytes.Equal(got[0].Raw, c.body) {
				t.Errorf("Raw is not the body as sent")
			}
		})
	}
}

func TestRawIsEachAlertAsSent(t *testing.T) {
	body := sample(t, "mde-alerts-list.json")
	got, err := Decode("defender", body, Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(body, []byte(`{
            "id": "da637308392288907382_-880718168"`))
	if start < 0 || !bytes.HasPrefix(body[start:], got[0].Raw) {
		t.Errorf("Raw is not the alert's own text as sent:\n%s", got[0].Raw)
	}
	// The Raw must not alias the caller's buffer.
	body[start+1] = 'X'
	if got[0].Raw[1] == 'X' {
		t.Error("Raw aliases the request body")
	}
}

func TestEdgeCases(t *testing.T) {
	td := func(name string) []byte { return readFile(t, filepath.Join("testdata", name)) }
	cases := []struct {
		name, source string
		body         []byte
		opts         Options
		want         []want
	}{
		{name: "sentinel incident with many hosts", source: "sentinel", body: td("sentinel-incident-hosts.json"), want: []want{{
			ID:       "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/law-soc/providers/Microsoft.SecurityInsights/Incidents/7e3c2a10-1111-2222-3333-444455556666",
			Severity: domain.SeverityHigh, Title: "Ransomware activity on several hosts", Status: "New",
			URL: "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/law-soc/providers/Microsoft.SecurityInsights/Incidents/7e3c2a10-1111-2222-3333-444455556666",
			Devices: []Device{
				// Upper-case id lower-cased; the second entity (same name, no id) merged in.
				{ID: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", DNSName: "ws-01.corp.example.com"},
				// "../x" is never an id: the name stands alone.
				{DNSName: "ws-02.corp.example.com", AADDeviceID: "4d5e6f70-1111-2222-3333-444455556666"},
				// DeviceDnsName wins over hostName; trailing dot removed.
				{DNSName: "ws-03.branch.example.com"},
			},
			Dropped: []string{"abc' or 1 eq 1", "my host.corp.example.com"},
			Tags:    []string{"crown-jewel"}, Mitre: []string{"T1486"},
		}}},
		{name: "sentinel alert trigger, Entities as a string", source: "sentinel", body: td("sentinel-alert-entities-string.json"), want: []want{{
			ID: "2518275830498765432_a1b2c3d4-0000-4000-8000-000000000002", Severity: domain.SeverityMedium,
			Title: "Suspicious PowerShell command line", URL: "https://security.microsoft.com/alerts/da2518275830498765432",
			Devices: []Device{
				{ID: "cccccccccccccccccccccccccccccccccccccccc", DNSName: "laptop-7.corp.example.com", AADDeviceID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"},
				{DNSName: "srv-9.corp.example.com"},
			},
		}}},
		{name: "sentinel alert trigger, Entities as an array", source: "sentinel", body: td("sentinel-alert-entities-array.json"), want: []want{{
			ID: "a1b2c3d4-0000-4000-8000-000000000003", Severity: domain.SeverityLow, Title: "Malware detected",
			Devices: []Device{{DNSName: "db-1.corp.example.com"}, {ID: "dddddddddddddddddddddddddddddddddddddddd", DNSName: "db-2"}},
			Dropped: []string{`"quoted"`},
		}}},
		{name: "graph with several devices", source: "graph", body: td("graph-several-devices.json"), want: []want{
			{
				ID: "da638000000000000000_1", Severity: domain.SeverityHigh, Category: "Ransomware",
				URL: "https://security.microsoft.com/alerts/da638000000000000000_1?tid=t",
				Devices: []Device{
					{ID: "1111111111111111111111111111111111111111", DNSName: "pc-1.corp.example.com", AADDeviceID: "11111111-2222-3333-4444-555555555555"},
					{ID: "2222222222222222222222222222222222222222", DNSName: "pc-2"},
					{DNSName: "pc-3"},
				},
				Dropped: []string{"pc 4; drop"},
			},
			// A javascript: URL is not kept.
			{ID: "da638000000000000000_2", Severity: domain.SeverityInformational},
		}},
		{name: "defender with a hostile machine id and name", source: "defender", body: td("defender-bad-device.json"), want: []want{{
			ID: "da1_2", Severity: domain.SeverityInformational, URL: "https://security.microsoft.com/alerts/da1_2",
			Dropped: []string{"host'name.corp"},
		}}},
		{name: "alertmanager firing and resolved", source: "alertmanager", body: td("alertmanager-firing-resolved.json"), want: []want{
			{
				ID: "c0ffee0123456789@2024-05-03T12:00:00Z", Severity: domain.SeverityCritical, Title: "AVDetection", Status: "firing",
				URL:     "http://prometheus.example.com:9090/graph?g0.expr=up",
				Devices: []Device{{ID: "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", DNSName: "web-1.corp.example.com"}},
			},
			{
				ID: "0123456789abcdef@2024-05-03T11:00:00Z", Severity: domain.SeverityMedium, Title: "Miner gone", Status: "resolved",
				URL:     "http://prometheus.example.com:9090/graph?g0.expr=up",
				Skip:    "status is resolved: scanhook acts on firing alerts only",
				Devices: []Device{{DNSName: "web-2"}},
			},
		}},
		{name: "alertmanager custom labels", source: "alertmanager", body: td("alertmanager-firing-resolved.json"),
			opts: Options{Alertmanager: AlertmanagerOptions{DeviceIDLabels: []string{"nope"}, DNSNameLabels: []string{"alertname"}, SeverityLabel: "instance"}},
			want: []want{
				{ID: "c0ffee0123456789@2024-05-03T12:00:00Z", Severity: domain.SeverityInformational, URL: "http://prometheus.example.com:9090/graph?g0.expr=up",
					Devices: []Device{{DNSName: "avdetection"}}},
				{ID: "0123456789abcdef@2024-05-03T11:00:00Z", Severity: domain.SeverityInformational, URL: "http://prometheus.example.com:9090/graph?g0.expr=up",
					Skip: "status is resolved: scanhook acts on firing alerts only", Devices: []Device{{DNSName: "avdetection"}}},
			}},
		{name: "azure monitor fired with custom properties", source: "azuremonitor", body: td("azuremonitor-fired-custom.json"), want: []want{{
			ID:       "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.AlertsManagement/alerts/9f8e7d6c-0000-4000-8000-000000000004",
			Severity: domain.SeverityHigh, Title: "Defender AV detection",
			URL: "https://portal.azure.com/#blade/Microsoft_Azure_Monitoring/AlertDetailsTemplateBlade/alertId/%2Fsubscriptions%2F00000000-0000-0000-0000-000000000000%2Fproviders%2FMicrosoft.AlertsManagement%2Falerts%2F9f8e7d6c-0000-4000-8000-000000000004",
			// The custom properties name the device, so it is the only
			// one; plain configurationItems never were proof of a machine.
			Devices: []Device{{ID: "ffffffffffffffffffffffffffffffffffffffff", DNSName: "vm-app-01"}},
		}}},
		{name: "splunk multivalue devices and numeric severity", source: "splunk", body: td("splunk-device.json"), want: []want{{
			ID: "rt_scheduler__admin__search__RMD5_at_1714900000_42", Severity: domain.SeverityHigh, Title: "EDR - Malware on endpoint",
			URL: "https://splunk.example.com:8000/app/search/@go?sid=rt_scheduler__admin__search__RMD5_at_1714900000_42",
			// Both lists are sorted with no repeats, as values() gives
			// them: which id goes with which name is unknown, so each
			// value is its own device, and the id "bad" has no name.
			Devices: []Device{
				{ID: "9999999999999999999999999999999999999999"},
				{DNSName: "ws-10.corp.example.com"},
				{DNSName: "ws-11.corp.example.com"},
			},
			Dropped: []string{"bad"},
		}}},
		{name: "elastic nested form, bare array, recovered", source: "elastic", body: td("elastic-nested.json"), want: []want{{
			ID: "5a1d0c3e9b8f7a6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d", Severity: domain.SeverityCritical, Title: "Malware Prevention Alert",
			Skip:    "kibana.alert.status is recovered: scanhook acts on active alerts only",
			Devices: []Device{{DNSName: "mac-1.corp.example.com"}},
			Tags:    []string{"Elastic", "Endpoint"}, Mitre: []string{"T1204"},
		}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Decode(c.source, c.body, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			checkAlerts(t, c.source, got, c.want)
		})
	}
}

func TestControlCharsAndCaps(t *testing.T) {
	got, err := Decode("sentinel", readFile(t, "testdata/sentinel-incident-hosts.json"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d := got[0].Description; d != "Line one\nLine two" {
		t.Errorf("description %q: want the line break kept and the bell removed", d)
	}

	long := strings.Repeat("é", MaxTitleLen) // 2 bytes each
	body, _ := json.Marshal(map[string]any{"id": "a\x00b\u202e", "title": long, "description": strings.Repeat("x", 3*MaxDescriptionLen), "category": "c\r\nd"})
	got, err = Decode("defender", body, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := got[0]
	if a.ID != "ab" {
		t.Errorf("id %q: want control characters stripped", a.ID)
	}
	if len(a.Title) > MaxTitleLen || !strings.HasPrefix(long, a.Title) || len(a.Title) < MaxTitleLen-1 {
		t.Errorf("title cut to %d bytes, want at most %d on a rune boundary", len(a.Title), MaxTitleLen)
	}
	if len(a.Description) != MaxDescriptionLen {
		t.Errorf("description %d bytes, want %d", len(a.Description), MaxDescriptionLen)
	}
	if a.Category != "c  d" {
		t.Errorf("category %q", a.Category)
	}

	// An id over the cap is refused, not truncated.
	body, _ = json.Marshal(map[string]any{"id": strings.Repeat("a", MaxIDLen+1)})
	_, err = Decode("defender", body, Options{})
	wantFieldError(t, err, "id")

	// Too many devices: the first MaxDevicesPerAlert are kept, the rest dropped.
	var ev []map[string]any
	for i := range MaxDevicesPerAlert + 5 {
		ev = append(ev, map[string]any{"@odata.type": graphDeviceEvidence, "deviceDnsName": "h" + strings.Repeat("x", i%7) + "-" + string(rune('a'+i%26)) + "-" + strings.Repeat("1", i/26+1)})
	}
	ev = append(ev, map[string]any{"@odata.type": graphDeviceEvidence, "deviceDnsName": "zzz-extra"})
	body, _ = json.Marshal(map[string]any{"id": "g", "evidence": ev})
	got, err = Decode("graph", body, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Devices) != MaxDevicesPerAlert || len(got[0].Dropped) != 6 {
		t.Errorf("got %d devices and %d dropped, want %d and 6", len(got[0].Devices), len(got[0].Dropped), MaxDevicesPerAlert)
	}

	// Too many dropped: the list is capped, with a count of the rest.
	ev = ev[:0]
	for range MaxDroppedPerAlert + 7 {
		ev = append(ev, map[string]any{"@odata.type": graphDeviceEvidence, "deviceDnsName": "bad name"})
	}
	body, _ = json.Marshal(map[string]any{"id": "g", "evidence": ev})
	got, _ = Decode("graph", body, Options{})
	if d := got[0].Dropped; len(d) != MaxDroppedPerAlert+1 || !strings.HasPrefix(d[len(d)-1].Reason, "7 more") {
		t.Errorf("dropped list not capped: %d entries", len(d))
	}

	// Too many alerts: refused as a whole.
	var alerts []map[string]any
	for range MaxAlertsPerBody + 1 {
		alerts = append(alerts, map[string]any{"id": "x"})
	}
	body, _ = json.Marshal(map[string]any{"value": alerts})
	_, err = Decode("defender", body, Options{})
	wantFieldError(t, err, "value")

	// A dropped value is cut and cleaned.
	body, _ = json.Marshal(map[string]any{"id": "x", "computerDnsName": "bad\x07 " + strings.Repeat("y", 500)})
	got, _ = Decode("defender", body, Options{})
	if v := got[0].Dropped[0].Value; len(v) > maxDroppedValueLen+len("…") || strings.ContainsRune(v, 7) {
		t.Errorf("dropped value not cut/cleaned: %q", v)
	}
}

func wantFieldError(t *testing.T, err error, field string) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("got %v, want a *FieldError for %q", err, field)
	}
	if fe.Field != field {
		t.Errorf("FieldError.Field = %q, want %q (%v)", fe.Field, field, err)
	}
	if !strings.HasPrefix(fe.Error(), field+": ") {
		t.Errorf("Error() = %q, want it to start with %q", fe.Error(), field+": ")
	}
}

func TestFieldErrors(t *testing.T) {
	cases := []struct {
		source, body, field string
	}{
		{"defender", ``, "body"},
		{"defender", `{"id":`, "body"},
		{"defender", `{"id":"a"} trailing`, "body"},
		{"defender", `"just a string"`, "body"},
		{"defender", `null`, "body"},
		{"graph", `[{"id":"a"}]`, "body"},
		{"defender", `{"title":"no id"}`, "id"},
		{"defender", `{"id":"  "}`, "id"},
		{"defender", `{"id":42}`, "id"},
		{"defender", `{"id":"a","severity":5}`, "severity"},
		{"defender", `{"id":"a","mitreTechniques":[1]}`, "mitreTechniques[0]"},
		{"defender", `{"value":{}}`, "value"},
		{"defender", `{"value":[{"id":"a"},{"title":"b"}]}`, "value[1].id"},
		{"defender", `{"value":[{"id":"a"},7]}`, "value[1]"},
		{"graph", `{"id":"a","evidence":{}}`, "evidence"},
		{"graph", `{"id":"a","evidence":[{"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":["x"]}]}`, "evidence[0].mdeDeviceId"},
		{"graph", `{"value":[{"id":"a"},{"id":"b","alertWebUrl":{}}]}`, "value[1].alertWebUrl"},
		{"sentinel", `{"foo":1}`, "object"},
		{"sentinel", `[]`, "body"},
		{"sentinel", `{"object":{"properties":{"title":"t"}}}`, "object.id"},
		{"sentinel", `{"object":{"id":"i","properties":{"severity":1}}}`, "object.properties.severity"},
		{"sentinel", `{"object":{"id":"i","properties":{"relatedEntities":"x"}}}`, "object.properties.relatedEntities"},
		{"sentinel", `{"object":{"id":"i","properties":{"relatedEntities":[{"kind":"Host","properties":{"hostName":7}}]}}}`, "object.properties.relatedEntities[0].properties.hostName"},
		{"sentinel", `{"object":"x"}`, "object"},
		{"sentinel", `{"SystemAlertId":"a","Entities":"not json"}`, "Entities"},
		{"sentinel", `{"SystemAlertId":"a","Entities":"{\"Type\":\"host\"}"}`, "Entities"},
		{"sentinel", `{"SystemAlertId":"","AlertDisplayName":"x"}`, "SystemAlertId"},
		{"sentinel", `{"SystemAlertId":"a","Entities":[{"Type":"host","MdatpDeviceId":{}}]}`, "Entities[0].MdatpDeviceId"},
		{"azuremonitor", `{"schemaId":"Microsoft.Insights/activityLogs","data":{}}`, "schemaId"},
		{"azuremonitor", `{"data":{"essentials":{"alertId":"a"}}}`, "schemaId"},
		{"azuremonitor", `{"schemaId":"azureMonitorCommonAlertSchema"}`, "data"},
		{"azuremonitor", `{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":[]}}`, "data.essentials"},
		{"azuremonitor", `{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"monitorCondition":"Fired"}}}`, "data.essentials.alertId"},
		{"azuremonitor", `{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"alertId":"a","configurationItems":"x","severity":true}}}`, "data.essentials.severity"},
		{"azuremonitor", `{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"alertId":"a"},"customProperties":{"machineId":1}}}`, "data.customProperties.machineId"},
		{"splunk", `{"result":{}}`, "sid"},
		{"splunk", `{"sid":"s","result":[]}`, "result"},
		{"splunk", `{"sid":"s","result":{"dest":{"a":1}}}`, "result.dest"},
		{"splunk", `{"sid":"s","result":{"severity":[]}}`, "result.severity"},
		{"elastic", `{"rule":{}}`, "alerts"},
		{"elastic", `{"alerts":{}}`, "alerts"},
		{"elastic", `{"alerts":[{"kibana.alert.severity":"high"}]}`, "alerts[0].kibana.alert.uuid"},
		{"elastic", `{"alerts":[{"kibana":{"alert":{"uuid":"u"}},"host":{"name":3}}]}`, "alerts[0].host.name"},
		{"elastic", `[{"kibana.alert.uuid":"u"},{"kibana":{"alert":{"uuid":5}}}]`, "body[1].kibana.alert.uuid"},
		{"elastic", `{"rule":"x","alerts":[]}`, "rule"},
		{"alertmanager", `{"version":"3","alerts":[]}`, "version"},
		{"alertmanager", `{"version":"4","status":"firing"}`, "alerts"},
		{"alertmanager", `{"version":"4","alerts":[{"labels":[]}]}`, "alerts[0].labels"},
		{"alertmanager", `{"version":"4","alerts":[{"labels":{"a":"b"}},{"labels":{"a":1}}]}`, "alerts[1].labels.a"},
		{"alertmanager", `{"version":"4","alerts":[{"annotations":{}}]}`, "alerts[0].labels"},
		{"alertmanager", `{"version":"4","alerts":[{"labels":{"a":"b"},"status":7}]}`, "alerts[0].status"},
		{"alertmanager", `{"version":"4","alerts":[{"labels":{"a":"b"},"fingerprint":["x"]}]}`, "alerts[0].fingerprint"},
		{"alertmanager", `"x"`, "body"},
	}
	for _, c := range cases {
		t.Run(c.source+" "+c.body, func(t *testing.T) {
			got, err := Decode(c.source, []byte(c.body), Options{})
			if err == nil {
				t.Fatalf("no error, got %+v", got)
			}
			wantFieldError(t, err, c.field)
		})
	}
}

func TestKeysInPathsAreCleaned(t *testing.T) {
	key := "we\x1bird key " + strings.Repeat("k", 200)
	body, _ := json.Marshal(map[string]any{"alerts": []any{map[string]any{"labels": map[string]any{key: 1}}}, "version": "4"})
	_, err := Decode("alertmanager", body, Options{})
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("got %v", err)
	}
	if strings.ContainsRune(fe.Field, 0x1b) || len(fe.Field) > 120 || !strings.HasPrefix(fe.Field, `alerts[0].labels["weird key`) {
		t.Errorf("field %q: want the key quoted, cleaned and capped", fe.Field)
	}
}

func TestEmptyListsAreNotErrors(t *testing.T) {
	for _, c := range []struct{ source, body string }{
		{"defender", `{"value":[]}`},
		{"graph", `{"value":[]}`},
		{"elastic", `{"rule":{"name":"r"},"alerts":[]}`},
		{"alertmanager", `{"version":"4","alerts":[]}`},
		{"alertmanager", `[]`},
	} {
		got, err := Decode(c.source, []byte(c.body), Options{})
		if err != nil || len(got) != 0 || got == nil {
			t.Errorf("%s %s: got %v, %v; want an empty, non-nil list", c.source, c.body, got, err)
		}
	}
}

func TestSeverityTables(t *testing.T) {
	cases := []struct {
		source, word string
		want         domain.Severity
	}{
		{"defender", "UnSpecified", domain.SeverityInformational}, {"defender", "informational", domain.SeverityInformational},
		{"defender", "LOW", domain.SeverityLow}, {"defender", "Medium", domain.SeverityMedium}, {"defender", "High", domain.SeverityHigh},
		{"defender", "critical", domain.SeverityCritical}, {"defender", "bogus", domain.SeverityInformational}, {"defender", "", domain.SeverityInformational},
		{"graph", "unknown", domain.SeverityInformational}, {"graph", "informational", domain.SeverityInformational}, {"graph", "low", domain.SeverityLow},
		{"graph", "medium", domain.SeverityMedium}, {"graph", "high", domain.SeverityHigh}, {"graph", "unknownFutureValue", domain.SeverityInformational},
		{"sentinel", "Informational", domain.SeverityInformational}, {"sentinel", "Low", domain.SeverityLow}, {"sentinel", "Medium", domain.SeverityMedium}, {"sentinel", "High", domain.SeverityHigh},
		{"azuremonitor", "Sev0", domain.SeverityCritical}, {"azuremonitor", "sev1", domain.SeverityHigh}, {"azuremonitor", "Sev2", domain.SeverityMedium},
		{"azuremonitor", "Sev3", domain.SeverityLow}, {"azuremonitor", "Sev4", domain.SeverityInformational}, {"azuremonitor", "Sev9", domain.SeverityInformational},
		{"elastic", "low", domain.SeverityLow}, {"elastic", "medium", domain.SeverityMedium}, {"elastic", "high", domain.SeverityHigh}, {"elastic", "critical", domain.SeverityCritical},
		{"splunk", "info", domain.SeverityInformational}, {"splunk", "1", domain.SeverityInformational}, {"splunk", "2", domain.SeverityLow}, {"splunk", "3", domain.SeverityMedium},
		{"splunk", "4", domain.SeverityHigh}, {"splunk", "5", domain.SeverityCritical}, {"splunk", "Critical", domain.SeverityCritical}, {"splunk", "6", domain.SeverityInformational},
		{"alertmanager", "warning", domain.SeverityMedium}, {"alertmanager", "critical", domain.SeverityCritical}, {"alertmanager", "error", domain.SeverityHigh},
		{"alertmanager", "info", domain.SeverityInformational}, {"alertmanager", "page", domain.SeverityCritical}, {"alertmanager", "whatever", domain.SeverityInformational},
	}
	for _, c := range cases {
		body := severityBody(c.source, c.word)
		got, err := Decode(c.source, body, Options{})
		if err != nil {
			t.Errorf("%s %q: %v", c.source, c.word, err)
			continue
		}
		if got[0].Severity != c.want {
			t.Errorf("%s %q: severity %q, want %q", c.source, c.word, got[0].Severity, c.want)
		}
	}
	// Splunk: a numeric JSON value, and urgency when severity is absent.
	got, _ := Decode("splunk", []byte(`{"sid":"s","result":{"severity":4}}`), Options{})
	if got[0].Severity != domain.SeverityHigh {
		t.Errorf("splunk numeric 4: %q", got[0].Severity)
	}
	got, _ = Decode("splunk", []byte(`{"sid":"s","result":{"urgency":"critical"}}`), Options{})
	if got[0].Severity != domain.SeverityCritical {
		t.Errorf("splunk urgency: %q", got[0].Severity)
	}
}

func severityBody(source, word string) []byte {
	w, _ := json.Marshal(word)
	s := string(w)
	switch source {
	case "defender", "graph":
		return []byte(`{"id":"a","severity":` + s + `}`)
	case "sentinel":
		return []byte(`{"object":{"id":"a","properties":{"severity":` + s + `}}}`)
	case "azuremonitor":
		return []byte(`{"schemaId":"azureMonitorCommonAlertSchema","data":{"essentials":{"alertId":"a","monitorCondition":"Fired","severity":` + s + `}}}`)
	case "elastic":
		return []byte(`{"alerts":[{"kibana.alert.uuid":"a","kibana.alert.severity":` + s + `}]}`)
	case "splunk":
		return []byte(`{"sid":"a","result":{"severity":` + s + `}}`)
	case "alertmanager":
		return []byte(`{"version":"4","status":"firing","alerts":[{"labels":{"severity":` + s + `},"fingerprint":"f"}]}`)
	}
	return nil
}

func TestSourcesAndErrors(t *testing.T) {
	want := []string{"defender", "graph", "sentinel", "azuremonitor", "splunk", "elastic", "alertmanager", "generic"}
	if got := domain.Sources(); !slices.Equal(got, want) {
		t.Errorf("Sources() = %v, want %v", got, want)
	}
	domain.Sources()[0] = "changed"
	if domain.Sources()[0] != "defender" {
		t.Error("Sources() shares its slice")
	}
	if _, err := Decode("nope", []byte(`{}`), Options{}); !errors.Is(err, ErrUnknownSource) {
		t.Errorf("unknown source: %v", err)
	}
	_, err := Decode("generic", []byte(`{"id":"a"}`), Options{})
	if !errors.Is(err, ErrNoMapping) || !strings.Contains(err.Error(), "no mapping") {
		t.Errorf("generic without mapping: %v", err)
	}
	_, err = Decode("generic", []byte(`{"id":"a"}`), Options{Generic: &GenericMapping{}})
	if err == nil || !strings.Contains(err.Error(), "id: required") {
		t.Errorf("generic with an invalid mapping: %v", err)
	}
}

func TestValidMachineID(t *testing.T) {
	cases := map[string]bool{
		"95ffd3240bde37ef347cf836db74b13f85cbf185":  true,
		"95FFD3240BDE37EF347CF836DB74B13F85CBF185":  true,
		"95ffd3240bde37ef347cf836db74b13f85cbf18":   false,
		"95ffd3240bde37ef347cf836db74b13f85cbf1850": false,
		"95ffd3240bde37ef347cf836db74b13f85cbf18g":  false,
		"../x": false, "abc' or 1 eq 1": false, "": false,
		"95ffd3240bde37ef347cf836db74b13f85cbf18 ": false,
		"95ffd3240bde37ef347cf836db74b13f85cb/185": false,
	}
	for s, want := range cases {
		if got := ValidMachineID(s); got != want {
			t.Errorf("ValidMachineID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestValidDNSName(t *testing.T) {
	cases := map[string]bool{
		"host": true, "HOST-1.Corp.Example.com": true, "host.corp.example.com.": true,
		"a." + strings.Repeat("b", 63): true, "a." + strings.Repeat("b", 64): false,
		strings.Repeat("a.", 126) + "a": true, strings.Repeat("a.", 126) + "ab": false, // 253 vs 254
		strings.Repeat("a.", 126) + "a.": true,
		"":                               false, ".": false, "host..corp": false, ".host": false, "-host": false, "host-": false,
		"ho_st": false, "my host": false, "host'name": false, `"quoted"`: false, "a/b": false,
		"../x": false, "host:9100": false, "10.0.0.5": false, "1234": false, "1host.example.com": true,
		"host\n": false, "hóst": false, "abc' or 1 eq 1": false, "x.y-": false, "x.1a": true,
	}
	for s, want := range cases {
		if got := ValidDNSName(s); got != want {
			t.Errorf("ValidDNSName(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestDeviceDedup(t *testing.T) {
	var ds deviceSet
	ds.add("", "Host.Example.com", "")
	ds.add("ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD", "host.example.com.", "0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9")
	ds.add("abcdefabcdefabcdefabcdefabcdefabcdefabcd", "", "")
	ds.add("1111111111111111111111111111111111111111", "host.example.com", "") // same name, other id: another device
	ds.add("", "host.example.com", "")
	ds.add("", "", "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9") // the first device's AAD id: the same device
	ds.add("", "", "")
	ds.add("", "", "FFFFFFFF-4E5F-6071-8293-A4B5C6D7E8F9") // known only by its AAD id: the dispatcher looks it up
	ds.add("", "", "ffffffff-4e5f-6071-8293-a4b5c6d7e8f9")
	ds.add("", "", "not-a-guid")
	want := []Device{
		{ID: "abcdefabcdefabcdefabcdefabcdefabcdefabcd", DNSName: "host.example.com", AADDeviceID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"},
		{ID: "1111111111111111111111111111111111111111", DNSName: "host.example.com"},
		{AADDeviceID: "ffffffff-4e5f-6071-8293-a4b5c6d7e8f9"},
	}
	if !slices.Equal(ds.devices, want) {
		t.Errorf("devices\n got %+v\nwant %+v", ds.devices, want)
	}
	if len(ds.dropped) != 1 || ds.dropped[0].Value != "not-a-guid" || !strings.Contains(ds.dropped[0].Reason, "Azure AD device id is not a GUID") {
		t.Errorf("dropped %+v", ds.dropped)
	}
	if k := ds.devices[2].Key(); k != "aad:ffffffff-4e5f-6071-8293-a4b5c6d7e8f9" {
		t.Errorf("Key of an AAD-only device = %q", k)
	}
}

func TestStripPort(t *testing.T) {
	for in, want := range map[string]string{"web-1:9100": "web-1", "web-1": "web-1", "web-1:": "web-1:", "a:b": "a:b", "[::1]:80": "[::1]"} {
		if got := stripPort(in); got != want {
			t.Errorf("stripPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAlertmanagerIDs(t *testing.T) {
	// Without a fingerprint the id is the label hash, whatever the key order.
	a, _ := Decode("alertmanager", []byte(`[{"labels":{"a":"1","b":"2"}}]`), Options{})
	b, _ := Decode("alertmanager", []byte(`[{"labels":{"b":"2","a":"1"}}]`), Options{})
	c, _ := Decode("alertmanager", []byte(`[{"labels":{"a":"12","b":""}}]`), Options{})
	if a[0].ID != b[0].ID || a[0].ID == c[0].ID || !strings.HasPrefix(a[0].ID, "labels-") {
		t.Errorf("label hash ids: %q %q %q", a[0].ID, b[0].ID, c[0].ID)
	}
	// A bare array has no status: taken as firing.
	if a[0].Skip != "" {
		t.Errorf("skip %q", a[0].Skip)
	}
	// A new firing episode is a new alert.
	x, _ := Decode("alertmanager", []byte(`[{"labels":{"a":"1"},"fingerprint":"f","startsAt":"2024-01-01T00:00:00Z"}]`), Options{})
	y, _ := Decode("alertmanager", []byte(`[{"labels":{"a":"1"},"fingerprint":"f","startsAt":"2024-02-01T00:00:00Z"}]`), Options{})
	if x[0].ID == y[0].ID {
		t.Error("two firing episodes share an id")
	}
}

func TestAlertmanagerOptionsValidate(t *testing.T) {
	if err := (AlertmanagerOptions{}).Validate(); err != nil {
		t.Errorf("zero value: %v", err)
	}
	if err := (AlertmanagerOptions{DeviceIDLabels: []string{"machine_id"}, DNSNameLabels: []string{"instance"}, SeverityLabel: "sev"}).Validate(); err != nil {
		t.Errorf("valid: %v", err)
	}
	err := AlertmanagerOptions{DeviceIDLabels: []string{"bad-name"}, DNSNameLabels: []string{"1x"}, SeverityLabel: "a b"}.Validate()
	for _, f := range []string{"device_id_labels", "dns_name_labels", "severity_label"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("want an error naming %s, got %v", f, err)
		}
	}
}

func TestCaseInsensitiveKeysAreDeterministic(t *testing.T) {
	body := []byte(`{"SystemAlertId":"a","Entities":[{"Type":"host","hostname":"b-host","HOSTNAME":"a-host","HostName":null}]}`)
	for range 20 {
		got, err := Decode("sentinel", body, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if d := got[0].Devices; len(d) != 1 || d[0].DNSName != "a-host" {
			t.Fatalf("devices %+v: want the smallest key (HOSTNAME) every time", d)
		}
	}
}
