package dispatch

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/internal/testutil"
)

// lookups are the machine lookups the simulator received, in order, as
// "filter <the $filter>" or "get <id or name>".
func lookups(t testing.TB, sim *defendersim.Server) []string {
	t.Helper()
	var out []string
	for _, r := range apiRequests(sim, http.MethodGet, "/api/machines") {
		switch r.Path {
		case "/api/machines":
			q, err := url.ParseQuery(strings.ReplaceAll(r.RawQuery, "+", "%2B"))
			if err != nil {
				t.Fatalf("query %q: %v", r.RawQuery, err)
			}
			out = append(out, "filter "+q.Get("$filter"))
		default:
			out = append(out, "get "+strings.TrimPrefix(r.Path, "/api/machines/"))
		}
	}
	return out
}

// resolveCounts reads scanhook_dispatch_resolves_total by result.
func resolveCounts(t testing.TB, e *env) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range []string{"found", "not_found", "cache_hit", "cache_negative", "error"} {
		if v := counter(t, e.reg, "scanhook_dispatch_resolves_total", map[string]string{"result": r}); v != 0 {
			out[r] = v
		}
	}
	return out
}

func sameCounts(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestResolveByAADAndComputerName: a device without a usable machine id is
// found by DNS name, by bare computer name through GET /api/machines/{name},
// or by Entra ID device id, and scanned on the right machine; a second job
// for the device is resolved from the cache, found or not.
func TestResolveByAADAndComputerName(t *testing.T) {
	ms := defendersim.GenerateMachines(4) // ws-001 … ws-003, srv-004.contoso.com
	// The same computer name in two domains: GET by name cannot tell.
	twins := append(defendersim.GenerateMachines(2),
		defendersim.Machine{ID: strings.Repeat("d1", 20), ComputerDNSName: "twin.contoso.com", AADDeviceID: "dddddddd-0000-4000-8000-000000000001"},
		defendersim.Machine{ID: strings.Repeat("d2", 20), ComputerDNSName: "twin.fabrikam.com", AADDeviceID: "dddddddd-0000-4000-8000-000000000002"})
	const unknownAAD = "99999999-9999-4999-8999-999999999999"
	f := func(filter string) string { return "filter " + filter }

	cases := []struct {
		name    string
		sim     []defendersim.Machine // nil: ms
		dev     alert.Device
		want    string   // machine id scanned; "" : dead
		lookups []string // the first job's lookups, in order
		counts  map[string]float64
		// second: the resolves of the second job for the device, which
		// makes no lookup at all.
		second  map[string]float64
		wantErr []string // in the dead job's last error
	}{
		{
			name:    "AAD device id only",
			dev:     alert.Device{AADDeviceID: ms[1].AADDeviceID},
			want:    ms[1].ID,
			lookups: []string{f("aadDeviceId eq '" + ms[1].AADDeviceID + "'")},
			counts:  map[string]float64{"found": 1},
			second:  map[string]float64{"cache_hit": 1},
		},
		{
			name:    "AAD device id in upper case",
			dev:     alert.Device{AADDeviceID: strings.ToUpper(ms[3].AADDeviceID)},
			want:    ms[3].ID,
			lookups: []string{f("aadDeviceId eq '" + ms[3].AADDeviceID + "'")},
			counts:  map[string]float64{"found": 1},
			second:  map[string]float64{"cache_hit": 1},
		},
		{
			name: "machine id not 40 hex, AAD device id known",
			dev:  alert.Device{ID: "MDE-7", AADDeviceID: ms[0].AADDeviceID},
			want: ms[0].ID, lookups: []string{f("aadDeviceId eq '" + ms[0].AADDeviceID + "'")},
			counts: map[string]float64{"found": 1},
			second: map[string]float64{"cache_hit": 1},
		},
		{
			name: "DNS name unknown, AAD device id known",
			dev:  alert.Device{DNSName: "old-name.contoso.com", AADDeviceID: ms[2].AADDeviceID},
			want: ms[2].ID,
			lookups: []string{
				f("computerDnsName eq 'old-name.contoso.com'"),
				f("aadDeviceId eq '" + ms[2].AADDeviceID + "'"),
			},
			counts: map[string]float64{"not_found": 1, "found": 1},
			second: map[string]float64{"cache_negative": 1, "cache_hit": 1},
		},
		{
			name: "DNS name known: AAD device id not needed",
			dev:  alert.Device{DNSName: ms[2].ComputerDNSName, AADDeviceID: ms[2].AADDeviceID},
			want: ms[2].ID, lookups: []string{f("computerDnsName eq '" + ms[2].ComputerDNSName + "'")},
			counts: map[string]float64{"found": 1},
			second: map[string]float64{"cache_hit": 1},
		},
		{
			name:    "bare computer name",
			dev:     alert.Device{DNSName: "WS-002"},
			want:    ms[1].ID,
			lookups: []string{f("computerDnsName eq 'WS-002'"), "get WS-002"},
			counts:  map[string]float64{"found": 1},
			second:  map[string]float64{"cache_hit": 1},
		},
		{
			name: "bare computer name unknown, AAD device id known",
			dev:  alert.Device{DNSName: "ghost", AADDeviceID: ms[0].AADDeviceID},
			want: ms[0].ID,
			lookups: []string{
				f("computerDnsName eq 'ghost'"), "get ghost",
				f("aadDeviceId eq '" + ms[0].AADDeviceID + "'"),
			},
			counts: map[string]float64{"not_found": 1, "found": 1},
			second: map[string]float64{"cache_negative": 1, "cache_hit": 1},
		},
		{
			name: "unknown everything",
			dev:  alert.Device{DNSName: "ghost", AADDeviceID: unknownAAD},
			lookups: []string{
				f("computerDnsName eq 'ghost'"), "get ghost",
				f("aadDeviceId eq '" + unknownAAD + "'"),
			},
			counts: map[string]float64{"not_found": 2},
			second: map[string]float64{"cache_negative": 2},
			wantErr: []string{
				`no Defender machine named "ghost"`, "tried computerDnsName and the computer name", "HTTP 404 ResourceNotFound",
				`no Defender machine with AAD device id "` + unknownAAD + `"`,
			},
		},
		{
			name:    "unknown AAD device id only",
			dev:     alert.Device{AADDeviceID: unknownAAD},
			lookups: []string{f("aadDeviceId eq '" + unknownAAD + "'")},
			counts:  map[string]float64{"not_found": 1},
			second:  map[string]float64{"cache_negative": 1},
			wantErr: []string{`no Defender machine with AAD device id "` + unknownAAD + `"`, "no Defender machine id or DNS name"},
		},
		{
			name:    "unknown FQDN: no GET by name",
			dev:     alert.Device{DNSName: "ghost.contoso.com"},
			lookups: []string{f("computerDnsName eq 'ghost.contoso.com'")},
			counts:  map[string]float64{"not_found": 1},
			second:  map[string]float64{"cache_negative": 1},
			wantErr: []string{`no Defender machine named "ghost.contoso.com"`, "no machine has computerDnsName"},
		},
		{
			name:    "computer name in two domains is not guessed",
			sim:     twins,
			dev:     alert.Device{DNSName: "twin"},
			lookups: []string{f("computerDnsName eq 'twin'"), "get twin"},
			counts:  map[string]float64{"not_found": 1},
			second:  map[string]float64{"cache_negative": 1},
			wantErr: []string{`no Defender machine named "twin"`, "HTTP 404"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			machines := tc.sim
			if machines == nil {
				machines = ms
			}
			e := newEnv(t, envOpts{sim: defendersim.Options{Machines: machines}})
			d := e.dispatcher(t, Options{Workers: 1})
			start(t, d)
			receipt, _ := e.queue(t, tc.dev, domain.ScanQuick)
			state := domain.JobSubmitted
			if tc.want == "" {
				state = domain.JobDead
			}
			j := e.waitJob(t, receipt, state)

			if got := lookups(t, e.sim); strings.Join(got, " | ") != strings.Join(tc.lookups, " | ") {
				t.Errorf("lookups:\n got %q\nwant %q", got, tc.lookups)
			}
			if got := resolveCounts(t, e); !sameCounts(got, tc.counts) {
				t.Errorf("resolves = %v, want %v", got, tc.counts)
			}
			scans := scanRequests(e.sim)
			if tc.want != "" {
				if j.MachineID != tc.want || len(scans) != 1 || scans[0].Path != "/api/machines/"+tc.want+"/runAntiVirusScan" {
					t.Fatalf("job machine %q, scans %d (%v), want one scan of %s", j.MachineID, len(scans), scanPaths(scans), tc.want)
				}
				// The action final, the next alert about the device is
				// scanned without asking Defender where it is.
				testutil.WaitFor(t, "the first action to be final", func() bool {
					_, acts := e.job(t, receipt)
					return len(acts) == 1 && acts[0].Status == domain.ActionSucceeded
				})
			} else {
				if len(scans) != 0 {
					t.Errorf("%d scans of a device Defender does not know", len(scans))
				}
				if j.Attempts != 1 {
					t.Errorf("attempts = %d, want 1 (not found is not retried)", j.Attempts)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(j.LastError, w) {
						t.Errorf("last error %q does not contain %q", j.LastError, w)
					}
				}
			}

			before := resolveCounts(t, e)
			n := len(lookups(t, e.sim))
			receipt2, _ := e.queue(t, tc.dev, domain.ScanQuick)
			d.Kick()
			j2 := e.waitJob(t, receipt2, state)
			if j2.MachineID != tc.want {
				t.Errorf("second job machine %q, want %q", j2.MachineID, tc.want)
			}
			if got := lookups(t, e.sim); len(got) != n {
				t.Errorf("second job made lookups %q: the cache was not used", got[n:])
			}
			after := resolveCounts(t, e)
			for k, v := range tc.second {
				if after[k]-before[k] != v {
					t.Errorf("second job: resolves{%s} +%v, want +%v (before %v, after %v)", k, after[k]-before[k], v, before, after)
				}
			}
			if tc.want == "" && !strings.Contains(j2.LastError, "looked up") {
				t.Errorf("second job's reason %q does not say the answer is remembered", j2.LastError)
			}

			noSecrets(t, e, j.LastError, j2.LastError)
		})
	}
}

func scanPaths(rs []defendersim.Request) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Path)
	}
	return out
}

// noSecrets: neither the bearer token the client sent nor the client
// secret is in the logs or the recorded reasons.
func noSecrets(t testing.TB, e *env, reasons ...string) {
	t.Helper()
	var token string
	for _, r := range apiRequests(e.sim, http.MethodGet, "/api/") {
		if tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "); tok != "" {
			token = tok
		}
	}
	if token == "" {
		t.Fatal("setup: no token seen")
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"msg":"scan job"`) {
		t.Fatalf("no job log lines:\n%s", logs)
	}
	for _, s := range append(reasons, logs) {
		if strings.Contains(s, token) || strings.Contains(s, defendersim.DefaultClientSecret) || strings.Contains(s, "Bearer") {
			t.Errorf("a token or secret reached a log line or reason")
		}
	}
}

// TestResolveStaleAADCacheEntry: a machine id remembered for an Entra ID
// device id that Defender no longer knows (the device was re-onboarded)
// is forgotten on the scan's 404, and the next attempt looks it up again.
func TestResolveStaleAADCacheEntry(t *testing.T) {
	ms := defendersim.GenerateMachines(2)
	e := newEnv(t, envOpts{sim: defendersim.Options{Machines: ms}})
	d := e.dispatcher(t, Options{Workers: 1})
	stale := strings.Repeat("0", 40)
	d.res.put(aadCacheKey(ms[1].AADDeviceID), stale)
	receipt, _ := e.queue(t, alert.Device{AADDeviceID: ms[1].AADDeviceID}, domain.ScanQuick)
	start(t, d)
	j := e.waitJob(t, receipt, domain.JobSubmitted, domain.JobDead)
	if j.State != domain.JobSubmitted || j.MachineID != ms[1].ID || j.Attempts != 2 {
		t.Errorf("job %s on machine %q after %d attempts (%s), want submitted on %s after 2", j.State, j.MachineID, j.Attempts, j.LastError, ms[1].ID)
	}
	want := []string{"/api/machines/" + stale + "/runAntiVirusScan", "/api/machines/" + ms[1].ID + "/runAntiVirusScan"}
	if got := scanPaths(scanRequests(e.sim)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("scans %v, want %v", got, want)
	}
	if got := lookups(t, e.sim); len(got) != 1 || got[0] != "filter aadDeviceId eq '"+ms[1].AADDeviceID+"'" {
		t.Errorf("lookups %q, want one by AAD device id", got)
	}
}

// TestResolveWithoutAnyName: what resolve says of devices it has nothing to
// look up by, without asking Defender.
func TestResolveWithoutAnyName(t *testing.T) {
	e := newEnv(t, envOpts{})
	d := e.dispatcher(t, Options{})
	cases := []struct {
		dev  alert.Device
		want string
	}{
		{alert.Device{}, "the device has no Defender machine id, DNS name or AAD device id to look it up by"},
		{alert.Device{ID: "MDE-7"}, `device id "MDE-7" is not a Defender machine id and the alert gives no DNS name or AAD device id`},
		{alert.Device{DNSName: "bad name!"}, `device DNS name "bad name!" is not a valid computer name`},
		{alert.Device{AADDeviceID: "not-a-guid"}, `AAD device id "not-a-guid" cannot be looked up`},
	}
	for _, tc := range cases {
		id, _, err := d.resolve(context.Background(), store.Job{ID: 1, Device: tc.dev})
		var pe permanentError
		if id != "" || err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &pe) {
			t.Errorf("resolve(%+v) = %q, %v; want a permanent error saying %q", tc.dev, id, err, tc.want)
		}
	}
	if n := len(e.sim.Requests()); n != 0 {
		t.Errorf("%d requests reached Defender", n)
	}
}
