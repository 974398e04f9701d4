// Package entraauth verifies Entra ID (Azure AD) access tokens presented by
// webhook senders: a Logic App's managed identity, an Azure Monitor action
// group's secure webhook. It follows Microsoft's guidance for protected web
// APIs (docs/entra-id.md): RS256 only, the signing key found by kid in the
// tenant's JWKS (through its OpenID metadata), the issuer of the token's
// version taken from that metadata, audience, lifetime with bounded leeway,
// tenant allow-list, app-only tokens, and the caller and roles configured.
//
// It is built on github.com/golang-jwt/jwt/v5 (parsing, RS256, time
// claims) and github.com/MicahParks/keyfunc/v3 with jwkset (the cached,
// background-refreshed key set, refreshed on an unknown kid at most once a
// minute). It knows nothing of scanhook's handlers or of the Defender
// client: the service passes it the authority host.
package entraauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// Reasons a token is refused: the metric label values and the check named
// to the sender. The set is bounded.
const (
	ReasonMalformed   = "malformed"
	ReasonAlgorithm   = "algorithm"
	ReasonTenant      = "tenant"
	ReasonSignature   = "signature"
	ReasonExpired     = "expired"
	ReasonNotYetValid = "not_yet_valid"
	ReasonIssuer      = "issuer"
	ReasonAudience    = "audience"
	ReasonAppOnly     = "app_only"
	ReasonCaller      = "caller"
	ReasonRole        = "role"
	// ReasonUnavailable: the tenant's metadata or keys cannot be fetched;
	// the sender should retry (503), the token may well be good.
	ReasonUnavailable = "unavailable"
)

// Reasons lists every reason, for metrics that pre-declare their labels.
func Reasons() []string {
	return []string{ReasonMalformed, ReasonAlgorithm, ReasonTenant, ReasonSignature, ReasonExpired,
		ReasonNotYetValid, ReasonIssuer, ReasonAudience, ReasonAppOnly, ReasonCaller, ReasonRole, ReasonUnavailable}
}

// Error is a refused token. Description is safe to send to the sender: it
// names the check, never the token or its claims' values.
type Error struct {
	Reason      string
	Description string
	// Err is the cause, for logs; it never holds the token.
	Err error
}

func (e *Error) Error() string {
	msg := "entra id token: " + e.Reason + ": " + e.Description
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Unavailable reports whether the token could not be checked at all (the
// key set is unreachable): retry later rather than give up.
func (e *Error) Unavailable() bool { return e.Reason == ReasonUnavailable }

func refuse(reason, desc string) *Error { return &Error{Reason: reason, Description: desc} }

// Caller is who a valid token stands for.
type Caller struct {
	TenantID string
	// ClientID is the calling app's appid (v1) or azp (v2).
	ClientID string
	// ObjectID is the caller's oid (a managed identity's object id).
	ObjectID string
	Roles    []string
	// Version is the token version, "1.0" or "2.0".
	Version string
}

// MaxLeeway is the most clock skew tolerated on exp, nbf and iat.
const MaxLeeway = 5 * time.Minute

// maxTokenBytes bounds the work a hostile header can cause; Entra tokens
// are a few KiB.
const maxTokenBytes = 16 << 10

// ProviderOptions configures where keys come from.
type ProviderOptions struct {
	// Authority is the Entra ID authority host, such as
	// https://login.microsoftonline.com/ (defender.cloud's, or
	// defender.authority_host).
	Authority string
	// MicrosoftHost requires the metadata's issuers to be Entra ID's own
	// forms (https://sts.windows.net/{tid}/ for v1, {authority}{tid}/v2.0
	// for v2). Off for other hosts (the simulator), where the issuer must
	// still be https://<host>/{tid}/ or https://<host>/{tid}/v2.0.
	MicrosoftHost bool
	// HTTPClient fetches metadata and keys (nil: a client with a 10s timeout).
	HTTPClient *http.Client
	// RefreshInterval is the background key refresh (default 1h).
	RefreshInterval time.Duration
	// UnknownKIDInterval bounds refreshes caused by an unknown kid
	// (default and maximum rate: one a minute).
	UnknownKIDInterval time.Duration
	// RetryInterval is the pause between failed attempts to load a
	// tenant's metadata and keys (default 5s).
	RetryInterval time.Duration
	// Leeway is the clock skew allowed (default and maximum 5 minutes).
	Leeway time.Duration
	// Now is the clock for exp/nbf/iat (nil: time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Provider holds the tenants' metadata and key sets, shared by every
// source's Verifier.
type Provider struct {
	opts      ProviderOptions
	authority *url.URL
	ctx       context.Context
	mu        sync.Mutex
	tenants   map[string]*tenant
}

// NewProvider makes a Provider whose background refreshes stop with ctx.
func NewProvider(ctx context.Context, o ProviderOptions) (*Provider, error) {
	u, err := url.Parse(strings.TrimRight(o.Authority, "/") + "/")
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("entraauth: authority %q must be an https URL", o.Authority)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = time.Hour
	}
	if o.UnknownKIDInterval < time.Minute {
		o.UnknownKIDInterval = time.Minute
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 5 * time.Second
	}
	if o.Leeway <= 0 || o.Leeway > MaxLeeway {
		o.Leeway = MaxLeeway
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Provider{opts: o, authority: u, ctx: ctx, tenants: map[string]*tenant{}}, nil
}

// tenant is one tenant's metadata and keys, loaded on first need.
type tenant struct {
	id string
	p  *Provider

	state atomic.Pointer[tenantState]
	// fetchFailing is set while the last JWKS fetch failed, so that an
	// unknown kid during an outage is answered 503, not 401.
	fetchFailing atomic.Bool

	mu      sync.Mutex // serializes loading
	lastTry time.Time
	lastErr error
}

type tenantState struct {
	issuerV1, issuerV2 string
	kf                 keyfunc.Keyfunc
	// stop ends the background refresh (the Provider's context does too).
	stop context.CancelFunc
}

func (p *Provider) tenant(id string) *tenant {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.tenants[id]
	if t == nil {
		t = &tenant{id: id, p: p}
		p.tenants[id] = t
	}
	return t
}

// Warm loads every tenant a Verifier allows, so the first delivery does
// not wait for the metadata; failures are retried on demand.
func (p *Provider) Warm() {
	p.mu.Lock()
	ts := make([]*tenant, 0, len(p.tenants))
	for _, t := range p.tenants {
		ts = append(ts, t)
	}
	p.mu.Unlock()
	for _, t := range ts {
		_, _ = t.get()
	}
}

// get returns the tenant's loaded state, loading it if needed (at most one
// attempt per RetryInterval; in between the last error is returned).
func (t *tenant) get() (*tenantState, error) {
	if st := t.state.Load(); st != nil {
		return st, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.state.Load(); st != nil {
		return st, nil
	}
	if !t.lastTry.IsZero() && time.Since(t.lastTry) < t.p.opts.RetryInterval {
		return nil, t.lastErr
	}
	t.lastTry = time.Now()
	st, err := t.load()
	if err != nil {
		t.lastErr = err
		t.p.opts.Logger.Warn("entra id: cannot load tenant metadata and keys", "tenant", t.id, "error", err.Error())
		return nil, err
	}
	t.state.Store(st)
	return st, nil
}

type metadata struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

func (t *tenant) load() (*tenantState, error) {
	base := t.p.authority.String() + t.id
	v1, err := t.metadata(base + "/.well-known/openid-configuration")
	if err != nil {
		return nil, err
	}
	v2, err := t.metadata(base + "/v2.0/.well-known/openid-configuration")
	if err != nil {
		return nil, err
	}
	if err := t.checkIssuer(v1.Issuer, false); err != nil {
		return nil, err
	}
	if err := t.checkIssuer(v2.Issuer, true); err != nil {
		return nil, err
	}
	urls := []string{v2.JWKSURI}
	if v1.JWKSURI != v2.JWKSURI {
		urls = append(urls, v1.JWKSURI)
	}
	for _, u := range urls {
		if pu, err := url.Parse(u); err != nil || pu.Scheme != "https" || pu.Host == "" {
			return nil, fmt.Errorf("jwks_uri %q is not an https URL", u)
		}
	}
	// A failed first fetch has started refresh goroutines: this context
	// ends them.
	ctx, cancel := context.WithCancel(t.p.ctx)
	client := &http.Client{Transport: &fetchWatch{t: t, base: t.p.opts.HTTPClient}, Timeout: t.p.opts.HTTPClient.Timeout}
	noErrFirst := false
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, urls, keyfunc.Override{
		Client:                    client,
		HTTPTimeout:               10 * time.Second,
		NoErrorReturnFirstHTTPReq: &noErrFirst,
		RefreshInterval:           t.p.opts.RefreshInterval,
		RefreshUnknownKID:         rate.NewLimiter(rate.Every(t.p.opts.UnknownKIDInterval), 1),
		// Never make a request wait for the limiter: when a refresh is
		// not allowed yet, the kid is simply unknown.
		RateLimitWaitMax: 100 * time.Millisecond,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				t.p.opts.Logger.Warn("entra id: key set refresh failed", "tenant", t.id, "url", u, "error", err.Error())
			}
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("fetch the key set: %w", err)
	}
	return &tenantState{issuerV1: v1.Issuer, issuerV2: v2.Issuer, kf: kf, stop: cancel}, nil
}

func (t *tenant) metadata(u string) (metadata, error) {
	ctx, cancel := context.WithTimeout(t.p.ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return metadata{}, err
	}
	resp, err := t.p.opts.HTTPClient.Do(req)
	if err != nil {
		return metadata{}, fmt.Errorf("openid metadata: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return metadata{}, fmt.Errorf("openid metadata %s: status %d", u, resp.StatusCode)
	}
	var m metadata
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&m); err != nil {
		return metadata{}, fmt.Errorf("openid metadata %s: %w", u, err)
	}
	if m.Issuer == "" || m.JWKSURI == "" {
		return metadata{}, fmt.Errorf("openid metadata %s: no issuer or jwks_uri", u)
	}
	return m, nil
}

// checkIssuer accepts only issuers of the tenant's own form: the path is
// /{tid}/ (v1) or /{tid}/v2.0 (v2) on an https host, and on Microsoft's
// hosts the host is sts.windows.net (v1) or the authority host.
func (t *tenant) checkIssuer(iss string, v2 bool) error {
	u, err := url.Parse(iss)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("metadata issuer %q is not an https URL", iss)
	}
	wantPath := "/" + t.id + "/"
	if v2 {
		wantPath = "/" + t.id + "/v2.0"
	}
	if !strings.EqualFold(u.Path, wantPath) {
		return fmt.Errorf("metadata issuer %q is not for tenant %s", iss, t.id)
	}
	if t.p.opts.MicrosoftHost {
		host := strings.ToLower(u.Host)
		ok := host == strings.ToLower(t.p.authority.Host)
		if !v2 {
			ok = ok || host == "sts.windows.net"
		}
		if !ok {
			return fmt.Errorf("metadata issuer %q is not Entra ID's for this cloud", iss)
		}
	}
	return nil
}

// fetchWatch records whether the last JWKS fetch worked.
type fetchWatch struct {
	t    *tenant
	base *http.Client
}

func (f *fetchWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	rt := f.base.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	resp, err := rt.RoundTrip(r)
	f.t.fetchFailing.Store(err != nil || resp.StatusCode != http.StatusOK)
	return resp, err
}

// Policy is what one source accepts (config.Entra).
type Policy struct {
	TenantIDs        []string
	Audiences        []string
	AllowedClientIDs []string
	AllowedObjectIDs []string
	RequiredRoles    []string
}

// Verifier checks tokens against one source's policy.
type Verifier struct {
	p         *Provider
	tenants   map[string]*tenant
	audiences map[string]bool
	clients   map[string]bool
	objects   map[string]bool
	roles     []string
	parser    *jwt.Parser
}

// Verifier makes the checker for a policy. Tenant ids and GUIDs compare
// case-insensitively; audiences and roles exactly.
func (p *Provider) Verifier(pol Policy) (*Verifier, error) {
	if len(pol.TenantIDs) == 0 || len(pol.Audiences) == 0 {
		return nil, errors.New("entraauth: a policy needs tenant ids and audiences")
	}
	if len(pol.AllowedClientIDs) == 0 && len(pol.AllowedObjectIDs) == 0 && len(pol.RequiredRoles) == 0 {
		return nil, errors.New("entraauth: a policy needs allowed client ids, object ids or required roles")
	}
	v := &Verifier{p: p, tenants: map[string]*tenant{}, audiences: set(pol.Audiences, false),
		clients: set(pol.AllowedClientIDs, true), objects: set(pol.AllowedObjectIDs, true),
		roles: slices.Clone(pol.RequiredRoles)}
	for _, id := range pol.TenantIDs {
		id = strings.ToLower(id)
		v.tenants[id] = p.tenant(id)
	}
	v.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256"}),
		jwt.WithLeeway(p.opts.Leeway),
		jwt.WithTimeFunc(p.opts.Now),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	return v, nil
}

func set(vals []string, fold bool) map[string]bool {
	m := make(map[string]bool, len(vals))
	for _, v := range vals {
		if fold {
			v = strings.ToLower(v)
		}
		m[v] = true
	}
	return m
}

// claims are the Entra ID access token claims scanhook reads.
type claims struct {
	jwt.RegisteredClaims
	TenantID string   `json:"tid"`
	Version  string   `json:"ver"`
	AppID    string   `json:"appid"`
	AZP      string   `json:"azp"`
	ObjectID string   `json:"oid"`
	IDType   string   `json:"idtyp"`
	Scope    string   `json:"scp"`
	Roles    []string `json:"roles"`
}

// Verify checks a bearer token. The error is an *Error; its Reason is one
// of the Reason* constants.
func (v *Verifier) Verify(ctx context.Context, raw string) (Caller, error) {
	if len(raw) > maxTokenBytes || strings.Count(raw, ".") != 2 {
		return Caller{}, refuse(ReasonMalformed, "the bearer token is not a JWT")
	}
	var c claims
	var st *tenantState
	tok, err := v.parser.ParseWithClaims(raw, &c, func(tok *jwt.Token) (any, error) {
		if tok.Method.Alg() != "RS256" {
			return nil, refuse(ReasonAlgorithm, "only RS256 tokens are accepted")
		}
		t := v.tenants[strings.ToLower(c.TenantID)]
		if t == nil {
			return nil, refuse(ReasonTenant, "the token's tenant (tid) is not accepted")
		}
		var err error
		if st, err = t.get(); err != nil {
			return nil, &Error{Reason: ReasonUnavailable, Description: "the tenant's signing keys cannot be fetched; retry later", Err: err}
		}
		key, err := st.kf.KeyfuncCtx(ctx)(tok)
		if err != nil {
			if t.fetchFailing.Load() {
				return nil, &Error{Reason: ReasonUnavailable, Description: "the tenant's signing keys cannot be fetched; retry later", Err: err}
			}
			if errors.Is(err, jwkset.ErrKeyNotFound) || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "rate limiter") {
				return nil, refuse(ReasonSignature, "the token's signing key (kid) is not one of the tenant's keys")
			}
			return nil, refuse(ReasonSignature, "the token's signing key cannot be used")
		}
		return key, nil
	})
	if err != nil {
		var e *Error
		switch {
		case errors.As(err, &e):
			return Caller{}, e
		case errors.Is(err, jwt.ErrTokenMalformed):
			return Caller{}, refuse(ReasonMalformed, "the bearer token is not a valid JWT")
		case tok != nil && tok.Header["alg"] != "RS256":
			return Caller{}, refuse(ReasonAlgorithm, "only RS256 tokens are accepted")
		case errors.Is(err, jwt.ErrTokenExpired):
			return Caller{}, refuse(ReasonExpired, "the token has expired")
		case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
			return Caller{}, refuse(ReasonNotYetValid, "the token is not valid yet (nbf or iat is in the future)")
		case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
			return Caller{}, refuse(ReasonExpired, "the token has no expiry (exp)")
		case errors.Is(err, jwt.ErrTokenSignatureInvalid):
			return Caller{}, refuse(ReasonSignature, "the token's signature is invalid")
		default:
			return Caller{}, refuse(ReasonMalformed, "the bearer token is not a valid JWT")
		}
	}
	// Signature and lifetime hold; now the claims.
	var wantIss string
	switch c.Version {
	case "1.0":
		wantIss = st.issuerV1
	case "2.0":
		wantIss = st.issuerV2
	default:
		return Caller{}, refuse(ReasonIssuer, "the token version (ver) is not 1.0 or 2.0")
	}
	if c.Issuer != wantIss {
		return Caller{}, refuse(ReasonIssuer, "the token's issuer is not the tenant's issuer for its version")
	}
	if len(c.Audience) != 1 || !v.audiences[c.Audience[0]] {
		return Caller{}, refuse(ReasonAudience, "the token's audience (aud) is not scanhook's")
	}
	// App-only: idtyp=app where Entra sends it (optional claim); without
	// it, a user token is known by scp, and an app token has oid == sub.
	if c.IDType != "" && c.IDType != "app" || c.Scope != "" || c.IDType == "" && (c.ObjectID == "" || c.ObjectID != c.Subject) {
		return Caller{}, refuse(ReasonAppOnly, "only app-only tokens (an application or managed identity) are accepted")
	}
	caller := Caller{TenantID: c.TenantID, ClientID: c.AppID, ObjectID: c.ObjectID, Roles: c.Roles, Version: c.Version}
	if c.Version == "2.0" {
		caller.ClientID = c.AZP
	}
	if len(v.clients) > 0 || len(v.objects) > 0 {
		if !v.clients[strings.ToLower(caller.ClientID)] && !v.objects[strings.ToLower(caller.ObjectID)] {
			return Caller{}, refuse(ReasonCaller, "the calling application (appid/azp or oid) is not allowed")
		}
	}
	for _, r := range v.roles {
		if !slices.Contains(c.Roles, r) {
			return Caller{}, refuse(ReasonRole, "the token lacks a required app role")
		}
	}
	return caller, nil
}
