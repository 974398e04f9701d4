package pglimit

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/defendersim/simtest"
	"github.com/scanhook/scanhook/internal/domain"
)

// Three real Defender clients, each with its own limiter (three replicas),
// scan 300 machines at once against the simulator, which enforces the same
// short windows: no call is throttled, and the simulator, counting on its
// own, never sees a window above its limit.
func TestReplicasKeepTheSimulatorsLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~12s")
	}
	db := newTestDB(t)
	const (
		perMinute, perHour = 20, 50
		minute, hour       = 500 * time.Millisecond, 2 * time.Second
		machines           = 300
	)
	sim := simtest.Start(t, defendersim.Options{
		GenerateMachines: machines,
		PendingFor:       time.Hour,
		InProgressFor:    time.Hour,
		RateLimit:        defendersim.RateLimit{PerMinute: perMinute, Minute: minute, PerHour: perHour, Hour: hour},
		Logger:           slog.New(slog.DiscardHandler),
	})
	windows := []defender.Window{{Limit: perMinute, Length: minute}, {Limit: perHour, Length: hour}}
	var clients []*defender.Client
	for range 3 {
		lim := db.open(t, Options{Windows: windows})
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: sim.CertPool(), MinVersion: tls.VersionTLS12}
		t.Cleanup(tr.CloseIdleConnections)
		c, err := defender.New(defender.Config{
			APIURL:        sim.URL(),
			AuthorityHost: sim.URL(),
			Credential:    defender.CredentialClientSecret,
			TenantID:      defendersim.DefaultTenantID,
			ClientID:      defendersim.DefaultClientID,
			Timeout:       10 * time.Second,
		}, defender.Deps{
			Logger:     slog.New(slog.DiscardHandler),
			Registerer: prometheus.NewRegistry(),
			Transport:  tr,
			Limiter:    lim,
			Getenv: func(k string) string {
				if k == "AZURE_CLIENT_SECRET" {
					return defendersim.DefaultClientSecret
				}
				return ""
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	ms := sim.Machines()
	if len(ms) != machines {
		t.Fatalf("the simulator has %d machines, want %d", len(ms), machines)
	}
	ctx := ctxT(t, 60*time.Second)
	errs := make([]error, machines)
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() {
			_, errs[i] = clients[i%3].RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "pglimit replica test")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("scan of machine %d: %v", i, err)
		}
	}
	st := sim.Stats()
	fs := st.Families["scan"]
	if st.Throttled != 0 || fs.Throttled != 0 {
		t.Fatalf("the simulator answered %d 429s (%d for scans)", st.Throttled, fs.Throttled)
	}
	if st.ScansCreated != machines || fs.Calls != machines {
		t.Fatalf("scans created %d, scan calls %d; want %d each", st.ScansCreated, fs.Calls, machines)
	}
	if fs.MaxPerMinute > perMinute || fs.MaxPerHour > perHour {
		t.Fatalf("the simulator saw %d calls in one %s and %d in one %s; limits %d and %d",
			fs.MaxPerMinute, minute, fs.MaxPerHour, hour, perMinute, perHour)
	}
	// And the limiter used what it was given.
	if fs.MaxPerMinute != perMinute || fs.MaxPerHour != perHour {
		t.Fatalf("the fullest windows held %d and %d calls; the limits %d and %d were never reached",
			fs.MaxPerMinute, fs.MaxPerHour, perMinute, perHour)
	}
}
