package defender

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/domain"
)

// BenchmarkRunAntiVirusScan measures one scan request through the client
// (validation, breaker, sliding-window limiter with limits too high to
// wait, cached token, HTTP/2 over TLS on loopback, decoding) and, as the
// baseline, the same request sent by hand on the same transport. The
// difference is the client's own overhead.
func BenchmarkRunAntiVirusScan(b *testing.B) {
	lim, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{
		{Limit: 1 << 30, Length: time.Minute}, {Limit: 1 << 30, Length: time.Hour},
	}})
	if err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, defendersim.Options{
		RateLimit:  defendersim.RateLimit{Disabled: true},
		PendingFor: time.Nanosecond, InProgressFor: time.Nanosecond, // each scan is final at once
		MaxRecordedRequests: 1000,
	}, func(_ *Config, d *Deps) {
		d.Limiter = lim
		// Production logs at info: the per-call debug line is not built.
		d.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil)) //nolint:sloglint // production's handler at its level, not DiscardHandler, which skips Enabled's real answer
	})
	m := windowsMachine(b, e.sim, 0)
	ctx := context.Background()
	if _, err := e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "warm up"); err != nil {
		b.Fatal(err)
	}
	token := apiRequests(e.sim)[0].Header.Get("Authorization")

	b.Run("client", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.client.RunAntiVirusScan(ctx, m.ID, domain.ScanQuick, "benchmark"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw-http", func(b *testing.B) {
		hc := e.client.http
		u := e.sim.URL() + "/api/machines/" + m.ID + "/runAntiVirusScan"
		body := []byte(`{"Comment":"benchmark","ScanType":"Quick"}`)
		b.ReportAllocs()
		for b.Loop() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
			req.Header.Set("Authorization", token)
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
	b.Run("client-parallel", func(b *testing.B) {
		ms := e.sim.Machines()
		var ids []string
		for _, m := range ms {
			if strings.HasPrefix(m.OSPlatform, "Windows") {
				ids = append(ids, m.ID)
			}
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				i++
				_, err := e.client.RunAntiVirusScan(ctx, ids[i%len(ids)], domain.ScanQuick, "benchmark")
				if err != nil && KindOf(err) != AlreadyScanning {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkLimiter is the sliding-window limiter alone, uncontended. The
// windows are short so that the log stays as small as Defender's limits
// keep it (at most 1,500 entries), instead of growing with b.N.
func BenchmarkLimiter(b *testing.B) {
	l, err := NewSlidingWindowLimiter(SlidingWindowOptions{Windows: []Window{
		{Limit: 1 << 30, Length: 100 * time.Microsecond}, {Limit: 1 << 30, Length: time.Millisecond},
	}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Wait(ctx, ScanActions); err != nil {
			b.Fatal(err)
		}
		l.Done(ScanActions)
	}
}
