package defendersim

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAPIOverTLS measures the simulator's own cost per API call over
// its TLS listener (rate limits off), so benchmarks of the client can tell
// how much of their time is the fake.
func BenchmarkAPIOverTLS(b *testing.B) {
	s := startTest(b, Options{RateLimit: RateLimit{Disabled: true}, GenerateMachines: 500, PendingFor: time.Millisecond, InProgressFor: time.Millisecond})
	tok := tokenFor(b, s)
	ms := s.Machines()
	hc := s.Client()
	var n atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			m := ms[int(i)%len(ms)]
			var req *http.Request
			if i%2 == 0 {
				req, _ = http.NewRequest("POST", s.URL()+"/api/machines/"+m.ID+"/runAntiVirusScan", strings.NewReader(scanBody("bench", "Quick")))
				req.Header.Set("Content-Type", "application/json")
			} else {
				req, _ = http.NewRequest("GET", s.URL()+"/api/machines/"+m.ComputerDNSName, nil)
			}
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := hc.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}

// BenchmarkListActionsByID is the poller's call: 100 action ids or-ed in one
// $filter over a store of 5,000 actions.
func BenchmarkListActionsByID(b *testing.B) {
	s, err := New(Options{RateLimit: RateLimit{Disabled: true}, GenerateMachines: 5000})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	var ids []string
	for i, m := range s.Machines() {
		a, _ := s.acts.create(m, "Quick", "c", "app", now)
		if i%50 == 0 {
			ids = append(ids, "id eq '"+a.ID+"'")
		}
	}
	h := s.Handler()
	tok := tokenFor(b, s)
	target := "/api/machineactions?$filter=" + url.QueryEscape(strings.Join(ids, " or "))
	b.ResetTimer()
	for b.Loop() {
		req, _ := http.NewRequest("GET", target, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		rw := &discardWriter{h: http.Header{}}
		h.ServeHTTP(rw, req)
		if rw.status != 200 {
			b.Fatalf("status %d", rw.status)
		}
	}
}

type discardWriter struct {
	h      http.Header
	status int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(c int)           { d.status = c }

func BenchmarkParseFilter(b *testing.B) {
	var parts []string
	for i := 0; i < 100; i++ {
		parts = append(parts, "id eq '"+newID()+"'")
	}
	src := strings.Join(parts, " or ")
	for b.Loop() {
		if _, err := parseFilter(src, actionSchema); err != nil {
			b.Fatal(err)
		}
	}
}
