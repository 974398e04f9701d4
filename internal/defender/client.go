// Package defender owns scanhook's Microsoft Defender for Endpoint API
// client: Entra ID tokens through azidentity, the base URL and scope of each
// cloud, strict sliding-window rate limits per endpoint family, a circuit
// breaker per family, input checks before anything is sent, and typed errors
// (already scanning, not found, throttled with Retry-After, ...).
//
// It never retries: the dispatcher owns retries and reads Kind, IsRetryable
// and Error.RetryAfter to decide. It knows nothing of storage or rules.
package defender

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/scanhook/scanhook/internal/domain"
)

// Deps are the client's collaborators. Every field is optional.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Transport sends every request, Entra ID's included. nil means a clone
	// of http.DefaultTransport: the system roots, which SSL_CERT_FILE and
	// SSL_CERT_DIR select on Linux.
	Transport http.RoundTripper
	// Limiter nil means a SlidingWindowLimiter from Config.RateLimit.
	Limiter Limiter
	// Credential nil means the one Config.Credential names.
	Credential azcore.TokenCredential
	Getenv     func(string) string
	ReadFile   func(string) ([]byte, error)
	Now        func() time.Time
	// BreakerFailures is how many consecutive failures open a family's
	// breaker (default 5); BreakerOpenFor how long it stays open before one
	// probe call is let through (default 30s).
	BreakerFailures int
	BreakerOpenFor  time.Duration
}

// Breaker defaults.
const (
	DefaultBreakerFailures = 5
	DefaultBreakerOpenFor  = 30 * time.Second
)

// Client calls the Defender API. It is safe for concurrent use.
type Client struct {
	cfg     Config // effective
	base    string
	http    *http.Client
	cred    azcore.TokenCredential
	limiter Limiter
	log     *slog.Logger
	now     func() time.Time
	m       *metrics
	openFor time.Duration

	breakers [numFamilies]*gobreaker.TwoStepCircuitBreaker[struct{}]
	mu       sync.Mutex
	openedAt [numFamilies]time.Time
}

// Response size caps: a list of 10,000 actions is ~10 MB.
const maxResponseBody = 64 << 20

// New builds a client. It validates cfg and builds the credential, but
// sends nothing.
func New(cfg Config, deps Deps) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.Effective()
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Getenv == nil {
		deps.Getenv = os.Getenv
	}
	if deps.ReadFile == nil {
		deps.ReadFile = os.ReadFile
	}
	if deps.Transport == nil {
		deps.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if deps.BreakerFailures <= 0 {
		deps.BreakerFailures = DefaultBreakerFailures
	}
	if deps.BreakerOpenFor <= 0 {
		deps.BreakerOpenFor = DefaultBreakerOpenFor
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, fmt.Errorf("defender metrics: %w", err)
	}
	c := &Client{
		cfg:  cfg,
		base: cfg.APIURL,
		http: &http.Client{
			Transport: deps.Transport,
			// A redirect would be a misconfigured api_url; following it
			// could carry the token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		cred:    deps.Credential,
		limiter: deps.Limiter,
		log:     deps.Logger.With("component", "defender"),
		now:     deps.Now,
		m:       m,
		openFor: deps.BreakerOpenFor,
	}
	if c.limiter == nil {
		l, err := NewSlidingWindowLimiter(SlidingWindowOptions{
			Windows: []Window{
				{Limit: cfg.RateLimit.PerMinute, Length: time.Minute},
				{Limit: cfg.RateLimit.PerHour, Length: time.Hour},
			},
			Now: deps.Now,
		})
		if err != nil {
			return nil, fmt.Errorf("defender.rate_limit: %w", err)
		}
		c.limiter = l
	}
	if c.cred == nil {
		if c.cred, err = newCredential(cfg, deps, deps.Transport); err != nil {
			return nil, err
		}
	}
	// gobreaker counts failures in a uint32: a larger threshold could not
	// be reached, so it is capped at the largest, not let wrap to a small one.
	failures := uint32(math.MaxUint32)
	if n := int64(deps.BreakerFailures); n > 0 && n < math.MaxUint32 {
		failures = uint32(n)
	}
	for _, f := range Families() {
		c.m.breaker.WithLabelValues(f.String()).Set(0)
		c.breakers[f] = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
			Name:        "defender-" + f.String(),
			MaxRequests: 1,
			Interval:    time.Minute,
			Timeout:     deps.BreakerOpenFor,
			ReadyToTrip: func(counts gobreaker.Counts) bool {
				return counts.ConsecutiveFailures >= failures
			},
			IsExcluded:    breakerExcluded,
			OnStateChange: c.breakerChanged(f),
		})
	}
	return c, nil
}

// DryRun reports whether the client refuses to change anything.
func (c *Client) DryRun() bool { return c.cfg.DryRun }

// Config returns the effective configuration (defaults and cloud applied).
func (c *Client) Config() Config { return c.cfg }

// BreakerState returns the state of a family's breaker: "closed",
// "half-open" or "open".
func (c *Client) BreakerState(f Family) string {
	if f < 0 || f >= numFamilies {
		return ""
	}
	return c.breakers[f].State().String()
}

// Room says how many more calls of family the rate limit would admit now,
// and when none, how long until one (see RoomLimiter); it takes nothing. A
// limiter that cannot tell answers "room for any number". A caller with
// work that can wait (the dispatcher's queue) asks before it starts
// something the limiter would only hold back.
func (c *Client) Room(ctx context.Context, f Family) (calls int, wait time.Duration, err error) {
	rl, ok := c.limiter.(RoomLimiter)
	if !ok {
		return math.MaxInt, 0, nil
	}
	calls, wait, err = rl.Room(ctx, f)
	if err != nil {
		return 0, 0, fmt.Errorf("predict the rate limit room of %s: %w", f, err)
	}
	return calls, wait, nil
}

// breakerExcluded keeps answers about one machine or one request from
// moving the breaker: they say nothing about Defender's health. 401 counts
// as a failure: it hits every call alike (consent, audience, clock), and
// the breaker then spares Entra ID and Defender a stream of doomed calls.
// 403 is excluded because Defender also answers it for one device group.
func breakerExcluded(err error) bool {
	var ns notSentError
	if errors.As(err, &ns) {
		return true
	}
	switch KindOf(err) {
	case NotFound, BadRequest, AlreadyScanning, Forbidden, Invalid, Canceled, DryRun:
		return true
	}
	return false
}

// notSentError marks, for the breaker only, a call that never reached
// Defender (the limiter wait ended first).
type notSentError struct{ error }

func (c *Client) breakerChanged(f Family) func(string, gobreaker.State, gobreaker.State) {
	return func(name string, from, to gobreaker.State) {
		// Called with the breaker's lock held: no breaker calls here.
		c.m.breaker.WithLabelValues(f.String()).Set(float64(to))
		c.mu.Lock()
		if to == gobreaker.StateOpen {
			c.openedAt[f] = c.now()
		}
		c.mu.Unlock()
		level := slog.LevelWarn
		if to == gobreaker.StateClosed {
			level = slog.LevelInfo
		}
		c.log.Log(context.Background(), level, "defender circuit breaker state changed",
			"family", f.String(), "from", from.String(), "to", to.String())
	}
}

// request is one API call, its path already built from checked parts.
type request struct {
	op     string
	family Family
	method string
	path   string // starts with /api/
	query  string // encoded, without '?'
	body   []byte
	want   []int // success statuses
}

// scanRequest is the runAntiVirusScan body. Defender's keys are
// case-sensitive: exactly Comment and ScanType.
type scanRequest struct {
	Comment  string `json:"Comment"`
	ScanType string `json:"ScanType"`
}

type cancelRequest struct {
	Comment string `json:"Comment"`
}

// alreadyScanningSkew is how much older than our request a returned
// action's creation time may be and still count as the one we created:
// clocks on NTP differ by far less, and being wrong only changes the label.
const alreadyScanningSkew = 2 * time.Minute

// RunAntiVirusScan asks Defender to scan a machine. When Defender reports a
// scan already pending on the machine, the error's Kind is AlreadyScanning:
// with the 400 answer the action is nil; when Defender answers 201 with the
// existing pending action (recognised by a comment that is not ours or a
// creation time before our request), that action is returned with the error.
func (c *Client) RunAntiVirusScan(ctx context.Context, machineID string, scanType string, comment string) (*MachineAction, error) {
	const op = "runAntiVirusScan"
	if !ValidMachineID(machineID) {
		return nil, c.invalid(op, "machine id %q is not 40 hexadecimal characters", machineID)
	}
	if scanType != domain.ScanQuick && scanType != domain.ScanFull {
		return nil, c.invalid(op, "scan type %q: want Quick or Full", scanType)
	}
	comment = strings.TrimSpace(comment)
	if comment == "" {
		return nil, c.invalid(op, "comment is empty (Defender requires one)")
	}
	if c.cfg.DryRun {
		return nil, c.dryRun(op)
	}
	body, err := json.Marshal(scanRequest{Comment: comment, ScanType: scanType})
	if err != nil {
		return nil, c.invalid(op, "comment: %v", err)
	}
	sentAt := c.now()
	var a MachineAction
	err = c.do(ctx, request{
		op: op, family: ScanActions, method: http.MethodPost,
		path: "/api/machines/" + machineID + "/runAntiVirusScan",
		body: body, want: []int{http.StatusCreated, http.StatusOK},
	}, &a)
	if err != nil {
		return nil, err
	}
	if a.ID == "" {
		return nil, c.malformed(op, http.StatusCreated, errors.New("the machine action has no id"))
	}
	if existingAction(&a, comment, sentAt) {
		return &a, &Error{
			Kind: AlreadyScanning, Op: op, Status: http.StatusCreated,
			Message: fmt.Sprintf("Defender returned the machine's pending action %s (created %s, status %s) instead of a new one",
				a.ID, a.CreationDateTimeUTC.Format(time.RFC3339), a.Status),
		}
	}
	return &a, nil
}

// existingAction tells a pending action Defender returned in place of a new
// one from the action we created.
func existingAction(a *MachineAction, comment string, sentAt time.Time) bool {
	got := strings.TrimSpace(a.RequestorComment)
	// Defender may shorten a long comment: a prefix still counts as ours.
	if got != "" && got != comment && !strings.HasPrefix(comment, got) {
		return true
	}
	return !a.CreationDateTimeUTC.IsZero() && a.CreationDateTimeUTC.Before(sentAt.Add(-alreadyScanningSkew))
}

// GetMachine fetches a machine by its id or its computer name.
func (c *Client) GetMachine(ctx context.Context, idOrName string) (*Machine, error) {
	const op = "getMachine"
	if !ValidMachineID(idOrName) && !ValidDNSName(idOrName) {
		return nil, c.invalid(op, "%q is neither a machine id nor a computer name", idOrName)
	}
	var m Machine
	err := c.do(ctx, request{
		op: op, family: MachineReads, method: http.MethodGet,
		path: "/api/machines/" + strings.TrimSuffix(idOrName, "."),
		want: []int{http.StatusOK},
	}, &m)
	if err != nil {
		return nil, err
	}
	if m.ID == "" {
		return nil, c.malformed(op, http.StatusOK, errors.New("the machine has no id"))
	}
	return &m, nil
}

// FindMachineByDNSName finds a machine by its computerDnsName. No match is
// a NotFound error. Several matches (a device re-onboarded keeps its old
// record for a while) give the one seen most recently.
func (c *Client) FindMachineByDNSName(ctx context.Context, name string) (*Machine, error) {
	const op = "findMachineByDnsName"
	if !ValidDNSName(name) {
		return nil, c.invalid(op, "%q is not a DNS name", name)
	}
	return c.findMachine(ctx, op, "computerDnsName", strings.TrimSuffix(name, "."))
}

// FindMachineByComputerName finds a machine by its DNS name and, for a bare
// computer name such as WS-042 (as Windows, Splunk and Elastic give it),
// which the computerDnsName filter never matches, by GET
// /api/machines/{name}, which takes computer names. An answer whose
// computerDnsName is not that computer's is NotFound: a scan never goes to a
// machine on a guess.
func (c *Client) FindMachineByComputerName(ctx context.Context, name string) (*Machine, error) {
	m, err := c.FindMachineByDNSName(ctx, name)
	name = strings.TrimSuffix(name, ".")
	if strings.Contains(name, ".") || KindOf(err) != NotFound {
		return m, err
	}
	const tried = "tried computerDnsName and the computer name"
	m, err = c.GetMachine(ctx, name)
	switch {
	case KindOf(err) == NotFound:
		return nil, fmt.Errorf("%s: %w", tried, err)
	case err != nil:
		return nil, err
	}
	if label, _, _ := strings.Cut(m.ComputerDNSName, "."); !strings.EqualFold(label, name) {
		return nil, &Error{Kind: NotFound, Op: "getMachine", Status: http.StatusOK,
			Message: fmt.Sprintf("%s: Defender answered computer name %q with machine %s named %q",
				tried, name, truncate(m.ID, 64), truncate(m.ComputerDNSName, 128))}
	}
	return m, nil
}

// FindMachineByAADDeviceID finds a machine by its Entra ID (Azure AD)
// device id, the GUID Sentinel host entities, Graph and Defender alerts
// carry. No match is a NotFound error; several matches (a re-onboarded
// device) give the one seen most recently.
func (c *Client) FindMachineByAADDeviceID(ctx context.Context, id string) (*Machine, error) {
	const op = "findMachineByAadDeviceId"
	// An Entra ID device id has the canonical GUID form of an action id;
	// holding the value to it keeps anything else out of the filter, which
	// odataString then only has to quote.
	if !ValidActionID(id) {
		return nil, c.invalid(op, "AAD device id %q is not a GUID", id)
	}
	return c.findMachine(ctx, op, "aadDeviceId", strings.ToLower(id))
}

// FindByIPWindow is how far from the timestamp Defender looks for machines
// seen with an address, and FindByIPMaxAge how old the timestamp may be.
const (
	FindByIPWindow = 15 * time.Minute
	FindByIPMaxAge = 30 * 24 * time.Hour
)

// FindMachinesByIP lists the machines Defender saw with an internal IP
// address within 15 minutes of at (GET
// /api/machines/findbyip(ip='…',timestamp=…), its own rate limit family,
// MachineIPReads). The address must be an internal one in canonical form
// and at within the last 30 days (a later time is taken as now): both are
// checked before anything goes into the URL. Zero machines is no error;
// the caller decides what several mean.
func (c *Client) FindMachinesByIP(ctx context.Context, ip string, at time.Time) ([]Machine, error) {
	const op = "findMachinesByIp"
	a, err := netip.ParseAddr(ip)
	if err != nil || a.Zone() != "" || a.Is4In6() || a.String() != ip || !a.IsPrivate() && !sharedAddressSpace.Contains(a) ||
		a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
		return nil, c.invalid(op, "%q is not an internal IP address", ip)
	}
	now := c.now()
	if at.IsZero() || at.After(now) {
		at = now
	}
	if now.Sub(at) > FindByIPMaxAge {
		return nil, c.invalid(op, "timestamp %s is more than 30 days old", at.UTC().Format(time.RFC3339))
	}
	var list struct {
		Value *[]Machine `json:"value"`
	}
	err = c.do(ctx, request{
		op: op, family: MachineIPReads, method: http.MethodGet,
		path: "/api/machines/findbyip(ip='" + a.String() + "',timestamp=" + at.UTC().Truncate(time.Second).Format(time.RFC3339) + ")",
		want: []int{http.StatusOK},
	}, &list)
	if err != nil {
		return nil, err
	}
	if list.Value == nil {
		return nil, c.malformed(op, http.StatusOK, errors.New(`the response has no "value" list`))
	}
	return *list.Value, nil
}

// sharedAddressSpace is 100.64.0.0/10 (RFC 6598), internal to a carrier or
// an organisation.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// findMachine lists the machines whose property equals value (checked by
// the caller, quoted here) and picks the one seen most recently.
func (c *Client) findMachine(ctx context.Context, op, property, value string) (*Machine, error) {
	var list struct {
		Value *[]Machine `json:"value"`
	}
	err := c.do(ctx, request{
		op: op, family: MachineReads, method: http.MethodGet,
		path:  "/api/machines",
		query: "$filter=" + queryEscape(property+" eq "+odataString(value)),
		want:  []int{http.StatusOK},
	}, &list)
	if err != nil {
		return nil, err
	}
	if list.Value == nil {
		return nil, c.malformed(op, http.StatusOK, errors.New(`the response has no "value" list`))
	}
	best := mostRecentlySeen(*list.Value)
	if best == nil {
		return nil, &Error{Kind: NotFound, Op: op, Status: http.StatusOK,
			Message: fmt.Sprintf("no machine has %s %q", property, value)}
	}
	return best, nil
}

// mostRecentlySeen picks, among machines with an id, the one with the
// latest lastSeen; the first one on a tie, nil when there is none.
func mostRecentlySeen(ms []Machine) *Machine {
	var best *Machine
	for i := range ms {
		m := &ms[i]
		if m.ID == "" {
			continue
		}
		if best == nil || m.LastSeen.After(best.LastSeen) {
			best = m
		}
	}
	return best
}

// GetAction fetches one machine action.
func (c *Client) GetAction(ctx context.Context, id string) (*MachineAction, error) {
	const op = "getMachineAction"
	if !ValidActionID(id) {
		return nil, c.invalid(op, "action id %q is not a GUID", id)
	}
	var a MachineAction
	err := c.do(ctx, request{
		op: op, family: ActionReads, method: http.MethodGet,
		path: "/api/machineactions/" + id,
		want: []int{http.StatusOK},
	}, &a)
	if err != nil {
		return nil, err
	}
	if a.ID == "" {
		return nil, c.malformed(op, http.StatusOK, errors.New("the machine action has no id"))
	}
	return &a, nil
}

// maxQuery bounds the encoded query of a list call. IIS, which fronts
// Defender's API, rejects query strings over 2,048 bytes by default.
const maxQuery = 1900

// ListActions lists machine actions matching filter. With IDs it brings
// back the state of many actions in one call per ~30 ids (the query length
// decides); actions Defender does not know are simply absent. It does not
// follow @odata.nextLink: each call returns at most Top actions (with IDs,
// Top defaults to the chunk's size, so nothing is cut off). On an error the
// actions of the chunks already fetched are returned with it.
func (c *Client) ListActions(ctx context.Context, filter ActionFilter) ([]MachineAction, error) {
	const op = "listMachineActions"
	var clauses []string
	if filter.MachineID != "" {
		if !ValidMachineID(filter.MachineID) {
			return nil, c.invalid(op, "machine id %q is not 40 hexadecimal characters", filter.MachineID)
		}
		clauses = append(clauses, "machineId eq "+odataString(filter.MachineID))
	}
	if filter.Type != "" {
		if !enumValueRE.MatchString(filter.Type) {
			return nil, c.invalid(op, "action type %q is not a type name", filter.Type)
		}
		clauses = append(clauses, "type eq "+odataString(filter.Type))
	}
	if filter.Status != "" {
		if !enumValueRE.MatchString(filter.Status) {
			return nil, c.invalid(op, "status %q is not a status name", filter.Status)
		}
		clauses = append(clauses, "status eq "+odataString(filter.Status))
	}
	if !filter.CreatedSince.IsZero() {
		clauses = append(clauses, "creationDateTimeUtc ge "+filter.CreatedSince.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z"))
	}
	if filter.Top < 0 || filter.Top > MaxTop {
		return nil, c.invalid(op, "top %d is outside 0..%d", filter.Top, MaxTop)
	}
	seen := make(map[string]bool, len(filter.IDs))
	var ids []string
	for _, id := range filter.IDs {
		if !ValidActionID(id) {
			return nil, c.invalid(op, "action id %q is not a GUID", id)
		}
		if k := strings.ToLower(id); !seen[k] {
			seen[k] = true
			ids = append(ids, id)
		}
	}
	if len(filter.IDs) > 0 && len(ids) == 0 {
		return nil, nil
	}

	query := func(ids []string) string {
		cl := clauses
		if len(ids) > 0 {
			parts := make([]string, len(ids))
			for i, id := range ids {
				parts[i] = "id eq " + odataString(id)
			}
			idc := strings.Join(parts, " or ")
			if len(ids) > 1 && len(clauses) > 0 {
				idc = "(" + idc + ")"
			}
			cl = append([]string{idc}, clauses...)
		}
		top := filter.Top
		if top == 0 {
			top = MaxTop
			if len(ids) > 0 {
				top = len(ids)
			}
		}
		q := "$top=" + strconv.Itoa(top)
		if len(cl) > 0 {
			q = "$filter=" + queryEscape(strings.Join(cl, " and ")) + "&" + q
		}
		return q
	}

	// Chunk the ids so that no query passes maxQuery.
	var chunks [][]string
	if len(ids) == 0 {
		chunks = [][]string{nil}
	}
	for start := 0; start < len(ids); {
		end := start + 1
		for end < len(ids) && len(query(ids[start:end+1])) <= maxQuery {
			end++
		}
		chunks = append(chunks, ids[start:end])
		start = end
	}

	var all []MachineAction
	for _, chunk := range chunks {
		var list struct {
			Value *[]MachineAction `json:"value"`
		}
		err := c.do(ctx, request{
			op: op, family: ActionReads, method: http.MethodGet,
			path:  "/api/machineactions",
			query: query(chunk),
			want:  []int{http.StatusOK},
		}, &list)
		if err != nil {
			return all, err
		}
		if list.Value == nil {
			return all, c.malformed(op, http.StatusOK, errors.New(`the response has no "value" list`))
		}
		all = append(all, *list.Value...)
	}
	return all, nil
}

// CancelAction asks Defender to cancel an action that is not final yet.
func (c *Client) CancelAction(ctx context.Context, id, comment string) (*MachineAction, error) {
	const op = "cancelMachineAction"
	if !ValidActionID(id) {
		return nil, c.invalid(op, "action id %q is not a GUID", id)
	}
	comment = strings.TrimSpace(comment)
	if comment == "" {
		return nil, c.invalid(op, "comment is empty (Defender requires one)")
	}
	if c.cfg.DryRun {
		return nil, c.dryRun(op)
	}
	body, err := json.Marshal(cancelRequest{Comment: comment})
	if err != nil {
		return nil, c.invalid(op, "comment: %v", err)
	}
	var a MachineAction
	err = c.do(ctx, request{
		op: op, family: ScanActions, method: http.MethodPost,
		path: "/api/machineactions/" + id + "/cancel",
		body: body, want: []int{http.StatusOK, http.StatusCreated},
	}, &a)
	if err != nil {
		return nil, err
	}
	return &a, nil
}

func (c *Client) invalid(op, format string, args ...any) error {
	for i, a := range args {
		// Untrusted input goes into the message: keep it short.
		if s, ok := a.(string); ok {
			args[i] = truncate(s, 128)
		}
	}
	err := &Error{Kind: Invalid, Op: op, Message: fmt.Sprintf(format, args...), NotSent: true}
	c.m.calls.WithLabelValues(op, Invalid.String()).Inc()
	return err
}

func (c *Client) dryRun(op string) error {
	c.m.calls.WithLabelValues(op, DryRun.String()).Inc()
	return &Error{Kind: DryRun, Op: op, Message: "defender.dry_run is on: nothing sent", NotSent: true}
}

func (c *Client) malformed(op string, status int, err error) error {
	return &Error{Kind: Server, Op: op, Status: status, Message: "malformed response", Err: err}
}

// do sends one call through the breaker and the limiter and decodes a
// success into out. It never retries.
func (c *Client) do(ctx context.Context, r request, out any) (err error) {
	br := c.breakers[r.family]
	done, berr := br.Allow()
	if berr != nil {
		e := &Error{Kind: Unavailable, Op: r.op, Message: "circuit breaker " + br.State().String() + ": Defender calls of this kind are failing", Err: berr}
		if errors.Is(berr, gobreaker.ErrOpenState) {
			c.mu.Lock()
			if left := c.openedAt[r.family].Add(c.openFor).Sub(c.now()); left > 0 {
				e.RetryAfter = left
			}
			c.mu.Unlock()
		}
		e.NotSent = true
		c.m.calls.WithLabelValues(r.op, Unavailable.String()).Inc()
		return e
	}
	// The breaker hears what Defender's answer says about its health (see
	// breakerExcluded); a call that never left is neither.
	sent := false
	defer func() {
		if sent {
			done(err)
		} else {
			done(notSentError{err})
		}
	}()

	waitStart := time.Now()
	if werr := c.limiter.Wait(ctx, r.family); werr != nil {
		var le *LimitError
		var e *Error
		switch {
		case errors.As(werr, &le):
			// Our own limit, not Defender's: the caller reschedules
			// without counting it as a failed attempt.
			e = &Error{Kind: Throttled, Op: r.op, Code: LocalRateLimit, Local: true,
				Message:    "local rate limit of " + r.family.String() + ": nothing sent",
				RetryAfter: max(le.Wait, 0), Err: werr}
		case ctx.Err() != nil:
			e = c.ctxError(ctx, r.op, werr)
		default:
			// A shared limiter's backend failed.
			e = &Error{Kind: Unavailable, Op: r.op, Message: "rate limiter failed", Err: werr}
		}
		e.NotSent = true
		err = e
		c.m.calls.WithLabelValues(r.op, outcomeLabel(err)).Inc()
		return err
	}
	sent = true
	c.m.limiterWait.WithLabelValues(r.family.String()).Observe(time.Since(waitStart).Seconds())
	if cl, ok := c.limiter.(CompletionLimiter); ok {
		defer cl.Done(r.family)
	}

	start := time.Now()
	status, err := c.send(ctx, r, out)
	elapsed := time.Since(start)
	c.m.latency.WithLabelValues(r.op).Observe(elapsed.Seconds())
	outcome := "ok"
	if err != nil {
		outcome = outcomeLabel(err)
	}
	c.m.calls.WithLabelValues(r.op, outcome).Inc()
	if c.log.Enabled(ctx, slog.LevelDebug) {
		// Nothing here carries the token: Error() holds the op, status and
		// Defender's error fields only.
		attrs := []any{"op", r.op, "status", status, "outcome", outcome, "duration", elapsed}
		if err != nil {
			c.log.Debug("defender call failed", append(attrs, "error", err.Error())...)
		} else {
			c.log.Debug("defender call", attrs...)
		}
	}
	return err
}

// send does the HTTP exchange under the per-call deadline.
func (c *Client) send(parent context.Context, r request, out any) (int, error) {
	ctx, cancel := context.WithTimeout(parent, c.cfg.Timeout)
	defer cancel()

	tok, err := c.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{c.cfg.Scope}})
	if err != nil {
		e := c.tokenError(parent, ctx, r.op, err)
		e.NotSent = true // nothing went to Defender without a token
		return 0, e
	}
	u := c.base + r.path
	if r.query != "" {
		u += "?" + r.query
	}
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return 0, &Error{Kind: Invalid, Op: r.op, Message: "building the request", Err: err, NotSent: true}
	}
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "scanhook")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		e := c.transportError(parent, ctx, r.op, err)
		e.NotSent = dialFailed(err)
		return 0, e
	}
	defer resp.Body.Close()

	if !contains(r.want, resp.StatusCode) {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return resp.StatusCode, c.statusError(r.op, resp, raw)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return resp.StatusCode, c.transportError(parent, ctx, r.op, err)
	}
	if len(raw) > maxResponseBody {
		return resp.StatusCode, c.malformed(r.op, resp.StatusCode, fmt.Errorf("body larger than %d bytes", maxResponseBody))
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return resp.StatusCode, c.malformed(r.op, resp.StatusCode, err)
	}
	return resp.StatusCode, nil
}

func (c *Client) statusError(op string, resp *http.Response, raw []byte) *Error {
	code, msg, target := parseErrorBody(raw)
	e := &Error{Kind: kindForStatus(resp.StatusCode), Op: op, Status: resp.StatusCode, Code: code, Message: msg, Target: target}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		e.Kind = Server
		e.Message = "unexpected redirect (is defender.api_url right?)"
	}
	if e.Kind == BadRequest && resp.StatusCode == http.StatusBadRequest && op == "runAntiVirusScan" && isAlreadyPending(code, msg) {
		e.Kind = AlreadyScanning
	}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), c.now()); ok {
		e.RetryAfter = d
	}
	return e
}

// ctxError classifies a context error: the caller's cancellation or
// deadline, or our per-call deadline.
func (c *Client) ctxError(parent context.Context, op string, err error) *Error {
	if errors.Is(parent.Err(), context.Canceled) {
		return &Error{Kind: Canceled, Op: op, Err: err}
	}
	return &Error{Kind: Timeout, Op: op, Err: err}
}

func (c *Client) transportError(parent, ctx context.Context, op string, err error) *Error {
	if parent.Err() != nil || ctx.Err() != nil {
		e := c.ctxError(parent, op, err)
		if e.Kind == Timeout && parent.Err() == nil {
			e.Message = fmt.Sprintf("no answer within %s", c.cfg.Timeout)
		}
		return e
	}
	return &Error{Kind: Network, Op: op, Err: err}
}

// tokenError classifies a failure to get a token. azidentity's errors carry
// Entra ID's answer, never the secret or a token.
func (c *Client) tokenError(parent, ctx context.Context, op string, err error) *Error {
	if parent.Err() != nil || ctx.Err() != nil {
		e := c.ctxError(parent, op, err)
		e.Message = "getting an Entra ID token"
		return e
	}
	e := &Error{Kind: Unauthorized, Op: op, Message: "getting an Entra ID token", Err: err}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		switch s := afe.RawResponse.StatusCode; {
		case s == http.StatusTooManyRequests:
			e.Kind = Throttled
			if d, ok := parseRetryAfter(afe.RawResponse.Header.Get("Retry-After"), c.now()); ok {
				e.RetryAfter = d
			}
		case s >= 500:
			e.Kind = Server
		}
		return e
	}
	if reachFailed(err) || errors.As(err, &afe) {
		// No answer: the token endpoint could not be reached (refused,
		// reset, a certificate not trusted). An AuthenticationFailedError
		// without a response is azidentity's word for that too, with the
		// cause sometimes only in its text. Nobody refused the credential.
		e.Kind = Network
	}
	return e
}

// reachFailed reports whether err is a failure to reach a server: a
// network error or a TLS handshake that did not verify.
func reachFailed(err error) bool {
	var ne net.Error
	var cve *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var re tls.RecordHeaderError
	var ae tls.AlertError
	return errors.As(err, &ne) || errors.As(err, &cve) || errors.As(err, &ua) || errors.As(err, &he) ||
		errors.As(err, &ci) || errors.As(err, &re) || errors.As(err, &ae)
}

// dialFailed reports whether a transport error happened while connecting,
// before any byte of the request was written. net/http only retries a
// POST on a new connection when nothing was written on the old one, so a
// final dial error means no attempt of the request went out. Anything
// else (TLS, a reset, a timeout) may have come after the request left.
func dialFailed(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// outcomeLabel is the outcome of scanhook_defender_calls_total for a failed
// call: its kind, with our own rate limit told from Defender's.
func outcomeLabel(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Local && e.Kind == Throttled {
		return "throttled_local"
	}
	return KindOf(err).String()
}

func contains(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
