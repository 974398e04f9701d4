package handlers

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/scanhook/scanhook/internal/domain"
)

// BenchmarkWebhook posts Defender alerts in parallel over a real listener
// into a real SQLite store; every alert has a new id, so each request is a
// full ingest transaction (the device already has an open scan after the
// first, as in an alert storm). Allocations count client and server.
// 8 goroutines per CPU send at once.
func BenchmarkWebhook(b *testing.B) {
	e := newEnv(b, func(d *Deps) { d.Logger = slog.New(slog.DiscardHandler) })
	sample := samples(b)[domain.SourceDefender]
	const id = "da637472900382838869_1364969609"
	if !bytes.Contains(sample, []byte(id)) {
		b.Fatal("sample id not found")
	}
	url := e.srv.URL + "/v1/webhooks/defender"
	auth := "Bearer " + bearerFor("defender")
	client := e.srv.Client()
	// Several requests in flight per CPU, as when a SIEM delivers a burst:
	// the store commits them in groups.
	b.SetParallelism(8)
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := bytes.ReplaceAll(sample, []byte(id), []byte("bench-"+strconv.FormatInt(n.Add(1), 10)))
			req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", auth)
			res, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusAccepted {
				b.Errorf("status %d", res.StatusCode)
				return
			}
		}
	})
}
