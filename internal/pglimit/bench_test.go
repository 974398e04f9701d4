package pglimit

import (
	"context"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defender"
)

// BenchmarkWaitDone is the cost the shared limiter adds to one Defender
// call: an admission (one pipelined round trip holding the family's
// advisory lock) and a Done (one UPDATE), with limits never reached. The
// table holds a realistic hour: the windows are Defender's, sized up so
// nothing waits, and rows accumulate as they would.
func BenchmarkWaitDone(b *testing.B) {
	db := newTestDB(b)
	windows := []defender.Window{{Limit: 1 << 30, Length: time.Minute}, {Limit: 1 << 30, Length: time.Hour}}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		l := db.open(b, Options{Windows: windows})
		var wait, done time.Duration
		for b.Loop() {
			t0 := time.Now()
			if err := l.Wait(ctx, defender.ActionReads); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			l.Done(defender.ActionReads)
			wait += t1.Sub(t0)
			done += time.Since(t1)
		}
		b.ReportMetric(float64(wait.Microseconds())/float64(b.N), "wait-µs/op")
		b.ReportMetric(float64(done.Microseconds())/float64(b.N), "done-µs/op")
	})
	// Three replicas admitting the same family at once: the advisory lock
	// serializes them.
	b.Run("3-replicas-parallel", func(b *testing.B) {
		ls := []*Limiter{db.open(b, Options{Windows: windows}), db.open(b, Options{Windows: windows}), db.open(b, Options{Windows: windows})}
		next := make(chan int, 1)
		next <- 0
		b.RunParallel(func(pb *testing.PB) {
			i := <-next
			next <- i + 1
			l := ls[i%len(ls)]
			for pb.Next() {
				if err := l.Wait(ctx, defender.ScanActions); err != nil {
					b.Fatal(err)
				}
				l.Done(defender.ScanActions)
			}
		})
	})
}

// BenchmarkDelayFullHour is one poll of a replica whose family is full:
// Defender's windows with the hour's 1,500 completed calls in the table,
// and the wait computed from them.
func BenchmarkDelayFullHour(b *testing.B) {
	db := newTestDB(b)
	l := db.open(b, Options{Windows: []defender.Window{{Limit: 100, Length: time.Minute}, {Limit: 1500, Length: time.Hour}}})
	ctx := context.Background()
	if _, err := db.admin.Exec(ctx, `INSERT INTO pglimit_calls (family, admitted_at, done_at, owner)
		SELECT f, clock_timestamp() - g * interval '2 seconds', clock_timestamp() - g * interval '2 seconds' + interval '200 milliseconds', 'bench'
		FROM generate_series(1, 1700) g, unnest(array['scan_actions', 'machine_reads', 'action_reads']) f`); err != nil {
		b.Fatal(err)
	}
	if _, err := db.admin.Exec(ctx, `ANALYZE pglimit_calls`); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		d, err := l.Delay(ctx, defender.ScanActions)
		if err != nil {
			b.Fatal(err)
		}
		if d <= 0 {
			b.Fatalf("Delay = %s: the hour should be full", d)
		}
	}
}
