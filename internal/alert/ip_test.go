package alert

import (
	"slices"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

func TestValidInternalIP(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"10.1.2.3", true}, {"172.16.0.9", true}, {"192.168.1.1", true}, {"100.64.3.4", true}, {"fd12:3456::1", true},
		{"8.8.8.8", false}, {"127.0.0.1", false}, {"169.254.1.1", false}, {"fe80::1", false}, {"::1", false},
		{"0.0.0.0", false}, {"224.0.0.1", false}, {"2001:db8::1", false}, {"010.1.2.3", false}, {"10.1.2.3 ", false},
		{"fd12:3456:0::1", false}, {"fe80::1%eth0", false}, {"", false}, {"10.1.2.3/8", false}, {"::ffff:10.1.2.3", false},
	} {
		if got := ValidInternalIP(tc.ip); got != tc.want {
			t.Errorf("ValidInternalIP(%q) = %v, want %v", tc.ip, got, tc.want)
		}
	}
}

// TestGenericIP: an alert naming its device only by IP gets an IP device
// (canonical form), a public or loopback address is dropped with the
// reason, and an IP is not used when the alert names the device otherwise.
func TestGenericIP(t *testing.T) {
	opts := Options{Generic: &GenericMapping{Alerts: "items", ID: "id", IP: "ip", DNSName: "host"}}
	body := `{"items":[{"id":"1","ip":"::ffff:10.1.2.3"},{"id":"2","ip":["8.8.8.8","127.0.0.1","192.168.0.7"]},{"id":"3","ip":"10.0.0.1","host":"pc-1"}]}`
	alerts, err := Decode(domain.SourceGeneric, []byte(body), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(alerts[0].Devices, []Device{{IP: "10.1.2.3"}}) || alerts[0].Devices[0].Key() != "ip:10.1.2.3" {
		t.Errorf("alert 1: %+v", alerts[0].Devices)
	}
	if !slices.Equal(alerts[1].Devices, []Device{{IP: "192.168.0.7"}}) || len(alerts[1].Dropped) != 2 {
		t.Errorf("alert 2: %+v dropped %+v", alerts[1].Devices, alerts[1].Dropped)
	}
	if !slices.Equal(alerts[2].Devices, []Device{{DNSName: "pc-1"}}) {
		t.Errorf("alert 3: %+v", alerts[2].Devices)
	}
}

// TestGenericAADOnly: a generic alert naming its device only by an Entra ID
// device id (no id or DNS name path value) keeps it.
func TestGenericAADOnly(t *testing.T) {
	opts := Options{Generic: &GenericMapping{Alerts: "items", ID: "id", DNSName: "host", AADDeviceID: "aad"}}
	body := `{"items":[{"id":"1","aad":"0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9"}]}`
	alerts, err := Decode(domain.SourceGeneric, []byte(body), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(alerts[0].Devices, []Device{{AADDeviceID: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"}}) {
		t.Errorf("devices %+v dropped %+v", alerts[0].Devices, alerts[0].Dropped)
	}
}
