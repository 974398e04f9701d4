package rules

import (
	"fmt"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
)

// celAlertTwoDevices has every field set and two devices that differ in
// which of their own fields are set.
func celAlertTwoDevices() *alert.Alert {
	a := sampleAlert()
	a.Devices = []alert.Device{
		{ID: idA, DNSName: "ws-01.corp.example"},
		{DNSName: "ws-02.corp.example", AADDeviceID: "aad-2"},
	}
	return a
}

// celAlertBare has an unrecognized severity, no lists and one device.
func celAlertBare() *alert.Alert {
	return &alert.Alert{
		ID: "b1", Source: "generic", Severity: domain.Severity("sev9"),
		Devices: []alert.Device{{ID: idB}},
	}
}

// whenOutcomes evaluates a one-rule file whose rule is `when: expr` and
// says per device "T" (matched), "F" (not matched) or "E: <CEL error>",
// or "LOAD" once when `rules check` would refuse the expression.
func whenOutcomes(t *testing.T, expr string, a *alert.Alert) []string {
	t.Helper()
	rs, err := Load("t.yaml", []byte("rules:\n  - name: r\n    when: |-\n      "+expr+"\n    scan: Quick\n"), Options{})
	if err != nil {
		if !strings.Contains(err.Error(), "when: ") {
			t.Fatalf("load %s: %v", expr, err)
		}
		return []string{"LOAD"}
	}
	var out []string
	for _, d := range rs.Evaluate(a) {
		switch {
		case d.Rule == "r":
			out = append(out, "T")
		case strings.Contains(d.Reason, "when failed: "):
			_, msg, _ := strings.Cut(d.Reason, "when failed: ")
			out = append(out, "E: "+strings.TrimSuffix(msg, ")"))
		default:
			out = append(out, "F")
		}
	}
	return out
}

// TestCELSemantics pins what `when` expressions see: field access, list
// macros, `in`, size(), severity_rank, the string extensions, devices
// iteration, presence tests, equality, construction and runtime errors. It
// was written against the reflection-based (ext.NativeTypes) values, so it
// proves the hand-written ones mean the same.
func TestCELSemantics(t *testing.T) {
	full, bare := celAlertTwoDevices(), celAlertBare()
	tests := []struct {
		name string
		expr string
		a    *alert.Alert
		want string // one outcome per device, comma-separated
	}{
		{"string fields", `alert.id == 'da1' && alert.source == 'defender' && alert.severity == 'high' && alert.title.contains('encrypted')`, full, "T,T"},
		{"more string fields", `alert.category == 'Ransomware' && alert.detection_source == 'WindowsDefenderAv' && alert.threat_family == 'LockBit' && alert.status == 'New' && alert.tenant_id == 'tenant-1' && alert.url.startsWith('https://security.') && alert.description == ''`, full, "T,T"},
		{"empty string fields", `alert.title == '' && alert.category == '' && alert.url == ''`, bare, "T"},
		{"severity_rank field and function", `alert.severity_rank == 3 && alert.severity_rank >= severity_rank('HIGH') && alert.severity_rank < severity_rank('critical')`, full, "T,T"},
		{"unknown severity ranks -1", `alert.severity_rank == -1 && severity_rank(alert.severity) == -1`, bare, "T"},
		{"severity_rank of names", `severity_rank('informational') == 0 && severity_rank('Medium') == 2 && severity_rank('nope') == -1`, bare, "T"},
		{"exists", `alert.tags.exists(t, t.lowerAscii() == 'crown-jewel')`, full, "T,T"},
		{"exists miss", `alert.tags.exists(t, t == 'crown-jewel')`, full, "F,F"},
		{"exists on absent list", `alert.tags.exists(t, true)`, bare, "F"},
		{"all", `alert.mitre_techniques.all(m, m.startsWith('T1'))`, full, "T,T"},
		{"all miss", `alert.mitre_techniques.all(m, m == 'T1059')`, full, "F,F"},
		{"all on absent list", `alert.mitre_techniques.all(m, false)`, bare, "T"},
		{"exists_one", `alert.tags.exists_one(t, t == 'finance')`, full, "T,T"},
		{"exists_one two", `alert.tags.exists_one(t, t.size() > 6)`, full, "F,F"},
		{"map", `alert.tags.map(t, t.upperAscii()) == ['FINANCE', 'CROWN-JEWEL']`, full, "T,T"},
		{"map with filter", `alert.mitre_techniques.map(m, m.endsWith('86'), m + '!') == ['T1486!']`, full, "T,T"},
		{"filter", `alert.mitre_techniques.filter(m, m.endsWith('59')) == ['T1059']`, full, "T,T"},
		{"list equality", `alert.tags == ['finance', 'Crown-Jewel'] && alert.tags != ['finance']`, full, "T,T"},
		{"absent list is empty", `alert.tags == [] && alert.mitre_techniques == []`, bare, "T"},
		{"in", `'finance' in alert.tags && !('hr' in alert.tags) && 'T1486' in alert.mitre_techniques`, full, "T,T"},
		{"in absent list", `'finance' in alert.tags`, bare, "F"},
		{"index", `alert.tags[1] == 'Crown-Jewel' && alert.mitre_techniques[0] == 'T1059'`, full, "T,T"},
		{"size", `size(alert.tags) == 2 && alert.mitre_techniques.size() == 2 && size(alert.devices) == 2 && size(alert.title) == 26`, full, "T,T"},
		{"size of absent list", `size(alert.tags) == 0 && size(alert.devices) == 1`, bare, "T"},
		{"concatenation", `alert.tags + alert.mitre_techniques == ['finance', 'Crown-Jewel', 'T1059', 'T1486'] && size(alert.tags + ['x']) == 3`, full, "T,T"},
		{"string extensions", `alert.tags.join(',') == 'finance,Crown-Jewel' && alert.title.split(' ')[0] == 'Ransomware' && alert.category.lowerAscii() == 'ransomware' && alert.title.replace('files', 'disks').endsWith('disks')`, full, "T,T"},
		{"device fields", `device.dns_name.endsWith('.corp.example') && device.id == '` + idA + `'`, full, "T,F"},
		{"device aad id", `device.aad_device_id == 'aad-2'`, full, "F,T"},
		{"devices exists", `alert.devices.exists(d, d.dns_name == 'ws-02.corp.example')`, full, "T,T"},
		{"devices all", `alert.devices.all(d, d.id != '')`, full, "F,F"},
		{"devices map", `alert.devices.map(d, d.dns_name) == ['ws-01.corp.example', 'ws-02.corp.example']`, full, "T,T"},
		{"devices filter", `alert.devices.filter(d, d.id == '').size() == 1`, full, "T,T"},
		{"devices index", `alert.devices[1].aad_device_id == 'aad-2' && alert.devices[0].id == '` + idA + `'`, full, "T,T"},
		{"device is one of devices", `alert.devices.exists(d, dyn(d) == dyn(device)) && alert.devices.exists_one(d, dyn(d) == dyn(device))`, full, "T,T"},
		{"device equality", `dyn(alert.devices[0]) == dyn(device) && dyn(device) == dyn(alert.devices[0])`, full, "T,F"},
		{"device inequality", `dyn(alert.devices[0]) != dyn(device)`, full, "F,T"},
		{"devices items and device differ in static type", `alert.devices[0] == device`, full, "LOAD"},
		{"devices item type name", `rules.celDevice{id: device.id, dns_name: device.dns_name} == alert.devices[0] && alert.devices[0] == rules.celDevice{id: device.id, dns_name: device.dns_name}`, full, "T,F"},
		{"devices list equality", `alert.devices == [rules.celDevice{id: device.id, dns_name: device.dns_name}]`, full, "F,F"},
		{"alert type is not named after Go", `type(alert) == rules.celAlert`, full, "LOAD"},
		{"alert equality", `alert == alert && !(alert != alert)`, full, "T,T"},
		{"presence of fields", `has(alert.tags) && has(alert.title) && !has(alert.description) && has(alert.devices) && has(alert.severity_rank)`, full, "T,T"},
		{"presence on bare alert", `has(alert.tags) && has(alert.mitre_techniques) && !has(alert.title) && has(alert.severity_rank)`, bare, "T"},
		{"presence of device fields", `has(device.id)`, full, "T,F"},
		{"presence through devices", `alert.devices.filter(d, has(d.aad_device_id)).size() == 1`, full, "T,T"},
		{"dyn field access", `dyn(alert).severity == 'high' && dyn(device).dns_name.startsWith('ws-') && dyn(alert).tags.exists(t, t == 'finance')`, full, "T,T"},
		{"dyn presence", `has(dyn(alert).title) && !has(dyn(alert).description)`, full, "T,T"},
		{"type", `type(alert) == scanhook.Alert && type(device) == scanhook.Device && type(alert.devices[0]) == type(device) && type(alert.tags) == list`, full, "T,T"},
		{"runtime type of devices items", `type(alert.devices[0]) == scanhook.Device && type(alert.devices[0]) != rules.celDevice && type(device) != rules.celDevice`, full, "T,T"},
		{"construct device", `scanhook.Device{id: device.id, dns_name: device.dns_name} == device`, full, "T,F"},
		{"construct device reversed", `device == scanhook.Device{id: device.id, dns_name: device.dns_name}`, full, "T,F"},
		{"constructed fields", `scanhook.Device{id: 'x'}.id == 'x' && scanhook.Device{id: 'x'}.dns_name == '' && !has(scanhook.Device{id: 'x'}.dns_name) && rules.celDevice{id: 'x'}.id == 'x'`, full, "T,T"},
		{"construct alert", `scanhook.Alert{tags: ['a'], severity_rank: 2}.tags == ['a'] && !has(scanhook.Alert{}.tags) && scanhook.Alert{severity_rank: 2}.severity_rank == 2 && !has(scanhook.Alert{severity_rank: 0}.severity_rank)`, full, "T,T"},
		{"constructed presence", `!has(scanhook.Alert{}.devices) && has(scanhook.Alert{devices: []}.devices) && has(scanhook.Alert{tags: []}.tags)`, full, "T,T"},
		{"constructed equality", `scanhook.Alert{tags: ['a']} == scanhook.Alert{tags: ['a']} && scanhook.Alert{tags: []} != scanhook.Alert{}`, full, "T,T"},
		{"construct alert with devices", `scanhook.Alert{devices: [rules.celDevice{id: 'a'}]}.devices[0].id == 'a' && scanhook.Alert{devices: alert.devices}.devices == alert.devices && size(scanhook.Alert{devices: alert.devices}.devices) == 2`, full, "T,T"},
		{"constructed alert is not alert", `scanhook.Alert{devices: alert.devices} == alert`, full, "F,F"},
		{"construct alert with wrong device type", `scanhook.Alert{devices: [device]}.devices[0].id == 'a'`, full, "LOAD"},
		{"unknown field", `alert.nope == 'x'`, full, "LOAD"},
		{"unknown device field", `device.name == 'x'`, full, "LOAD"},
		{"wrong field type", `alert.severity_rank == 'high'`, full, "LOAD"},
		{"presence of id", `has(alert.id) && has(alert.devices[0].id) && alert.devices[0].aad_device_id == ''`, full, "T,T"},
		{"string of rank", `string(alert.severity_rank) == '3'`, full, "T,T"},
		{"index out of range", `alert.tags[5] == 'x'`, full, "E: index out of bounds: 5,E: index out of bounds: 5"},
		{"device index out of range", `alert.devices[3].id == 'x'`, bare, "E: index out of bounds: 3"},
		{"error in macro", `alert.tags.exists(t, int(t) > 0)`, full, "E: type conversion error from 'string' to 'int',E: type conversion error from 'string' to 'int'"},
		{"dyn unknown field", `dyn(alert).nope == 'x'`, full, "E: no such field: nope,E: no such field: nope"},
		{"dyn unknown field presence", `has(dyn(alert).nope)`, bare, "E: no such field: nope"},
		{"dyn index by field name", `['title', 'id', 'severity_rank'].map(f, dyn(alert)[f]) == ['', 'b1', -1] && dyn(device)['id'] == device.id`, bare, "T"},
		{"dyn index by unknown name", `alert.tags.map(t, dyn(alert)[t]).size() > 0`, full, "E: no such field: finance,E: no such field: finance"},
		{"dyn index by number", `dyn(device)[1] == 'x'`, bare, "E: no such overload"},
		{"format lists", `'%s'.format([alert.tags]) == '[finance, Crown-Jewel]' && '%s'.format([alert.severity_rank]) == '3'`, full, "T,T"},
		{"format refuses devices", `'%s'.format([alert.devices]) == 'x'`, bare, "E: error during formatting: string clause can only be used on strings, bools, bytes, ints, doubles, maps, lists, types, durations, and timestamps, was given scanhook.Device"},
		{"format refuses device at load", `'%s'.format([device]) == 'x'`, bare, "LOAD"},
		{"no string of a device", `string(dyn(device)) == 'x'`, bare, "E: no such overload: string(scanhook.Device)"},
		{"devices in other containers", `[device].exists(d, d in [device]) && {'a': device}['a'] == device && [alert.devices[0]] == alert.devices.filter(d, has(d.id))`, full, "T,T"},
		{"alert is not a device", `dyn(alert) == dyn(device)`, full, "F,F"},
		{"bench expression", `alert.severity_rank >= 3 && alert.tags.exists(t, t == "finance") && device.dns_name.endsWith(".corp.example")`, full, "T,T"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(whenOutcomes(t, tt.expr, tt.a), ",")
			if got != tt.want {
				t.Errorf("%s:\n got  %q\n want %q", tt.expr, got, tt.want)
			}
		})
	}
}

// TestCELConcurrentEvaluate runs one rule set from several goroutines
// (under -race it proves the per-Evaluate caches are not shared, and that
// objects built by an expression, which cel-go may fold into a constant,
// are only read).
func TestCELConcurrentEvaluate(t *testing.T) {
	rs := mustLoad(t, `rules:
  - name: constant
    when: "scanhook.Device{id: 'x', dns_name: 'y'}.dns_name == device.dns_name && scanhook.Alert{tags: ['t']}.tags.exists(t, t in alert.tags)"
    scan: Full
  - name: fields
    when: "alert.tags.exists(t, t == 'finance') && alert.devices.exists(d, d.dns_name == device.dns_name) && has(device.id)"
    scan: Quick
`)
	done := make(chan string)
	for g := range 4 {
		go func() {
			for i := range 200 {
				a := celAlertTwoDevices()
				want := "fields," // the second device has no id
				if (g+i)%2 == 0 {
					a.Devices[1].DNSName = "y"
					a.Tags = append(a.Tags, "t")
					want = "fields,constant"
				}
				var got []string
				for _, d := range rs.Evaluate(a) {
					got = append(got, d.Rule)
				}
				if g := strings.Join(got, ","); g != want {
					done <- fmt.Sprintf("evaluation %d: got %s, want %s", i, g, want)
					return
				}
			}
			done <- ""
		}()
	}
	for range 4 {
		if msg := <-done; msg != "" {
			t.Error(msg)
		}
	}
}
