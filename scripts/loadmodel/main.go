// Command loadmodel stands in for `scanhook serve` under scripts/load.sh
// (MODEL=1): a server shaped like scanhook with none of its code. Each
// webhook delivery costs a chosen amount of CPU on its own goroutine, then
// waits for one serial stage that takes deliveries in groups, spends a chosen
// amount of CPU on each and sleeps once per group, as scanhook's single
// SQLite writer runs every ingest and fsyncs once per group commit. Then it
// answers 202. It stores nothing.
//
// It answers one question about the load test: how much of what a sender
// sees is the shape of the service (one serial step at a given utilization,
// on two cores shared with the sender) rather than anything scanhook does.
//
//	loadmodel serve --config FILE   # listens where the scanhook config says
//
// The CPU settings are calibrated at start on the idle machine; under load a
// burn takes more, so compare servers by the CPU load.sh reports, not by
// the settings.
//
// Environment (Go durations):
//
//	MODEL_PARALLEL=0us      CPU per delivery on its own goroutine
//	MODEL_SERIAL=0us        CPU per delivery in the serial stage
//	MODEL_GROUP_DELAY=2ms   sleep per group (scanhook: the fsync)
//	MODEL_MAX_GROUP=256     deliveries per group at most
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/scanhook/scanhook/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "loadmodel:", err)
		os.Exit(1)
	}
}

// params is the model: the CPU a delivery costs in parallel and in the
// serial stage, and the serial stage's grouping.
type params struct {
	parallel, serial, groupDelay time.Duration
	maxGroup                     int
}

func parseParams(getenv func(string) string) (params, error) {
	// By default the HTTP server and the grouping alone: the baseline the
	// CPU settings add to.
	p := params{groupDelay: 2 * time.Millisecond, maxGroup: 256}
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{{"MODEL_PARALLEL", &p.parallel}, {"MODEL_SERIAL", &p.serial}, {"MODEL_GROUP_DELAY", &p.groupDelay}} {
		if v := getenv(d.name); v != "" {
			x, err := time.ParseDuration(v)
			if err != nil || x < 0 {
				return p, fmt.Errorf("%s=%q: want a duration such as 150us", d.name, v)
			}
			*d.to = x
		}
	}
	if v := getenv("MODEL_MAX_GROUP"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return p, fmt.Errorf("MODEL_MAX_GROUP=%q: want a positive integer", v)
		}
		p.maxGroup = n
	}
	return p, nil
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	if len(args) != 3 || args[0] != "serve" || args[1] != "--config" {
		return errors.New("usage: loadmodel serve --config FILE")
	}
	cfg, err := config.Load(args[2])
	if err != nil {
		return err
	}
	p, err := parseParams(getenv)
	if err != nil {
		return err
	}
	m := newModel(p, calibrate())
	go m.serialStage(ctx)
	srv := &http.Server{Addr: cfg.Listen, Handler: m.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	fmt.Fprintf(os.Stderr, "loadmodel: %s, parallel %v, serial %v, group delay %v, groups of up to %d\n",
		cfg.Listen, p.parallel, p.serial, p.groupDelay, p.maxGroup)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// model is the server's state: the serial stage's queue and a receipt
// counter.
type model struct {
	p        params
	perMicro float64 // burn iterations per microsecond of CPU
	queue    chan chan struct{}
	n        atomic.Int64
	groups   atomic.Int64 // groups the serial stage has released
	sink     atomic.Uint64
}

func newModel(p params, perMicro float64) *model {
	return &model{p: p, perMicro: perMicro, queue: make(chan chan struct{}, 4*p.maxGroup)}
}

func (m *model) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /v1/webhooks/{source}", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 1<<20)); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		m.burn(m.p.parallel)
		done := make(chan struct{})
		select {
		case m.queue <- done:
		case <-r.Context().Done():
			return
		}
		select {
		case <-done:
		case <-r.Context().Done():
			return // the server is closing and the stage has stopped
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"receipt":"model-%d","duplicate":false,"decisions":[]}`, m.n.Add(1))
	})
	return mux
}

// serialStage takes what is queued (up to maxGroup), works on it, sleeps,
// and releases it: a group commit without the database.
func (m *model) serialStage(ctx context.Context) {
	group := make([]chan struct{}, 0, m.p.maxGroup)
	for {
		group = group[:0]
		select {
		case d := <-m.queue:
			group = append(group, d)
		case <-ctx.Done():
			return
		}
	fill:
		for len(group) < m.p.maxGroup {
			select {
			case d := <-m.queue:
				group = append(group, d)
			default:
				break fill
			}
		}
		m.burn(m.p.serial * time.Duration(len(group)))
		time.Sleep(m.p.groupDelay)
		m.groups.Add(1)
		for _, d := range group {
			close(d)
		}
	}
}

// burn spends about d of CPU. It counts work, not time: a goroutine that
// waits for a CPU makes no progress, as a real one would not.
func (m *model) burn(d time.Duration) {
	m.sink.Add(spin(m.rounds(d)))
}

// rounds is how many spin rounds take d of CPU on an idle machine.
func (m *model) rounds(d time.Duration) int {
	return int(m.perMicro * float64(d.Microseconds()))
}

// spin is the unit of work: n rounds of an xorshift step.
func spin(n int) uint64 {
	x := uint64(88172645463325252)
	for range n {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

// calibrate measures spin rounds per microsecond, taking the best of a few
// tries (the ones least disturbed by other work on the machine).
func calibrate() float64 {
	const rounds = 2_000_000
	best := 0.0
	for range 5 {
		t := time.Now()
		spin(rounds)
		if r := rounds / float64(time.Since(t).Microseconds()+1); r > best {
			best = r
		}
	}
	return best
}
