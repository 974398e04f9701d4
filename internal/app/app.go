// Package app owns the running service: it wires the store, the rules, the
// Defender client, the dispatcher and the HTTP handlers from a loaded
// configuration, runs them, and shuts them down in the order that loses
// nothing. internal/cli parses the command line and calls Run or RunDemo.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/time/rate"

	"github.com/scanhook/scanhook/handlers"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/dispatch"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/pglimit"
	"github.com/scanhook/scanhook/internal/reload"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/rules"
)

// rulesPollInterval is how often the rule file is re-read for changes.
const rulesPollInterval = 2 * time.Second

// Env is what the service may touch of the outside world. Every field may
// be nil: output is discarded, the environment is empty and files are read
// with os.ReadFile.
type Env struct {
	Stdout   io.Writer // the demo's banner
	Stderr   io.Writer // the JSON log
	Getenv   func(string) string
	ReadFile func(string) ([]byte, error)
}

func (e Env) readFile(name string) ([]byte, error) {
	if e.ReadFile != nil {
		return e.ReadFile(name)
	}
	return os.ReadFile(name)
}

func (e Env) getenv(k string) string {
	if e.Getenv != nil {
		return e.Getenv(k)
	}
	return ""
}

func (e Env) stdout() io.Writer {
	if e.Stdout != nil {
		return e.Stdout
	}
	return io.Discard
}

func (e Env) stderr() io.Writer {
	if e.Stderr != nil {
		return e.Stderr
	}
	return io.Discard
}

// Hooks let the demo and tests plug into the service without a second code path.
type Hooks struct {
	// Transport carries Defender and Entra ID calls (the demo trusts its
	// simulator's CA); nil means the system roots.
	Transport http.RoundTripper
	// Limiter replaces the Defender rate limiter built from the config
	// (tests use short windows).
	Limiter defender.Limiter
	// Listening is called once the listener is bound.
	Listening func(addr net.Addr)
}

// Run wires the service from cfg and runs it until ctx ends. Order
// of shutdown matters for "nothing lost": HTTP stops first and finishes the
// requests in flight (each commits before it answers), then the dispatcher
// stops and hands its unfinished jobs back to the store, then the store closes.
func Run(ctx context.Context, cfg *config.Config, env Env, hooks Hooks) error {
	logger, err := newLogger(env.stderr(), cfg.Log.Level)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	secrets, err := cfg.Secrets(env.getenv, env.readFile)
	if err != nil {
		return fmt.Errorf("source credentials:\n%w", err)
	}
	dsn, err := cfg.StoreDSN(env.getenv, env.readFile)
	if err != nil {
		return err
	}
	if cfg.Store.Driver == "sqlite" {
		if err := os.MkdirAll(filepath.Dir(dsn), 0o750); err != nil {
			return fmt.Errorf("store: create folder for %s: %w", dsn, err)
		}
	}
	st, err := store.Open(ctx, cfg.Store.Driver, dsn, store.Deps{Logger: logger})
	if err != nil {
		return fmt.Errorf("open %s store: %w", cfg.Store.Driver, err)
	}
	defer st.Close()

	// On PostgreSQL several replicas may run: Defender's limits belong to
	// the application, so they share one limiter and one poll turn there.
	limiter := hooks.Limiter
	var pollTurn dispatch.PollTurn
	if cfg.Store.Driver == "postgres" && limiter == nil {
		pl, err := pglimit.Open(ctx, dsn, pglimit.Options{
			Windows: []defender.Window{
				{Limit: cfg.Defender.RateLimit.PerMinute, Length: time.Minute},
				{Limit: cfg.Defender.RateLimit.PerHour, Length: time.Hour},
			},
			Logger: logger,
		})
		if err != nil {
			return fmt.Errorf("shared Defender rate limiter: %w", err)
		}
		defer pl.Close()
		limiter = pl
		pollTurn = func(ctx context.Context) (<-chan struct{}, func(), bool, error) {
			turn, ok, err := pl.PollTurn(ctx)
			if err != nil || !ok {
				return nil, nil, false, err
			}
			return turn.Done(), turn.Release, true, nil
		}
	}

	holder, err := reload.New(cfg.Rules, rules.Options{}, logger, reg)
	if err != nil {
		return fmt.Errorf("load rules:\n%w", err)
	}
	client, err := defender.New(cfg.Defender, defender.Deps{
		Logger: logger, Registerer: reg, Transport: hooks.Transport, Limiter: limiter,
		Getenv: env.Getenv, ReadFile: env.ReadFile,
	})
	if err != nil {
		return fmt.Errorf("defender client: %w", err)
	}
	disp, err := dispatch.New(dispatch.Deps{Store: st, Defender: client, PollTurn: pollTurn, Logger: logger, Registerer: reg},
		dispatch.FromConfig(cfg.Dispatch, cfg.Defender.DryRun, dispatch.DefaultOwner()))
	if err != nil {
		return fmt.Errorf("dispatcher: %w", err)
	}

	// Entra ID key sets refresh in the background until the service stops.
	entraCtx, stopEntra := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEntra()
	entra, entraProv, err := entraVerifiers(entraCtx, cfg, hooks.Transport, logger)
	if err != nil {
		return fmt.Errorf("entra id: %w", err)
	}
	alertOpts := cfg.AlertOptions()
	sources := make(map[string]handlers.Source, len(secrets))
	for name, sec := range secrets {
		sources[name] = handlers.Source{Secrets: sec, Alert: alertOpts, Entra: entra[name]}
	}
	var ingestLimiter *rate.Limiter
	if cfg.Server.IngestPerSecond > 0 {
		ingestLimiter = rate.NewLimiter(rate.Limit(cfg.Server.IngestPerSecond), cfg.Server.IngestBurst)
	}
	h, err := handlers.New(handlers.Deps{
		Logger: logger, Registerer: reg, Gatherer: reg,
		Store:   kickingStore{Store: st, kick: disp.Kick},
		Rules:   holder,
		Sources: sources, DryRun: cfg.Defender.DryRun,
		MaxBodyBytes: cfg.Server.MaxBodyBytes, IngestLimiter: ingestLimiter,
		MaxInFlight:           cfg.Server.MaxInFlight,
		MaxUnverifiedInFlight: cfg.Server.MaxUnverifiedInFlight,
		UnverifiedReadTimeout: cfg.Server.UnverifiedReadTimeout,
		MaxDevicesPerDelivery: cfg.Server.MaxDevicesPerDelivery,
	})
	if err != nil {
		return fmt.Errorf("http handlers: %w", err)
	}
	srv := handlers.NewServer(cfg.Listen, h, cfg.Server)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if hooks.Listening != nil {
		hooks.Listening(ln.Addr())
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The dispatcher and the rule watcher outlive ctx: they stop only after
	// the HTTP server has drained.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	go holder.Watch(bg, rulesPollInterval, hup)
	if entraProv != nil {
		go entraProv.Warm() // the first delivery need not wait for the keys
	}
	dispDone := make(chan error, 1)
	go func() { dispDone <- disp.Run(bg) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	for _, w := range cfg.Warnings {
		logger.Warn("config", "warning", w)
	}
	logger.Info("scanhook serving", "addr", ln.Addr().String(), "store", cfg.Store.Driver,
		"rules", cfg.Rules, "sources", strings.Join(sortedKeys(sources), ","), "dry_run", cfg.Defender.DryRun)

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "timeout", cfg.Server.ShutdownTimeout.String())
	case serveErr = <-srvDone:
		logger.Error("http server stopped", "error", serveErr)
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Server.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Error("http shutdown", "error", err)
	}
	stopBG()
	if err := <-dispDone; err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("dispatcher stopped", "error", err)
	}
	logger.Info("stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", serveErr)
	}
	return nil
}

// kickingStore wakes the dispatcher after an ingest that queued a scan, so
// a new job goes out now rather than at the next claim tick.
type kickingStore struct {
	store.Store
	kick func()
}

func (k kickingStore) Ingest(ctx context.Context, d store.Delivery) (store.IngestResult, error) {
	res, err := k.Store.Ingest(ctx, d)
	if err == nil {
		for _, dec := range res.Decisions {
			if dec.Status == domain.StatusQueued {
				k.kick()
				break
			}
		}
	}
	return res, err
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level %q: %w", level, err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
