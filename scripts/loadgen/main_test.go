package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
)

func inventory(n int) []machine {
	var out []machine
	for _, m := range defendersim.GenerateMachines(n) {
		out = append(out, machine{ID: m.ID, ComputerDNSName: m.ComputerDNSName})
	}
	return out
}

func sample(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "samples", "mde-alert.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type target struct {
	Method string              `json:"method"`
	URL    string              `json:"url"`
	Header map[string][]string `json:"header"`
	Body   string              `json:"body"`
}

// Every target must be a request scanhook accepts as a new alert: the
// Defender decoder reads it, the id is unique, the device is one of the
// first -devices machines, and the severity follows -low-every.
func TestGenerateTargetsDecodeAsDistinctAlerts(t *testing.T) {
	ms := inventory(50)
	var out bytes.Buffer
	o := genOptions{url: "http://127.0.0.1:1/v1/webhooks/defender", token: "tok-0123456789abcdef",
		machines: ms, sample: sample(t), devices: 10, run: "t1", lowEvery: 4, count: 200, seed: 7}
	if err := generate(&out, o); err != nil {
		t.Fatal(err)
	}
	allowed := map[string]string{}
	for _, m := range ms[:10] {
		allowed[m.ID] = m.ComputerDNSName
	}
	seenIDs := map[string]bool{}
	seenDevices := map[string]bool{}
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		n++
		var tg target
		if err := json.Unmarshal(sc.Bytes(), &tg); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		if tg.Method != "POST" || tg.URL != o.url {
			t.Fatalf("line %d: %s %s", n, tg.Method, tg.URL)
		}
		if got := tg.Header["Authorization"]; len(got) != 1 || got[0] != "Bearer "+o.token {
			t.Fatalf("line %d: Authorization %q", n, got)
		}
		body, err := base64.StdEncoding.DecodeString(tg.Body)
		if err != nil {
			t.Fatalf("line %d: body: %v", n, err)
		}
		alerts, err := alert.Decode(domain.SourceDefender, body, alert.Options{})
		if err != nil {
			t.Fatalf("line %d: decode: %v", n, err)
		}
		if len(alerts) != 1 {
			t.Fatalf("line %d: %d alerts", n, len(alerts))
		}
		a := alerts[0]
		if want := "t1-" + strconv.Itoa(n); a.ID != want {
			t.Errorf("line %d: id %q, want %q", n, a.ID, want)
		}
		if seenIDs[a.ID] {
			t.Errorf("line %d: id %q repeated", n, a.ID)
		}
		seenIDs[a.ID] = true
		wantSev := domain.SeverityHigh
		if n%4 == 0 {
			wantSev = domain.SeverityLow
		}
		if a.Severity != wantSev {
			t.Errorf("line %d: severity %q, want %q", n, a.Severity, wantSev)
		}
		if len(a.Devices) != 1 {
			t.Fatalf("line %d: devices %+v", n, a.Devices)
		}
		d := a.Devices[0]
		if dns, ok := allowed[d.ID]; !ok || !strings.EqualFold(dns, d.DNSName) {
			t.Errorf("line %d: device %+v is not one of the first 10 machines", n, d)
		}
		seenDevices[d.ID] = true
		// The rest of the sample survives: the decoder sees the real payload.
		if a.Category != "Execution" || len(a.MitreTechniques) != 3 {
			t.Errorf("line %d: category %q techniques %v", n, a.Category, a.MitreTechniques)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 200 {
		t.Errorf("%d targets, want 200", n)
	}
	if len(seenDevices) != 10 {
		t.Errorf("200 alerts named %d devices, want all 10", len(seenDevices))
	}
}

func TestGenerateRejectsBadOptions(t *testing.T) {
	ms := inventory(3)
	for _, tc := range []struct {
		name string
		o    genOptions
		want string
	}{
		{"more devices than the inventory", genOptions{devices: 4}, "-devices"},
		{"no devices", genOptions{devices: 0}, "-devices"},
		{"negative low-every", genOptions{devices: 1, lowEvery: -1}, "-low-every"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.machines, tc.o.sample, tc.o.count = ms, sample(t), 1
			err := generate(&bytes.Buffer{}, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %s", err, tc.want)
			}
		})
	}
	if _, err := newTemplate([]byte("{not json")); err == nil {
		t.Error("a sample that is not JSON was accepted")
	}
}

func TestReadMachinesNeedsAnInventory(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.json")
	if err := os.WriteFile(empty, []byte(`{"value":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readMachines(empty); err == nil || !strings.Contains(err.Error(), "value") {
		t.Errorf("empty inventory: %v", err)
	}
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, []byte(`{"value":[{"id":"`+strings.Repeat("a", 40)+`","computerDnsName":"ws-1.contoso.com","osPlatform":"Windows11"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ms, err := readMachines(good)
	if err != nil || len(ms) != 1 || ms[0].ComputerDNSName != "ws-1.contoso.com" {
		t.Errorf("got %+v, %v", ms, err)
	}
}

func TestFreePortIsBindable(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"port"}, &out, &bytes.Buffer{}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	port := strings.TrimSpace(out.String())
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatalf("port %q: %v", port, err)
	}
	ln.Close()
	var stderr bytes.Buffer
	if code := run([]string{"nope"}, &bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "nope") {
		t.Errorf("unknown command: exit %d, %q", code, stderr.String())
	}
}
