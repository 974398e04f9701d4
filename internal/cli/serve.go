package cli

import (
	"context"
	"errors"
	"flag"
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
	"github.com/scanhook/scanhook/internal/pglimit"
	"github.com/scanhook/scanhook/internal/reload"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/rules"
)

// rulesPollInterval is how often the rule file is re-read for changes.
const rulesPollInterval = 2 * time.Second

// serve runs the service until ctx ends (SIGINT or SIGTERM).
func serve(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	configFile := fs.String("config", env.getenv("SCANHOOK_CONFIG"), "service config file (or SCANHOOK_CONFIG)")
	demo := fs.Bool("demo", false, "run with no setup: SQLite in a temporary folder, the built-in Defender simulator, the example rules")
	listen := fs.String("listen", "", "listen address, overriding the config's `listen`")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, "Usage: scanhook serve [--config FILE] [--demo] [--listen ADDR]\n\nRuns the service: webhooks in, Defender scans out.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() > 0 {
		return usagef("serve: unexpected argument %q", fs.Arg(0))
	}
	if *demo {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
		if explicit {
			return usagef("serve: --demo brings its own config; drop --config")
		}
		return runDemo(ctx, env, *listen, raiseTimerSlack(env, config.Defaults().Server.TimerSlack))
	}
	if *configFile == "" {
		return usagef("serve: --config is required (or try --demo)")
	}
	cfg, err := loadConfig(env, *configFile)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	return runService(ctx, cfg, env, serviceHooks{TimerSlack: raiseTimerSlack(env, cfg.Server.TimerSlack)})
}

// timerSlack is what serve did about server.timer_slack, for the log.
type timerSlack struct {
	now time.Duration // in effect; 0 when not known
	err error
}

// raiseTimerSlack applies server.timer_slack. It runs before the service
// opens anything, since raising the slack executes the program again. A
// failure only costs CPU under load, so it is logged, not fatal.
func raiseTimerSlack(env Env, want time.Duration) timerSlack {
	if want <= 0 || env.RaiseTimerSlack == nil {
		return timerSlack{}
	}
	now, err := env.RaiseTimerSlack(want)
	return timerSlack{now: now, err: err}
}

// serviceHooks let the demo plug into the service without a second code path.
type serviceHooks struct {
	// Transport carries Defender and Entra ID calls (the demo trusts its
	// simulator's CA); nil means the system roots.
	Transport http.RoundTripper
	// Limiter replaces the Defender rate limiter built from the config
	// (tests use short windows).
	Limiter defender.Limiter
	// Listening is called once the listener is bound.
	Listening func(addr net.Addr)
	// TimerSlack is what serve did about server.timer_slack.
	TimerSlack timerSlack
}

// runService wires the service from cfg and runs it until ctx ends. Order
// of shutdown matters for "nothing lost": HTTP stops first and finishes the
// requests in flight (each commits before it answers), then the dispatcher
// stops and hands its unfinished jobs back to the store, then the store closes.
func runService(ctx context.Context, cfg *config.Config, env Env, hooks serviceHooks) error {
	logger, err := newLogger(env.Stderr, cfg.Log.Level)
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

	alertOpts := cfg.AlertOptions()
	sources := make(map[string]handlers.Source, len(secrets))
	for name, sec := range secrets {
		sources[name] = handlers.Source{Secrets: sec, Alert: alertOpts}
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
		MaxInFlight: cfg.Server.MaxInFlight,
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
	dispDone := make(chan error, 1)
	go func() { dispDone <- disp.Run(bg) }()
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	if err := hooks.TimerSlack.err; err != nil {
		logger.Warn("timer slack not raised; the Go runtime spends more CPU under load (README, server.timer_slack)",
			"want", cfg.Server.TimerSlack.String(), "error", err)
	}
	serving := []any{"addr", ln.Addr().String(), "store", cfg.Store.Driver,
		"rules", cfg.Rules, "sources", strings.Join(sortedKeys(sources), ","), "dry_run", cfg.Defender.DryRun}
	if d := hooks.TimerSlack.now; d > 0 {
		serving = append(serving, "timer_slack", d.String())
	}
	logger.Info("scanhook serving", serving...)

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
			if dec.Status == store.StatusQueued {
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
