package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/testutil"
)

type lockedBuffer = testutil.SyncBuffer

// server is a scanhook serve process under test.
type server struct {
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	done   chan struct{}
	err    error // how it exited; set before done closes
}

func newLockedBuffer() *lockedBuffer { return &lockedBuffer{} }

func startServer(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	s := &server{cmd: exec.Command(binary, args...), stdout: newLockedBuffer(), stderr: newLockedBuffer(), done: make(chan struct{})}
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.kill()
		if t.Failed() {
			t.Logf("server stderr:\n%s", tail(s.stderr.String(), 6000))
		}
	})
	return s
}

func (s *server) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// stop ends the server with SIGTERM and waits for it to exit with status
// 0, which it does only once its dispatcher has finished the Defender calls
// it had in flight; it makes no new one.
func (s *server) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	testutil.WaitFor(t, "serve to stop on SIGTERM", func() bool {
		select {
		case <-s.done:
			return true
		default:
			return false
		}
	})
	if s.err != nil {
		t.Errorf("serve exited on SIGTERM with %v", s.err)
	}
}

// finishRequests waits until the simulator has answered every request it
// received and takes no more: after the services are stopped, its counts
// are then final, even for a call that a killed process left in flight.
func finishRequests(t *testing.T, sim *defendersim.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.WaitTimeout)
	defer cancel()
	if err := sim.Shutdown(ctx); err != nil || ctx.Err() != nil {
		t.Fatalf("simulator did not finish its requests within %s: %v", testutil.WaitTimeout, err)
	}
}

// waitSettled waits, up to d, until every job of the receipts (read from
// base) is settled.
func waitSettled(t *testing.T, d time.Duration, base, token string, receipts []string) {
	t.Helper()
	testutil.WaitReceiptsSettled(t, d, receipts, func(receipt string) []string {
		var r struct {
			Jobs []struct {
				State string `json:"state"`
			} `json:"jobs"`
		}
		if code := getJSON(t, base+"/v1/receipts/"+receipt, token, &r); code != http.StatusOK {
			t.Fatalf("receipt %s: %d", receipt, code)
		}
		states := make([]string, len(r.Jobs))
		for i, j := range r.Jobs {
			states[i] = j.State
		}
		return states
	})
}

func post(t *testing.T, url, token string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func getJSON(t *testing.T, url, token string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v: %s", url, err, b)
		}
	}
	return resp.StatusCode
}

// TestDemo follows the README: start the demo, paste the printed curl for
// the Sentinel incident, and watch the scans reach Succeeded via the receipt.
func TestDemo(t *testing.T) {
	s := startServer(t, nil, "serve", "--demo", "--listen", "127.0.0.1:0")
	var base, token, dir string
	re := regexp.MustCompile(`listening on (http://\S+)`)
	testutil.WaitFor(t, "the demo banner", func() bool {
		out := s.stdout.String()
		m := re.FindStringSubmatch(out)
		if m == nil || !strings.Contains(out, "duplicate") {
			return false
		}
		base = m[1]
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "token" {
				token = f[1]
			}
			if len(f) >= 2 && f[0] == "config" {
				dir = filepath.Dir(f[1])
			}
		}
		return token != "" && dir != ""
	})
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The printed curl command must point at files that exist.
	body, err := os.ReadFile(filepath.Join(dir, "sentinel-incident.json"))
	if err != nil {
		t.Fatalf("the banner's sample file: %v", err)
	}
	code, res := post(t, base+"/v1/webhooks/sentinel", token, body)
	if code != http.StatusAccepted {
		t.Fatalf("webhook answered %d: %v", code, res)
	}
	receipt, _ := res["receipt"].(string)
	decisions, _ := res["decisions"].([]any)
	if receipt == "" || len(decisions) != 2 || res["duplicate"] != false { //nolint:revive // res["duplicate"] is an any: this checks the JSON value, absent counts as wrong
		t.Fatalf("answer %v", res)
	}
	for _, d := range decisions {
		if st := d.(map[string]any)["status"]; st != "queued" {
			t.Fatalf("decision status %v, want queued: %v", st, d)
		}
	}

	type action struct {
		Status string `json:"status"`
	}
	var detail struct {
		Receipt string   `json:"receipt"`
		Actions []action `json:"actions"`
	}
	// The demo's simulator keeps an action Pending 2 s and InProgress 5 s
	// (its defaults), and the demo polls every 2 s.
	testutil.WaitForWithin(t, 9*time.Second+testutil.WaitTimeout, "both scans to reach Succeeded", func() bool {
		if getJSON(t, base+"/v1/receipts/"+receipt, token, &detail) != http.StatusOK {
			return false
		}
		if len(detail.Actions) != 2 {
			return false
		}
		for _, a := range detail.Actions {
			if a.Status != "Succeeded" {
				return false
			}
		}
		return true
	})

	code, res = post(t, base+"/v1/webhooks/sentinel", token, body)
	if code != http.StatusAccepted || res["duplicate"] != true || res["receipt"] != receipt { //nolint:revive // res["duplicate"] is an any, not a bool
		t.Fatalf("redelivery: %d %v", code, res)
	}
	// The banner's Entra ID delivery: the simulator's token, no shared
	// secret, for the same incident (so the same receipt).
	entraToken, err := os.ReadFile(filepath.Join(dir, "entra-token"))
	if err != nil || !strings.Contains(s.stdout.String(), filepath.Join(dir, "entra-token")) {
		t.Fatalf("the banner's Entra ID token file: %v", err)
	}
	code, res = post(t, base+"/v1/webhooks/sentinel", string(entraToken), body)
	if code != http.StatusAccepted || res["receipt"] != receipt {
		t.Fatalf("with the Entra ID token: %d %v", code, res)
	}
	if code, _ = post(t, base+"/v1/webhooks/defender", string(entraToken), body); code != http.StatusUnauthorized {
		t.Fatalf("the sentinel source's Entra ID token on the defender source: %d, want 401", code)
	}

	// SIGTERM stops it cleanly.
	s.stop(t)
	if !strings.Contains(s.stderr.String(), `"msg":"stopped"`) {
		t.Errorf("no clean stop logged")
	}
}

// binaryEnv is a simulator and a config folder for running the built
// binary against it: CA, client secret, webhook token and a rule that scans
// every device Quick.
type binaryEnv struct {
	sim      *defendersim.Server
	dir      string
	cfgPath  string
	token    string
	env      []string // SSL_CERT_FILE trusting the simulator
	machines []defendersim.Machine
}

// newBinaryEnv starts a simulator with n machines whose scans stay pending,
// and writes a config whose store, defender extras and tail are given:
// store is the `store:` value, extra is appended YAML (indented keys of
// defender first, then other top-level sections).
func newBinaryEnv(t *testing.T, n int, store, defenderExtra, extra string, files map[string]string) *binaryEnv {
	t.Helper()
	machines := defendersim.GenerateMachines(n)
	sim, err := defendersim.New(defendersim.Options{Machines: machines, PendingFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	e := &binaryEnv{sim: sim, dir: t.TempDir(), token: "binary-test-token-0123456789", machines: machines}
	if err := sim.WriteCAFile(filepath.Join(e.dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	e.env = []string{"SSL_CERT_FILE=" + filepath.Join(e.dir, "ca.pem")}
	all := map[string]string{
		"secret":     defendersim.DefaultClientSecret,
		"token":      e.token,
		"rules.yaml": "rules:\n  - name: all\n    scan: Quick\n",
		"config.yaml": fmt.Sprintf(`listen: 127.0.0.1:0
rules: rules.yaml
store: %[4]s
defender:
  api_url: %[1]s
  authority_host: %[1]s/
  credential: client-secret
  tenant_id: %[2]s
  client_id: %[3]s
  client_secret_file: secret
%[5]ssources:
  defender:
    auth: {bearer_token_file: token}
%[6]s`, sim.URL(), defendersim.DefaultTenantID, defendersim.DefaultClientID, store, defenderExtra, extra),
	}
	for name, content := range files {
		all[name] = content
	}
	for name, content := range all {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.cfgPath = filepath.Join(e.dir, "config.yaml")
	return e
}

// TestCrashSafety posts alerts while Defender is down, kills the service
// with SIGKILL, restarts it with Defender back, and checks that every
// acknowledged alert's scan is requested exactly once.
func TestCrashSafety(t *testing.T) {
	const devices = 40
	be := newBinaryEnv(t, devices, "{driver: sqlite, dsn: scanhook.db}", "  timeout: 1s\n", `dispatch:
  # Jobs the killed process had claimed come back when their lease ends.
  lease: 4s
  backoff_base: 100ms
  backoff_max: 500ms
  poll_interval: 1s
`, nil)
	sim, machines, cfgPath, env, token := be.sim, be.machines, be.cfgPath, be.env, be.token

	listenRe := regexp.MustCompile(`"msg":"scanhook serving","addr":"([^"]+)"`)
	start := func() (*server, string) {
		s := startServer(t, env, "serve", "--config", cfgPath)
		var addr string
		testutil.WaitFor(t, "serve to listen", func() bool {
			m := listenRe.FindStringSubmatch(s.stderr.String())
			if m != nil {
				addr = m[1]
			}
			return addr != ""
		})
		return s, "http://" + addr
	}

	sim.SetFaults(defendersim.Faults{OutageFor: time.Hour})
	s, base := start()
	acked := map[string]bool{}
	var receipts []string
	for i, m := range machines {
		body := fmt.Sprintf(`{"id":"da-crash-%d","severity":"High","title":"t","machineId":%q,"computerDnsName":%q}`, i, m.ID, m.ComputerDNSName)
		code, res := post(t, base+"/v1/webhooks/defender", token, []byte(body))
		if code != http.StatusAccepted {
			t.Fatalf("alert %d: %d %v", i, code, res)
		}
		acked[m.ID] = true
		r, _ := res["receipt"].(string)
		if r == "" {
			t.Fatalf("alert %d: no receipt: %v", i, res)
		}
		receipts = append(receipts, r)
	}
	// Let the dispatcher hit the outage at least once, then kill it hard.
	testutil.WaitFor(t, "a failed attempt during the outage", func() bool {
		for _, r := range sim.Requests() {
			if strings.HasSuffix(r.Path, "/runAntiVirusScan") {
				return true
			}
		}
		return false
	})
	s.kill()

	sim.SetFaults(defendersim.Faults{})
	s, base = start()
	scanned := func() map[string]int {
		n := map[string]int{}
		for _, r := range sim.Requests() {
			if r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/runAntiVirusScan") && r.Status == http.StatusCreated {
				n[strings.TrimSuffix(strings.TrimPrefix(r.Path, "/api/machines/"), "/runAntiVirusScan")]++
			}
		}
		return n
	}
	// The killed process's claimed jobs come back when their lease ends.
	resumeWithin := 4*time.Second + testutil.WaitTimeout
	testutil.WaitForWithin(t, resumeWithin, "every acknowledged alert's scan", func() bool { return len(scanned()) == len(acked) })
	// Then "exactly once" without a pause: wait until no job can still call
	// Defender, stop the service (calls in flight end, no new one starts),
	// and let the simulator finish what it received, the killed process's
	// last calls included. A duplicate would have been counted by then.
	waitSettled(t, resumeWithin, base, token, receipts)
	s.stop(t)
	finishRequests(t, sim)
	got := scanned()
	for id := range acked {
		if got[id] != 1 {
			t.Errorf("machine %s scanned %d times, want exactly 1", id, got[id])
		}
	}
	for _, r := range sim.Requests() {
		if strings.HasSuffix(r.Path, "/runAntiVirusScan") && r.Status == http.StatusBadRequest {
			t.Errorf("a second scan request reached Defender for %s (400 already pending)", r.Path)
		}
	}
}
