package alert

import (
	"errors"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

// fuzzDecode checks the invariants every decoder keeps on any input: no
// panic, an error or alerts but not both, and only checked devices.
func fuzzDecode(t *testing.T, source string, body []byte, opts Options) {
	alerts, err := Decode(source, body, opts)
	if err != nil {
		var fe *FieldError
		if !errors.As(err, &fe) && !errors.Is(err, ErrNoMapping) {
			t.Fatalf("error is not a *FieldError: %v", err)
		}
		if alerts != nil {
			t.Fatalf("alerts returned with an error")
		}
		if fe != nil && (fe.Field == "" || strings.ContainsFunc(fe.Field, isControl)) {
			t.Fatalf("bad FieldError field %q", fe.Field)
		}
		return
	}
	if len(alerts) > MaxAlertsPerBody {
		t.Fatalf("%d alerts", len(alerts))
	}
	for _, a := range alerts {
		if a.ID == "" || len(a.ID) > MaxIDLen || strings.ContainsFunc(a.ID, isControl) {
			t.Fatalf("bad id %q", a.ID)
		}
		if a.Source != source || !a.Severity.Valid() {
			t.Fatalf("bad source/severity %q %q", a.Source, a.Severity)
		}
		if len(a.Title) > MaxTitleLen || len(a.Description) > MaxDescriptionLen || len(a.URL) > MaxURLLen {
			t.Fatalf("uncapped text")
		}
		if len(a.Devices) > MaxDevicesPerAlert || len(a.Dropped) > MaxDroppedPerAlert+1 {
			t.Fatalf("uncapped devices: %d, %d", len(a.Devices), len(a.Dropped))
		}
		for _, d := range a.Devices {
			if d.ID == "" && d.DNSName == "" && d.AADDeviceID == "" {
				t.Fatalf("empty device")
			}
			if d.ID != "" && (!ValidMachineID(d.ID) || d.ID != strings.ToLower(d.ID)) {
				t.Fatalf("device id %q", d.ID)
			}
			if d.DNSName != "" && (!ValidDNSName(d.DNSName) || d.DNSName != strings.ToLower(d.DNSName)) {
				t.Fatalf("device name %q", d.DNSName)
			}
			if d.AADDeviceID != "" && !validGUID(d.AADDeviceID) {
				t.Fatalf("aad id %q", d.AADDeviceID)
			}
		}
		for _, d := range a.Dropped {
			if strings.ContainsFunc(d.Value, isControl) || len(d.Value) > maxDroppedValueLen+len("…") {
				t.Fatalf("dropped value %q", d.Value)
			}
		}
	}
}

func FuzzDecodeDefender(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceDefender, body, Options{}) })
}

func FuzzDecodeGraph(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceGraph, body, Options{}) })
}

func FuzzDecodeSentinel(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceSentinel, body, Options{}) })
}

func FuzzDecodeAzureMonitor(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceAzureMonitor, body, Options{}) })
}

func FuzzDecodeSplunk(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceSplunk, body, Options{}) })
}

func FuzzDecodeElastic(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceElastic, body, Options{}) })
}

func FuzzDecodeAlertmanager(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) { fuzzDecode(t, domain.SourceAlertmanager, body, Options{}) })
}

// FuzzDecodeGeneric fuzzes the body and one mapped path (the device list's
// DNS name), so that path parsing and lookup meet hostile shapes too.
func FuzzDecodeGeneric(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte, path string) {
		m := &GenericMapping{
			Alerts: "items", ID: "id", Severity: "sev", Title: "title", Tags: "tags", URL: "$.link",
			DeviceID: "dev.id", DNSName: "dev.name",
			Devices:  &GenericDevices{Path: "hosts", DeviceID: "id", DNSName: "name"},
			SkipWhen: &GenericSkip{Path: "state", Values: []string{"resolved"}},
		}
		if _, _, err := parsePath(path); err == nil {
			m.Devices.DNSName = path
		}
		fuzzDecode(t, domain.SourceGeneric, body, Options{Generic: m})
		fuzzDecode(t, domain.SourceGeneric, body, Options{Generic: &GenericMapping{ID: "id", DNSName: "host"}})
	})
}
