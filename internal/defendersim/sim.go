// Package defendersim owns the project's only fake of Microsoft Defender for
// Endpoint and of the Entra ID token service in front of it.
//
// It is written from the API documentation alone (docs/defender-api.md)
// and shares no code or types with the client in
// internal/defender, so a misreading in one is caught by the other. It is
// deliberately strict: case-sensitive body keys, audience-checked bearer
// tokens, sliding-window rate limits and the 400-while-pending rule, because a
// lenient fake would hide client bugs.
package defendersim

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Test credentials the simulator accepts when Options leaves them empty.
const (
	DefaultTenantID     = "00000000-0000-4000-8000-00000000cafe"
	DefaultClientID     = "11111111-1111-4111-8111-11111111beef"
	DefaultClientSecret = "defendersim-test-secret"
	// DefaultAudience is the commercial Defender for Endpoint API.
	DefaultAudience = "https://api.securitycenter.microsoft.com"
	// LegacyScope is the scope docs/defender-api.md calls equivalent to the commercial one.
	LegacyScope = "https://securitycenter.onmicrosoft.com/windowsatpservice/.default"
)

// Roles a token carries by default: what scanhook needs.
const (
	RoleMachineScan    = "Machine.Scan"
	RoleMachineReadAll = "Machine.Read.All"
	// RoleMachineReadWriteAll also grants reads.
	RoleMachineReadWriteAll = "Machine.ReadWrite.All"
)

// Action statuses of docs/defender-api.md.
const (
	StatusPending    = "Pending"
	StatusInProgress = "InProgress"
	StatusSucceeded  = "Succeeded"
	StatusFailed     = "Failed"
	StatusTimeOut    = "TimeOut"
	StatusCancelled  = "Cancelled"
)

// Rate-limit families: each has its own per-minute and per-hour budget.
const (
	FamilyScan     = "scan"     // runAntiVirusScan and cancel
	FamilyMachines = "machines" // machine reads
	FamilyActions  = "actions"  // machine action reads
	// FamilyFindByIP: GET /api/machines/findbyip(…), which Defender
	// documents with its own 100 calls a minute and 1,500 an hour.
	FamilyFindByIP = "findbyip"
)

// DuplicateScan modes: what a scan request for a machine with a scan still
// pending or in progress gets. docs/defender-api.md documents both behaviours.
const (
	DuplicateScanError    = "error"    // 400 ActiveRequestAlreadyExists (default)
	DuplicateScanExisting = "existing" // 201 with the existing action
)

// Options configures a Server. Zero values mean the documented defaults.
type Options struct {
	TenantID, ClientID, ClientSecret string
	// ClientCertificate, when set, makes the token endpoint accept
	// client_assertion JWTs signed by this certificate's key (RS256 with x5t,
	// or PS256 with x5t#S256, as MSAL sends them).
	ClientCertificate *x509.Certificate
	// AcceptAnyAssertion accepts any non-empty client_assertion for ClientID
	// (workload identity tests, where the federated token is opaque here).
	AcceptAnyAssertion bool
	// Audience is the API the tokens are for; the token scope must be
	// Audience+"/.default" (or LegacyScope when Audience is DefaultAudience).
	Audience string
	// Roles granted to issued tokens; default Machine.Scan and Machine.Read.All.
	Roles []string
	// Machines is the inventory; when empty GenerateMachines machines are
	// generated deterministically (default 50).
	Machines         []Machine
	GenerateMachines int
	// Action lifecycle: Pending for PendingFor (default 2s), then InProgress
	// for InProgressFor (default 5s), then FinalStatus (default Succeeded).
	PendingFor, InProgressFor time.Duration
	FinalStatus               string
	// DuplicateScan is DuplicateScanError (default) or DuplicateScanExisting.
	DuplicateScan string
	// UnsupportedPlatforms answer runAntiVirusScan with 400
	// OsPlatformNotSupported; default Linux, macOS, iOS, Android.
	UnsupportedPlatforms []string
	// ListLastUpdateTimeUtc makes machine action list responses spell the
	// update time lastUpdateTimeUtc, as docs/defender-api.md says some do, so a
	// client can be tested against both spellings.
	ListLastUpdateTimeUtc bool
	RateLimit             RateLimit
	// TokenTTL is the issued tokens' lifetime (expires_in); default 1h.
	TokenTTL time.Duration
	// AdminToken guards /admin/*; a random one is generated when empty.
	AdminToken string
	// MaxRecordedRequests bounds Requests(); the oldest are dropped. Default 100000.
	MaxRecordedRequests int
	// Seed makes fault injection reproducible; 0 picks a random seed.
	Seed   uint64
	Logger *slog.Logger
	Now    func() time.Time
}

// RateLimit is the per-application, per-family budget: no more than PerMinute
// accepted calls in any sliding Minute window and PerHour in any sliding Hour.
type RateLimit struct {
	PerMinute, PerHour int           // default 100 and 1500
	Minute, Hour       time.Duration // window lengths; default 1m and 1h
	Disabled           bool
}

// Machine is one device of the inventory. A machine whose HealthStatus is
// not Active never picks its scan up: the action stays Pending through
// PendingFor+InProgressFor and ends TimeOut.
type Machine struct {
	ID              string   `json:"id"`
	ComputerDNSName string   `json:"computerDnsName"`
	OSPlatform      string   `json:"osPlatform"`
	HealthStatus    string   `json:"healthStatus"`
	AADDeviceID     string   `json:"aadDeviceId"`
	MachineTags     []string `json:"machineTags"`
	LastIPAddress   string   `json:"lastIpAddress"`
	RBACGroupID     int      `json:"rbacGroupId,omitempty"`
	// IPHistory is where the machine was seen with which internal address:
	// findbyip matches a machine seen with the address within 15 minutes
	// of its timestamp. LastIPAddress counts as seen at any time.
	IPHistory []IPSeen `json:"ipHistory,omitempty"`
}

// IPSeen is one sighting of a machine with an internal IP address.
type IPSeen struct {
	IP string    `json:"ip"`
	At time.Time `json:"at"`
}

// Faults are injected into API calls (not the token endpoint, not /admin).
type Faults struct {
	// ErrorRate is the fraction of API calls answered 500 or 503.
	ErrorRate float64 `json:"error_rate"`
	// Latency is added before every API call is answered.
	Latency time.Duration `json:"latency"`
	// ResetRate is the fraction of API calls whose connection is closed
	// without an answer.
	ResetRate float64 `json:"reset_rate"`
	// OutageFor answers every API call 503 for this long from when it is set,
	// measured on the simulator's clock (Options.Now).
	OutageFor time.Duration `json:"outage_for"`
	// TokenErrorRate is the fraction of token requests answered 503
	// temporarily_unavailable, as Entra ID does when it is struggling.
	TokenErrorRate float64 `json:"token_error_rate"`
}

// Request is one request the simulator received.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	// Header is kept whole (Authorization included) so tests can assert what
	// was sent; it is never logged.
	Header http.Header
	Body   []byte
	Status int
	// Time is when the request arrived; for API calls that reached the rate
	// limiter, the instant the limiter counted (or refused) it.
	Time time.Time
}

// Server is the simulator. All methods are safe for concurrent use.
type Server struct {
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	signer []byte // HMAC key of issued access tokens

	ca     *x509.Certificate
	caPEM  []byte
	leaf   tls.Certificate
	pool   *x509.CertPool
	handle http.Handler

	inv   *inventory
	acts  *actionStore
	lim   *limiter
	rec   *recorder
	fault *faultInjector
	stats *counters

	senders    senderKeys
	issuerDown atomic.Bool

	mu       sync.Mutex
	srv      *http.Server
	listener net.Listener
	url      string
}

// New builds a simulator with a fresh CA; Start serves it over TLS, Handler
// serves it anywhere.
func New(opts Options) (*Server, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Logger, now: opts.Now}
	s.signer = make([]byte, 32)
	if _, err := rand.Read(s.signer); err != nil {
		return nil, fmt.Errorf("token signing key: %w", err)
	}
	if err := s.makeCerts(); err != nil {
		return nil, err
	}
	inv, err := newInventory(opts.Machines)
	if err != nil {
		return nil, err
	}
	s.inv = inv
	s.acts = newActionStore(opts.PendingFor, opts.InProgressFor, opts.FinalStatus)
	s.lim = newLimiter(opts.RateLimit)
	s.rec = newRecorder(opts.MaxRecordedRequests)
	s.fault = newFaultInjector(opts.Seed)
	s.stats = &counters{}
	s.handle = s.routes()
	return s, nil
}

func (o *Options) fill() error {
	if o.TenantID == "" {
		o.TenantID = DefaultTenantID
	}
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	if o.ClientSecret == "" {
		o.ClientSecret = DefaultClientSecret
	}
	if o.Audience == "" {
		o.Audience = DefaultAudience
	}
	if o.Roles == nil {
		o.Roles = []string{RoleMachineScan, RoleMachineReadAll}
	}
	if len(o.Machines) == 0 {
		n := o.GenerateMachines
		if n == 0 {
			n = 50
		}
		if n < 0 {
			return fmt.Errorf("defendersim: GenerateMachines %d is negative", n)
		}
		o.Machines = GenerateMachines(n)
	}
	if o.PendingFor == 0 {
		o.PendingFor = 2 * time.Second
	}
	if o.InProgressFor == 0 {
		o.InProgressFor = 5 * time.Second
	}
	if o.PendingFor < 0 || o.InProgressFor < 0 {
		return errors.New("defendersim: PendingFor and InProgressFor must not be negative")
	}
	if o.FinalStatus == "" {
		o.FinalStatus = StatusSucceeded
	}
	if !isFinal(o.FinalStatus) {
		return fmt.Errorf("defendersim: FinalStatus %q is not one of Succeeded, Failed, TimeOut, Cancelled", o.FinalStatus)
	}
	switch o.DuplicateScan {
	case "":
		o.DuplicateScan = DuplicateScanError
	case DuplicateScanError, DuplicateScanExisting:
	default:
		return fmt.Errorf("defendersim: DuplicateScan %q is not %q or %q", o.DuplicateScan, DuplicateScanError, DuplicateScanExisting)
	}
	if o.UnsupportedPlatforms == nil {
		o.UnsupportedPlatforms = []string{"Linux", "macOS", "iOS", "Android"}
	}
	rl := &o.RateLimit
	if rl.PerMinute == 0 {
		rl.PerMinute = 100
	}
	if rl.PerHour == 0 {
		rl.PerHour = 1500
	}
	if rl.Minute == 0 {
		rl.Minute = time.Minute
	}
	if rl.Hour == 0 {
		rl.Hour = time.Hour
	}
	if rl.PerMinute < 0 || rl.PerHour < 0 || rl.Minute < 0 || rl.Hour < 0 {
		return errors.New("defendersim: RateLimit values must not be negative")
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = time.Hour
	}
	if o.AdminToken == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("admin token: %w", err)
		}
		o.AdminToken = hex.EncodeToString(b)
	}
	if o.MaxRecordedRequests == 0 {
		o.MaxRecordedRequests = 100000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// Start listens on addr (e.g. "127.0.0.1:0") and serves over TLS with the
// simulator's own certificate, in the background.
func (s *Server) Start(addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("defendersim: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("defendersim: listen %s: %w", addr, err)
	}
	tcp := ln.Addr().(*net.TCPAddr)
	host := tcp.IP.String()
	if tcp.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	s.url = "https://" + net.JoinHostPort(host, fmt.Sprint(tcp.Port))
	s.listener = ln
	s.srv = &http.Server{
		Handler:           s.handle,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{s.leaf},
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	srv := s.srv
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("defendersim serve", "err", err)
		}
	}()
	s.log.Info("defendersim listening", "url", s.url)
	return nil
}

// URL is the https base URL of the API and of the Entra ID authority (same
// listener); empty before Start.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Handler serves the simulator; for httptest servers. Endpoint URLs it
// advertises follow the request's Host and scheme.
func (s *Server) Handler() http.Handler { return s.handle }

// AdminToken is the bearer token /admin/* requires.
func (s *Server) AdminToken() string { return s.opts.AdminToken }

// Options returns the options in effect, defaults filled in.
func (s *Server) Options() Options { return s.opts }

// Machines returns the inventory.
func (s *Server) Machines() []Machine { return s.inv.all() }

// CACertPEM is the PEM of the CA that signed the listener's certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.caPEM...) }

// WriteCAFile writes CACertPEM to path, for SSL_CERT_FILE.
func (s *Server) WriteCAFile(path string) error {
	if err := os.WriteFile(path, s.caPEM, 0o644); err != nil {
		return fmt.Errorf("defendersim: write CA file: %w", err)
	}
	return nil
}

// CertPool trusts the simulator's CA.
func (s *Server) CertPool() *x509.CertPool { return s.pool.Clone() }

// Client returns an http.Client that trusts the simulator's CA.
func (s *Server) Client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: s.CertPool(), MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 100,
	}}
}

// Requests returns every request recorded so far (oldest first).
func (s *Server) Requests() []Request { return s.rec.snapshot() }

// ResetRequests forgets the recorded requests.
func (s *Server) ResetRequests() { s.rec.reset() }

// SetFaults replaces the injected faults; an OutageFor starts now.
func (s *Server) SetFaults(f Faults) { s.fault.set(f, s.now()) }

// CurrentFaults returns the faults in effect.
func (s *Server) CurrentFaults() Faults { return s.fault.get() }

// SetActionOutcome sets the final status of actions created from now on.
func (s *Server) SetActionOutcome(final string) error {
	if !isFinal(final) {
		return fmt.Errorf("defendersim: outcome %q is not one of Succeeded, Failed, TimeOut, Cancelled", final)
	}
	s.acts.setOutcome(final)
	return nil
}

// Actions returns a snapshot of every machine action, oldest first, with the
// status as of now.
func (s *Server) Actions() []MachineAction { return s.acts.all(s.now()) }

// Counts returns the accepted runAntiVirusScan calls and the 429s sent.
func (s *Server) Counts() (scanCalls int, throttled int) {
	st := s.Stats()
	return st.ScanCalls, st.Throttled
}

// Close stops the listener, gives in-flight requests a moment, then drops
// the remaining connections: tests should not wait out HTTP/2's graceful
// GOAWAY. Use Shutdown for a patient stop.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	return s.Shutdown(ctx)
}

// Shutdown stops the listener and waits for in-flight requests until ctx
// ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("defendersim: shutdown: %w", err)
		}
	}
	return nil
}
