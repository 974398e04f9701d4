package defender

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
)

// TestFindMachinesByIP: machines seen with the address near the timestamp,
// through the MachineIPReads family, with the URL Defender documents.
func TestFindMachinesByIP(t *testing.T) {
	now := time.Now().UTC()
	ms := defendersim.GenerateMachines(3)
	ms[0].IPHistory = []defendersim.IPSeen{{IP: "10.7.0.1", At: now.Add(-time.Hour)}}
	ms[1].IPHistory = []defendersim.IPSeen{{IP: "10.7.0.2", At: now.Add(-time.Hour)}}
	ms[2].IPHistory = []defendersim.IPSeen{{IP: "10.7.0.2", At: now.Add(-time.Hour - 10*time.Minute)}}
	lim := &familyLimiter{}
	e := newEnv(t, defendersim.Options{Machines: ms}, func(_ *Config, d *Deps) { d.Limiter = lim })
	ctx := ctxT(t)
	at := now.Add(-time.Hour + 5*time.Minute)
	got, err := e.client.FindMachinesByIP(ctx, "10.7.0.1", at)
	if err != nil || len(got) != 1 || got[0].ID != ms[0].ID {
		t.Fatalf("10.7.0.1: %+v %v", got, err)
	}
	got, err = e.client.FindMachinesByIP(ctx, "10.7.0.2", at)
	if err != nil || len(got) != 2 {
		t.Fatalf("10.7.0.2: %+v %v", got, err)
	}
	got, err = e.client.FindMachinesByIP(ctx, "10.7.0.3", at)
	if err != nil || len(got) != 0 {
		t.Fatalf("10.7.0.3: %+v %v", got, err)
	}
	// A time after now is asked as now.
	if _, err := e.client.FindMachinesByIP(ctx, "10.7.0.3", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if f := lim.seen(); len(f) != 4 || slices.ContainsFunc(f, func(f Family) bool { return f != MachineIPReads }) {
		t.Errorf("families %v", f)
	}
	var paths []string
	for _, r := range e.sim.Requests() {
		if strings.HasPrefix(r.Path, "/api/machines/") {
			paths = append(paths, r.Path)
		}
	}
	want := "/api/machines/findbyip(ip='10.7.0.1',timestamp=" + at.Truncate(time.Second).Format(time.RFC3339) + ")"
	if len(paths) != 4 || paths[0] != want {
		t.Errorf("paths %q, want first %q", paths, want)
	}
}

// TestFindMachinesByIPInvalidNeverSent: anything but an internal address in
// canonical form, or a timestamp past 30 days, never reaches Defender.
func TestFindMachinesByIPInvalidNeverSent(t *testing.T) {
	e := newEnv(t, defendersim.Options{}, nil)
	ctx := ctxT(t)
	for _, ip := range []string{"", "x", "8.8.8.8", "127.0.0.1", "169.254.0.1", "fe80::1", "::1", "0.0.0.0",
		"10.0.0.1',timestamp=x)", "10.0.0.1/8", " 10.0.0.1", "010.0.0.1", "::ffff:10.0.0.1", "fe80::1%eth0", "10.0.0.1\n"} {
		if _, err := e.client.FindMachinesByIP(ctx, ip, time.Now()); !wantKind(t, err, Invalid).NotSent {
			t.Errorf("%q: %v", ip, err)
		}
	}
	if _, err := e.client.FindMachinesByIP(ctx, "10.0.0.1", time.Now().Add(-31*24*time.Hour)); !wantKind(t, err, Invalid).NotSent {
		t.Errorf("old timestamp: %v", err)
	}
	if n := len(e.sim.Requests()); n != 0 {
		t.Errorf("%d requests reached the simulator", n)
	}
}
