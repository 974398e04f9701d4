package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scanhook/scanhook/internal/defendersim"
)

// binary is the scanhook binary built once for the tests in this package,
// which run it as a user would: a separate process, flags, exit codes.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "scanhook-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "scanhook")
	// Built the way the Dockerfile builds it (static, trimmed paths), which
	// also lets the image test in deploy/ reuse these compiled packages.
	build := exec.Command("go", "build", "-trimpath", "-o", binary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build scanhook:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func runBinary(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return result{code, out.String(), errb.String()}
}

func TestVersion(t *testing.T) {
	r := runBinary(t, nil, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "scanhook ") {
		t.Fatalf("version: %+v", r)
	}
}

// TestScanCommand runs `scanhook scan` against the simulator over TLS with
// the real Entra ID client-secret flow, trusting the simulator's CA through
// SSL_CERT_FILE exactly as docs/defender-api.md ("The simulator") tells users to.
func TestScanCommand(t *testing.T) {
	const (
		idA = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
		idB = "2e5bc9d7e413ddd7902c2932e418702b84d0cc07"
		idC = "3e5bc9d7e413ddd7902c2932e418702b84d0cc07"
		idD = "4e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	)
	sim, err := defendersim.New(defendersim.Options{
		Machines: []defendersim.Machine{
			{ID: idA, ComputerDNSName: "mymachine1.contoso.com", OSPlatform: "Windows11", HealthStatus: "Active"},
			{ID: idB, ComputerDNSName: "mymachine2.contoso.com", OSPlatform: "Windows11", HealthStatus: "Active"},
			{ID: idC, ComputerDNSName: "ws-042.corp.contoso.com", OSPlatform: "Windows11", HealthStatus: "Active"},
			{ID: idD, ComputerDNSName: "mymachine4.contoso.com", OSPlatform: "Windows11", HealthStatus: "Active",
				AADDeviceID: "80fe8ff8-2624-418e-9591-41f0491218f9"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })

	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := sim.WriteCAFile(ca); err != nil {
		t.Fatal(err)
	}
	writeConfig := func(name, secret string) string {
		secretFile := filepath.Join(dir, name+".secret")
		if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf(`defender:
  api_url: %[1]s
  authority_host: %[1]s
  credential: client-secret
  tenant_id: %[2]s
  client_id: %[3]s
  client_secret_file: %[4]s
`, sim.URL(), defendersim.DefaultTenantID, defendersim.DefaultClientID, secretFile)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	good := writeConfig("good", defendersim.DefaultClientSecret)
	wrong := writeConfig("wrong", "not-the-secret-at-all")
	env := []string{"SSL_CERT_FILE=" + ca, "AZURE_CLIENT_SECRET=", "AZURE_TENANT_ID=", "AZURE_CLIENT_ID="}

	scan := func(cfg, machine, typ string) result {
		return runBinary(t, env, "scan", "--config", cfg, "--machine", machine, "--type", typ, "--comment", "scanhook test: alert 3212")
	}

	t.Run("by id", func(t *testing.T) {
		r := scan(good, idA, "Full")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		var action struct {
			ID, Type, Scope, Status, MachineID, RequestorComment string
		}
		if err := json.Unmarshal([]byte(r.stdout), &action); err != nil {
			t.Fatalf("output is not a MachineAction: %q", r.stdout)
		}
		if action.ID == "" || action.Type != "RunAntiVirusScan" || action.MachineID != idA || action.Status != "Pending" || action.RequestorComment != "scanhook test: alert 3212" {
			t.Fatalf("action %+v", action)
		}
		var found bool
		for _, q := range sim.Requests() {
			if q.Method == "POST" && q.Path == "/api/machines/"+idA+"/runAntiVirusScan" {
				found = true
				var body map[string]string
				if err := json.Unmarshal(q.Body, &body); err != nil || len(body) != 2 || body["ScanType"] != "Full" || body["Comment"] != "scanhook test: alert 3212" {
					t.Errorf("scan body %s", q.Body)
				}
			}
		}
		if !found {
			t.Fatal("the simulator saw no scan request")
		}
	})
	t.Run("already scanning", func(t *testing.T) {
		r := scan(good, idA, "Quick")
		if r.code != 3 || !strings.Contains(r.stderr, "already scanning") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("by DNS name", func(t *testing.T) {
		r := scan(good, "MyMachine2.contoso.com", "Quick")
		if r.code != 0 || !strings.Contains(r.stdout, idB) {
			t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("by bare computer name", func(t *testing.T) {
		r := scan(good, "WS-042", "Quick")
		if r.code != 0 || !strings.Contains(r.stdout, idC) {
			t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("by AAD device id", func(t *testing.T) {
		r := scan(good, "80FE8FF8-2624-418E-9591-41F0491218F9", "Quick")
		if r.code != 0 || !strings.Contains(r.stdout, idD) {
			t.Fatalf("exit %d: %s %s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("unknown machine", func(t *testing.T) {
		r := scan(good, strings.Repeat("ab", 20), "Quick")
		if r.code != 4 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		for _, m := range []string{"nosuch.contoso.com", "nosuch", "00000000-0000-0000-0000-000000000000"} {
			if r := scan(good, m, "Quick"); r.code != 4 {
				t.Fatalf("unknown %q: exit %d: %s", m, r.code, r.stderr)
			}
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		r := scan(wrong, idB, "Quick")
		if r.code != 5 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if strings.Contains(r.stderr, "not-the-secret-at-all") {
			t.Fatal("the secret reached the error output")
		}
	})
	t.Run("hostile machine never reaches the wire", func(t *testing.T) {
		before := len(sim.Requests())
		for _, m := range []string{"../x", "a'b", "has space", "%2e%2e"} {
			r := scan(good, m, "Quick")
			if r.code != 2 {
				t.Errorf("%q: exit %d: %s", m, r.code, r.stderr)
			}
		}
		if after := len(sim.Requests()); after != before {
			t.Fatalf("%d requests reached the simulator", after-before)
		}
	})
	t.Run("bad type", func(t *testing.T) {
		if r := scan(good, idB, "Deep"); r.code != 2 {
			t.Fatalf("exit %d", r.code)
		}
	})
}

// TestBinaryLinksNoTestCode keeps test helpers out of the shipped binary:
// the testing package registers flags and pulls in code no operator needs.
func TestBinaryLinksNoTestCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "testing" || strings.HasPrefix(pkg, "testing/") || strings.HasSuffix(pkg, "/testutil") || strings.HasSuffix(pkg, "/simtest") {
			t.Errorf("the scanhook binary links %s", pkg)
		}
	}
}
