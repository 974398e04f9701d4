package defender

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim/simtest"
	"github.com/scanhook/scanhook/internal/testutil"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/defendersim"
)

type syncBuffer = testutil.SyncBuffer

// fakeClock is the shared hand-moved clock (this package's tests also
// import Prometheus's testutil, hence the alias).
type fakeClock = testutil.Clock

// epoch is where the limiter tests' clocks start.
var epoch = time.Unix(1_700_000_000, 0)

func newClockAt(t time.Time) *fakeClock { return testutil.NewClockAt(t) }

// env is a simulator and a client wired to it over real TLS, with the real
// azidentity ClientSecretCredential.
type env struct {
	sim    *defendersim.Server
	client *Client
	reg    *prometheus.Registry
	logs   *syncBuffer
}

// noLimit lets every call through, so tests can make the simulator throttle.
type noLimit struct{}

func (noLimit) Wait(ctx context.Context, _ Family) error { return ctx.Err() }

func simTransport(sim *defendersim.Server) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: sim.CertPool(), MinVersion: tls.VersionTLS12}
	t.MaxIdleConnsPerHost = 64
	return t
}

func simConfig(sim *defendersim.Server) Config {
	return Config{
		APIURL:        sim.URL(),
		AuthorityHost: sim.URL(),
		Credential:    CredentialClientSecret,
		TenantID:      defendersim.DefaultTenantID,
		ClientID:      defendersim.DefaultClientID,
		Timeout:       5 * time.Second,
	}
}

func simDeps(sim *defendersim.Server, reg prometheus.Registerer, logs *syncBuffer) Deps {
	return Deps{
		Logger:     slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: reg,
		Transport:  simTransport(sim),
		Getenv: func(k string) string {
			if k == envClientSecret {
				return defendersim.DefaultClientSecret
			}
			return ""
		},
	}
}

// newEnv starts a simulator and builds a client for it; tweak may adjust
// the configuration and the dependencies before New.
func newEnv(t testing.TB, opts defendersim.Options, tweak func(*Config, *Deps)) *env {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	sim := simtest.Start(t, opts)
	e := &env{sim: sim, reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	cfg := simConfig(sim)
	deps := simDeps(sim, e.reg, e.logs)
	tr := deps.Transport.(*http.Transport)
	// Runs before the simulator's Close (cleanups are LIFO): an HTTP/2
	// connection still open makes Shutdown wait a second for GOAWAY.
	t.Cleanup(tr.CloseIdleConnections)
	if tweak != nil {
		tweak(&cfg, &deps)
	}
	c, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.client = c
	return e
}

// windowsMachine returns a machine the simulator can scan.
func windowsMachine(t testing.TB, sim *defendersim.Server, i int) defendersim.Machine {
	t.Helper()
	n := 0
	for _, m := range sim.Machines() {
		if strings.HasPrefix(m.OSPlatform, "Windows") {
			if n == i {
				return m
			}
			n++
		}
	}
	t.Fatalf("no Windows machine #%d in the simulator", i)
	return defendersim.Machine{}
}

// apiRequests are the recorded calls to /api/ (token calls left out).
func apiRequests(sim *defendersim.Server) []defendersim.Request {
	var out []defendersim.Request
	for _, r := range sim.Requests() {
		if strings.HasPrefix(r.Path, "/api/") {
			out = append(out, r)
		}
	}
	return out
}

func wantKind(t testing.TB, err error, want Kind) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want kind %s", want)
	}
	if got := KindOf(err); got != want {
		t.Fatalf("kind = %s, want %s (err: %v)", got, want, err)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err is a %T, want a *Error: %v", err, err)
	}
	return e
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
