// Package handlers owns scanhook's HTTP API (README, "HTTP API"): the
// webhook intake with per-source authentication, the read endpoints over the
// store, explain, health, readiness and metrics. It is built on Echo v5.
//
// Every error a client sees is an RFC 9457 application/problem+json body,
// produced in one place (problemFor in errors.go). Handlers never call
// Defender: they only record what the rules decided, and the dispatcher acts
// on it.
//
// Read endpoints (GET /v1/receipts/{receipt}, GET /v1/scans) take
// "Authorization: Bearer <token>" where the token is Deps.APIToken or the
// bearer token of any configured source: whoever may post alerts may read
// what became of them. Query tokens and signatures are not accepted there,
// and an insecure_no_auth source opens only its own webhook, never the reads.
// /healthz, /readyz and /metrics need no credentials (probes and scrapers).
package handlers

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/rules"
)

// Store is what the HTTP layer needs from internal/store.
type Store interface {
	// Ingest commits a delivery; it returns only once it is durable.
	Ingest(ctx context.Context, d store.Delivery) (store.IngestResult, error)
	// Receipt returns what a receipt covers, or an error wrapping
	// store.ErrNotFound.
	Receipt(ctx context.Context, id string) (*store.ReceiptDetail, error)
	// ListScans is the audit trail, newest first.
	ListScans(ctx context.Context, q store.ScanQuery) ([]store.ScanRecord, error)
	// Ping checks the database is reachable.
	Ping(ctx context.Context) error
}

// Rules gives the rule set in force (nil while none is loaded).
type Rules interface {
	Current() *rules.Ruleset
}

// Source is one configured webhook source.
type Source struct {
	Secrets config.SourceSecrets
	// Alert holds the decoder options (the generic mapping, Alertmanager
	// labels); usually Config.AlertOptions() for every source.
	Alert alert.Options
	// Entra, when set, accepts Entra ID access tokens as this source's
	// bearer token (sources.<name>.auth.entra); it counts as a credential.
	Entra EntraVerifier
}

// Deps is everything the HTTP layer uses.
type Deps struct {
	Logger *slog.Logger
	// Registerer receives the scanhook_* HTTP metrics; Gatherer is served on
	// /metrics. When both are nil a private registry is used for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Store      Store
	Rules      Rules
	// Sources are the configured sources by name; any other name answers
	// 404 on the webhook.
	Sources map[string]Source
	// APIToken, when set, is a bearer token for the read endpoints in
	// addition to the sources' bearer tokens.
	APIToken []byte
	// DryRun marks every decision dry_run (the global defender.dry_run).
	DryRun bool
	// MaxBodyBytes caps a webhook body (0: config default, 1 MiB).
	MaxBodyBytes int64
	// IngestLimiter bounds accepted webhook deliveries (nil: no limit).
	IngestLimiter *rate.Limiter
	// MaxInFlight bounds webhook deliveries being handled at once (0: the
	// config default); beyond it an authenticated delivery gets 429 before
	// its body is read (a signed one: once its signature has verified), so
	// senders that outrun the store cannot pile up memory.
	MaxInFlight int
	// MaxUnverifiedInFlight bounds the bodies read at once only to check
	// their signature (0: the config default). Beyond it such a request
	// gets 429 before its body is read. A request with a valid bearer,
	// query or Entra ID token never takes one of these slots, and a signed
	// one takes a MaxInFlight slot only once its signature has verified,
	// so slow or unsigned bodies cannot crowd out authenticated senders.
	MaxUnverifiedInFlight int
	// UnverifiedReadTimeout is how long such a body may take to arrive
	// (0: the config default); a slower sender's connection is cut.
	UnverifiedReadTimeout time.Duration
	// MaxDevicesPerDelivery bounds the devices decided on for one
	// delivery, counted across its alerts in order (0: the config
	// default); the rest are recorded as dropped devices with that reason.
	MaxDevicesPerDelivery int
	// Now is the clock (nil: time.Now); signatures are checked against it.
	Now func() time.Time

	// unverifiedTaken, for tests, is called once a request holds an
	// unverified slot, before its body is read.
	unverifiedTaken func()
}

// MaxHeaderBytes caps request headers (http.Server.MaxHeaderBytes). Alert
// senders put nothing large in headers; 64 KiB leaves room for long tokens.
const MaxHeaderBytes = 64 << 10

// signatureSkew is how far a signature's timestamp may be from now, either way.
const signatureSkew = 5 * time.Minute

// api holds the handlers' state.
type api struct {
	log        *slog.Logger
	store      Store
	rules      Rules
	sources    map[string]*source
	readTokens [][sha256.Size]byte
	dryRun     bool
	maxBody    int64
	limiter    *rate.Limiter
	inFlight   chan struct{}
	// unverified holds the slots of bodies read only to check a signature.
	unverified        chan struct{}
	unverifiedTimeout time.Duration
	unverifiedTaken   func()
	maxDevices        int
	now               func() time.Time
	metrics           *metrics
	replay            *replayCache
}

// source is a configured source with its secrets prepared for comparison.
type source struct {
	name   string
	noAuth bool
	bearer *[sha256.Size]byte
	query  *[sha256.Size]byte
	hmac   []byte
	opts   alert.Options
	entra  EntraVerifier
}

// New builds the HTTP handler. It refuses a source that is not one of
// domain.Sources(), has no credential without NoAuth, or is the generic
// source without a mapping: each would fail every request at run time.
func New(deps Deps) (*echo.Echo, error) {
	if deps.Store == nil || deps.Rules == nil {
		return nil, errors.New("handlers: Store and Rules are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.MaxBodyBytes == 0 {
		deps.MaxBodyBytes = config.Defaults().Server.MaxBodyBytes
	}
	if deps.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("handlers: MaxBodyBytes %d is negative", deps.MaxBodyBytes)
	}
	if deps.Registerer == nil && deps.Gatherer == nil {
		reg := prometheus.NewRegistry()
		deps.Registerer, deps.Gatherer = reg, reg
	}
	if deps.Registerer == nil || deps.Gatherer == nil {
		return nil, errors.New("handlers: set both Registerer and Gatherer, or neither")
	}
	def := config.Defaults().Server
	if err := errors.Join(
		defaultIfZero("MaxInFlight", &deps.MaxInFlight, def.MaxInFlight),
		defaultIfZero("MaxUnverifiedInFlight", &deps.MaxUnverifiedInFlight, def.MaxUnverifiedInFlight),
		defaultIfZero("UnverifiedReadTimeout", &deps.UnverifiedReadTimeout, def.UnverifiedReadTimeout),
		defaultIfZero("MaxDevicesPerDelivery", &deps.MaxDevicesPerDelivery, def.MaxDevicesPerDelivery),
	); err != nil {
		return nil, err
	}
	if len(deps.APIToken) > 0 && len(deps.APIToken) < 16 {
		return nil, errors.New("handlers: APIToken is shorter than 16 characters")
	}

	a := &api{
		log:      deps.Logger,
		store:    deps.Store,
		rules:    deps.Rules,
		sources:  make(map[string]*source, len(deps.Sources)),
		dryRun:   deps.DryRun,
		maxBody:  deps.MaxBodyBytes,
		limiter:  deps.IngestLimiter,
		inFlight: make(chan struct{}, deps.MaxInFlight),

		unverified:        make(chan struct{}, deps.MaxUnverifiedInFlight),
		unverifiedTimeout: deps.UnverifiedReadTimeout,
		unverifiedTaken:   deps.unverifiedTaken,
		maxDevices:        deps.MaxDevicesPerDelivery,

		now:    deps.Now,
		replay: newReplayCache(replayCapacity(deps.IngestLimiter, deps.MaxInFlight)),
	}
	if len(deps.APIToken) > 0 {
		a.readTokens = append(a.readTokens, sha256.Sum256(deps.APIToken))
	}
	names := make([]string, 0, len(deps.Sources))
	for name := range deps.Sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		s := deps.Sources[name]
		if !slices.Contains(domain.Sources(), name) {
			return nil, fmt.Errorf("handlers: source %q is not one of %s", name, strings.Join(domain.Sources(), ", "))
		}
		sec := s.Secrets
		if !sec.NoAuth && len(sec.Bearer) == 0 && len(sec.HMAC) == 0 && len(sec.Query) == 0 && s.Entra == nil {
			return nil, fmt.Errorf("handlers: source %q has no credential and is not insecure_no_auth", name)
		}
		if name == domain.SourceGeneric {
			if s.Alert.Generic == nil {
				return nil, fmt.Errorf("handlers: source %q: %w", name, alert.ErrNoMapping)
			}
			if err := s.Alert.Generic.Validate(); err != nil {
				return nil, fmt.Errorf("handlers: source %q: mapping: %w", name, err)
			}
		}
		src := &source{name: name, noAuth: sec.NoAuth, opts: s.Alert, entra: s.Entra}
		if len(sec.Bearer) > 0 {
			h := sha256.Sum256(sec.Bearer)
			src.bearer = &h
			a.readTokens = append(a.readTokens, h)
		}
		if len(sec.Query) > 0 {
			h := sha256.Sum256(sec.Query)
			src.query = &h
		}
		if len(sec.HMAC) > 0 {
			src.hmac = slices.Clone(sec.HMAC)
		}
		a.sources[name] = src
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	a.metrics = m

	e := echo.NewWithConfig(echo.Config{
		Logger: deps.Logger,
		// Errors are rendered by the observe middleware, which every
		// request passes; this handler only sees what escapes it (nothing
		// in practice), and still answers a problem.
		HTTPErrorHandler: a.renderError,
	})
	e.Use(a.observe)
	e.POST(routeWebhook, a.webhook)
	e.POST(routeExplain, a.explain)
	e.GET("/v1/receipts/:receipt", a.receipt, a.requireReadToken)
	e.GET("/v1/scans", a.scans, a.requireReadToken)
	e.GET("/healthz", a.healthz)
	e.GET("/readyz", a.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(deps.Gatherer, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(deps.Logger.Handler(), slog.LevelError),
	})))
	return e, nil
}

// NewServer returns the http.Server for h with the timeouts of s, so that a
// slow or stuck client cannot hold a connection (or a goroutine) forever.
func NewServer(addr string, h http.Handler, s config.Server) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		ReadTimeout:       s.ReadTimeout,
		WriteTimeout:      s.WriteTimeout,
		IdleTimeout:       s.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// defaultIfZero fills an unset limit from the configuration's default and
// refuses a negative one.
func defaultIfZero[T int | time.Duration](name string, v *T, def T) error {
	if *v < 0 {
		return fmt.Errorf("handlers: %s %v is negative", name, *v)
	}
	if *v == 0 {
		*v = def
	}
	return nil
}
