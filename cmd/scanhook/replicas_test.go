package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/scanhook/scanhook/internal/testutil"
)

// postgresDSN returns the test database, skipping (or, in CI, failing)
// when none is configured.
func postgresDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("SCANHOOK_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("SCANHOOK_TEST_POSTGRES is unset in CI: the replica test must run")
		}
		t.Skip("SCANHOOK_TEST_POSTGRES is unset: skipping the PostgreSQL replica test")
	}
	return dsn
}

// freshSchema creates an empty schema and returns a DSN that uses it.
func freshSchema(t *testing.T, dsn string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	schema := fmt.Sprintf("replicas_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
			c.Close(context.Background())
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// TestReplicas runs three `scanhook serve` processes on one PostgreSQL
// database and one simulator enforcing Defender's real limits, sends 10,000
// alerts spread over all three with every alert delivered twice to two
// different replicas, kills one replica with SIGKILL midway, and checks that
// every device named by an acknowledged alert is scanned exactly once, that
// the simulator never had to refuse a call, and that the survivors finish
// the dead replica's work.
func TestReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("replica test skipped in -short mode")
	}
	dsn := freshSchema(t, postgresDSN(t))
	const (
		replicas = 3
		alerts   = 10000
		devices  = 100 // Defender's 100 calls a minute: all fit in the first minute
	)
	be := newBinaryEnv(t, devices, "{driver: postgres, dsn_file: dsn}", "", `server:
  ingest_per_second: 0
dispatch:
  lease: 6s
  poll_interval: 1s
log:
  level: warn
`, map[string]string{"dsn": dsn})
	sim, machines, cfgPath, env, token := be.sim, be.machines, be.cfgPath, be.env, be.token

	// Log level warn hides the "serving" line: each replica gets --listen
	// on a port chosen here.
	var (
		servers []*server
		bases   []string
	)
	for i := 0; i < replicas; i++ {
		port := freePort(t)
		s := startServer(t, env, "serve", "--config", cfgPath, "--listen", fmt.Sprintf("127.0.0.1:%d", port))
		servers = append(servers, s)
		bases = append(bases, fmt.Sprintf("http://127.0.0.1:%d", port))
	}
	for i, b := range bases {
		testutil.WaitFor(t, fmt.Sprintf("replica %d to be ready", i), func() bool {
			resp, err := http.Get(b + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}

	var (
		killed    atomic.Bool
		acked     sync.Map // device id → true
		ackCount  atomic.Int64
		postErrs  atomic.Int64
		sent      atomic.Int64
		killAt    time.Time
		killMu    sync.Mutex
		receipts  sync.Map // receipt of an answer with a queued decision → true
		postClint = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	)
	deliver := func(replica int, body []byte) bool {
		if replica == 2 && killed.Load() {
			return false // the load balancer has taken it out
		}
		req, _ := http.NewRequest(http.MethodPost, bases[replica]+"/v1/webhooks/defender", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := postClint.Do(req)
		if err != nil {
			postErrs.Add(1)
			return false
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return false
		}
		// A redelivery gets a receipt of its own that covers the same
		// alert, decisions and job; any answer naming the job will do.
		var ans struct {
			Receipt   string `json:"receipt"`
			Decisions []struct {
				Status string `json:"status"`
			} `json:"decisions"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
			t.Errorf("answer to a delivery: %v", err)
			return false
		}
		for _, d := range ans.Decisions {
			if d.Status == "queued" {
				receipts.Store(ans.Receipt, true)
				break
			}
		}
		return true
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				m := machines[i%devices]
				body := []byte(fmt.Sprintf(`{"id":"rep-%d","severity":"High","title":"replicas","machineId":%q,"computerDnsName":%q}`, i, m.ID, m.ComputerDNSName))
				ok := false
				// Every alert twice, to two different replicas, as a retrying
				// sender behind a load balancer would.
				for _, r := range []int{i % replicas, (i + 1) % replicas} {
					if deliver(r, body) {
						ok = true
					} else if deliver((r+2)%replicas, body) {
						ok = true
					}
				}
				if ok {
					acked.Store(m.ID, true)
					ackCount.Add(1)
				}
				if sent.Add(1) == alerts/2 {
					killMu.Lock()
					servers[2].kill()
					killed.Store(true)
					killAt = time.Now()
					killMu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < alerts; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if ackCount.Load() < alerts*9/10 {
		t.Fatalf("only %d of %d alerts acknowledged (%d transport errors)", ackCount.Load(), alerts, postErrs.Load())
	}
	want := 0
	acked.Range(func(_, _ any) bool { want++; return true })

	// The dead replica may have used up to Defender's per-minute allowance
	// of the shared limiter, and its claimed jobs come back when their
	// lease (6 s) ends.
	within := time.Minute + 6*time.Second + testutil.WaitTimeout
	testutil.WaitForWithin(t, within, "every acknowledged device's scan", func() bool { return sim.Stats().ScansCreated >= want })
	done := time.Now()
	// Then "exactly once" without a pause: wait until no job can still call
	// Defender, stop the survivors (calls in flight end, no new one starts),
	// and let the simulator finish what it received, the killed replica's
	// last calls included. A duplicate would have been counted by then.
	var queued []string
	receipts.Range(func(k, _ any) bool { queued = append(queued, k.(string)); return true })
	waitSettled(t, within, bases[0], token, queued)
	for _, s := range servers[:2] {
		s.stop(t)
	}
	finishRequests(t, sim)
	st := sim.Stats()
	perMachine := map[string]int{}
	for _, a := range sim.Actions() {
		perMachine[a.MachineID]++
	}
	acked.Range(func(k, _ any) bool {
		if n := perMachine[k.(string)]; n != 1 {
			t.Errorf("machine %s: %d scans, want exactly 1", k, n)
		}
		return true
	})
	if st.ScansCreated != want || st.AlreadyRunning != 0 {
		t.Errorf("scans created %d for %d devices; %d second requests answered already running", st.ScansCreated, want, st.AlreadyRunning)
	}
	if st.Throttled != 0 {
		t.Errorf("the simulator answered 429 %d times; the shared limiter must prevent every one", st.Throttled)
	}
	for fam, fs := range st.Families {
		if fs.MaxPerMinute > 100 || fs.MaxPerHour > 1500 {
			t.Errorf("%s: %d calls in one minute, %d in one hour", fam, fs.MaxPerMinute, fs.MaxPerHour)
		}
	}
	for i, s := range servers[:2] {
		if strings.Contains(s.stderr.String(), `"level":"ERROR"`) {
			t.Errorf("replica %d logged errors:\n%s", i, tail(s.stderr.String(), 3000))
		}
	}
	killMu.Lock()
	t.Logf("%d alerts acknowledged over %d devices; all %d scans done %s after the kill; families %+v",
		ackCount.Load(), want, st.ScansCreated, done.Sub(killAt).Round(100*time.Millisecond), st.Families)
	killMu.Unlock()
}

// freePort asks the kernel for a free loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
