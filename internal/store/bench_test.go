package store

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkIngest measures parallel ingests, as concurrent webhook calls
// make them: each is one alert with one Quick decision for its own device
// (so each queues a job: the full write path). Besides ns/op it reports
// the p50/p99 latency of one Ingest call. SetParallelism(8) gives 8
// goroutines per GOMAXPROCS, i.e. 16 concurrent callers on 2 cores.
func BenchmarkIngest(b *testing.B) {
	for _, name := range []string{"sqlite", "postgres"} {
		b.Run(name, func(b *testing.B) {
			var be *backend
			if name == "sqlite" {
				be = sqliteBackend(b)
			} else {
				be = postgresBackend(b)
			}
			be.clock = nil
			s, err := Open(context.Background(), be.driver, be.dsn, Deps{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var (
				seq  atomic.Int64
				mu   sync.Mutex
				lats []time.Duration
			)
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					n := seq.Add(1)
					d := delivery(alertIn(fmt.Sprintf("bench-%d", n), quick(dev(fmt.Sprintf("%040x", n), ""))))
					start := time.Now()
					if _, err := s.Ingest(context.Background(), d); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lats = append(lats, mine...)
				mu.Unlock()
			})
			b.StopTimer()
			if len(lats) == 0 {
				return
			}
			slices.Sort(lats)
			pct := func(p float64) float64 {
				return float64(lats[int(p*float64(len(lats)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(len(lats))/b.Elapsed().Seconds(), "ingests/s")
		})
	}
}
