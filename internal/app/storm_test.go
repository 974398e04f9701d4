package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/testutil"
)

// TestStorm sends 10,000 alerts naming 500 devices through the whole
// service (HTTP, rules, SQLite, dispatcher, client) to the simulator, whose
// limits are the real ones scaled down to short windows. Exactly one scan
// per device must reach Defender, and the simulator must never answer 429:
// the client's own limiter has to hold the line.
func TestStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("storm test skipped in -short mode")
	}
	const (
		alerts    = 10000
		devices   = 500
		perWindow = 100
		window    = 2 * time.Second // stands for Defender's minute
		perLong   = 300
		long      = 6 * time.Second // stands for Defender's hour
	)
	machines := defendersim.GenerateMachines(devices)
	sim, err := defendersim.New(defendersim.Options{
		Machines:   machines,
		PendingFor: time.Hour, // every scan stays open: a second call would be a 400
		RateLimit:  defendersim.RateLimit{PerMinute: perWindow, Minute: window, PerHour: perLong, Hour: long},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	limiter, err := defender.NewSlidingWindowLimiter(defender.SlidingWindowOptions{
		Windows: []defender.Window{{Limit: perWindow, Length: window}, {Limit: perLong, Length: long}},
	})
	if err != nil {
		t.Fatal(err)
	}

	svc := startTestService(t, sim, limiter, "rules:\n  - name: all-quick\n    scan: Quick\n", `server:
  ingest_per_second: 0
dispatch:
  workers: 16
  poll_interval: 1s
`)
	base, token := svc.base, svc.token

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	var (
		accepted, rejected atomic.Int64
		receiptsMu         sync.Mutex
		receipts           []string // those that queued a scan
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				m := machines[i%devices]
				body := fmt.Sprintf(`{"id":"storm-%d","severity":"High","title":"storm","machineId":%q,"computerDnsName":%q}`, i, m.ID, m.ComputerDNSName)
				req, _ := http.NewRequest(http.MethodPost, base+"/v1/webhooks/defender", bytes.NewBufferString(body))
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					rejected.Add(1)
					continue
				}
				var ans webhookAnswer
				err = json.NewDecoder(resp.Body).Decode(&ans)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted || err != nil {
					rejected.Add(1)
					continue
				}
				accepted.Add(1)
				for _, d := range ans.Decisions {
					if d.Status == "queued" {
						receiptsMu.Lock()
						receipts = append(receipts, ans.Receipt)
						receiptsMu.Unlock()
						break
					}
				}
			}
		}()
	}
	for i := 0; i < alerts; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if accepted.Load() != alerts {
		t.Fatalf("%d alerts accepted, %d rejected; want all %d accepted", accepted.Load(), rejected.Load(), alerts)
	}

	// Every job reaches Defender, then stays put: wait until none can still
	// call it, stop the service (its dispatcher ends the calls in flight and
	// makes no new one), then count. A second scan for a device would come
	// from a job of these receipts, or from a call in flight at the stop:
	// either is counted. The limiter lets perLong calls through per long
	// window, so the scans take two long windows at least.
	ingested := time.Now()
	svc.waitSettled(t, 2*long+testutil.WaitTimeout, receipts)
	settled := time.Since(ingested)
	svc.stop(t)

	st := sim.Stats()
	if st.ScansCreated != devices || st.AlreadyRunning != 0 {
		t.Errorf("scans created %d (want %d), already-running answers %d (want 0)", st.ScansCreated, devices, st.AlreadyRunning)
	}
	if st.Throttled != 0 {
		t.Errorf("the simulator answered 429 %d times; the client's limiter must prevent every one", st.Throttled)
	}
	for fam, fs := range st.Families {
		if fs.MaxPerMinute > perWindow || fs.MaxPerHour > perLong {
			t.Errorf("%s: %d calls in one short window (limit %d), %d in one long window (limit %d)", fam, fs.MaxPerMinute, perWindow, fs.MaxPerHour, perLong)
		}
	}
	t.Logf("accepted %d alerts; %d scans, all jobs settled %s after the last alert; max per window: %+v",
		accepted.Load(), st.ScansCreated, settled.Round(10*time.Millisecond), st.Families)
}
