package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

// BenchmarkDispatch measures jobs dispatched per second against the
// simulator over TLS (rate limits off, SQLite with fsync on every commit):
// each iteration is one queued job taken to Submitted.
func BenchmarkDispatch(b *testing.B) {
	for _, workers := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			e := newEnv(b, envOpts{sim: defendersim.Options{
				GenerateMachines: b.N,
				RateLimit:        defendersim.RateLimit{Disabled: true},
				PendingFor:       time.Hour,
			}})
			ms := e.sim.Machines()
			d := store.Delivery{Source: "generic"}
			for i := range b.N {
				dev := alert.Device{ID: ms[i].ID}
				id := fmt.Sprintf("bench-%d", i)
				d.Alerts = append(d.Alerts, store.AlertInput{
					Alert:     alert.Alert{ID: id, Source: "generic", Devices: []alert.Device{dev}},
					Decisions: []store.DecisionInput{{Device: &dev, Rule: "bench", Scan: domain.ScanQuick, Comment: "bench " + id}},
				})
			}
			ctx := context.Background()
			if _, err := e.st.Ingest(ctx, d); err != nil {
				b.Fatal(err)
			}
			disp := e.dispatcher(b, Options{Workers: workers, PollInterval: time.Hour})
			b.ResetTimer()
			began := time.Now()
			stop := start(b, disp)
			for {
				st, err := e.st.Stats(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if st.JobsByState[domain.JobSubmitted] == int64(b.N) {
					break
				}
				if st.JobsByState[domain.JobDead] > 0 {
					b.Fatalf("dead jobs: %v", st.JobsByState)
				}
				time.Sleep(2 * time.Millisecond)
			}
			elapsed := time.Since(began)
			b.StopTimer()
			if err := stop(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
			if n := len(scanRequests(e.sim)); n != b.N {
				b.Fatalf("scan requests = %d, want %d", n, b.N)
			}
		})
	}
}
