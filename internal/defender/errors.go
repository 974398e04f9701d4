package defender

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Kind classifies a failed call so that the dispatcher can decide what to do
// without looking at HTTP details.
type Kind int

// The kinds of Error. Retryable kinds: Throttled, Server, Timeout, Network,
// Unavailable, Unauthorized (see IsRetryable).
const (
	KindUnknown Kind = iota
	// AlreadyScanning: Defender has a scan pending on the machine. Not a
	// failure and not to be retried: the pending scan covers the request.
	AlreadyScanning
	NotFound
	BadRequest
	Unauthorized
	Forbidden
	Throttled
	Server
	Timeout
	// Network: the connection failed or broke (refused, reset, TLS).
	Network
	// Unavailable: the circuit breaker is open; nothing was sent.
	Unavailable
	// Invalid: the client rejected the input before sending anything.
	Invalid
	// Canceled: the caller's context was canceled.
	Canceled
	// DryRun: dry_run is on and the call would have changed something.
	DryRun
)

var kindNames = [...]string{
	KindUnknown:     "unknown",
	AlreadyScanning: "already_scanning",
	NotFound:        "not_found",
	BadRequest:      "bad_request",
	Unauthorized:    "unauthorized",
	Forbidden:       "forbidden",
	Throttled:       "throttled",
	Server:          "server",
	Timeout:         "timeout",
	Network:         "network",
	Unavailable:     "unavailable",
	Invalid:         "invalid",
	Canceled:        "canceled",
	DryRun:          "dry_run",
}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Error is every error the client returns.
type Error struct {
	Kind Kind
	// Op is the API operation: runAntiVirusScan, getMachine, ...
	Op string
	// Status is the HTTP status, 0 when no response came back.
	Status int
	// Code, Message and Target come from Defender's error envelope.
	Code, Message, Target string
	// RetryAfter is how long Defender (429), the breaker or our own rate
	// limiter (Local) asks to wait.
	RetryAfter time.Duration
	// Local marks a Throttled error from scanhook's own rate limiter (Code
	// LocalRateLimit): no call could be admitted before the context's
	// deadline, nothing was sent, and Defender's budget is untouched.
	Local bool
	// NotSent: the client knows the request never reached Defender (open
	// breaker, rate limiter, invalid input, dry run, no token, connection
	// refused). False means it may have, not that it did.
	NotSent bool
	Err     error
}

// LocalRateLimit is the Code of a local throttle (Error.Local).
const LocalRateLimit = "LocalRateLimit"

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("defender ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(e.Kind.String())
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d", e.Status)
		if e.Code != "" {
			b.WriteString(" ")
			b.WriteString(e.Code)
		}
		b.WriteString(")")
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Target != "" {
		b.WriteString(" [target ")
		b.WriteString(e.Target)
		b.WriteString("]")
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, "; retry after %s", e.RetryAfter)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of the first *Error in err's chain, KindUnknown
// for other non-nil errors, and KindUnknown for nil.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}

// RetryAfterOf returns the wait an error asks for, 0 if none.
func RetryAfterOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// IsLocalThrottle reports whether err is scanhook's own rate limiter
// holding a call back: nothing was sent, and trying again after RetryAfter
// is all there is to do. It is not a failure of the attempt.
func IsLocalThrottle(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Local && e.Kind == Throttled
}

// NothingCreated reports whether err proves that a call that creates
// something (runAntiVirusScan, cancel) changed nothing at Defender: the
// request was never sent, or Defender answered it with a status that
// refuses it before any work, a 4xx (408 Request Timeout excepted) or 503.
// Any other failure (timeout, reset, 500, 502, 504, a malformed success)
// leaves the question open, and so gives false; nil gives false too.
func NothingCreated(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	if e.NotSent {
		return true
	}
	switch s := e.Status; {
	case s == http.StatusRequestTimeout:
		return false
	case s >= 400 && s < 500, s == http.StatusServiceUnavailable:
		return true
	}
	return false
}

// IsRetryable reports whether trying the same call later may succeed.
// Unauthorized is retryable because it is a property of the deployment
// (consent, role, clock), fixed by an operator without touching the job;
// Forbidden is not, because Defender also answers 403 for one device's
// group, which no retry changes.
func IsRetryable(err error) bool {
	switch KindOf(err) {
	case Throttled, Server, Timeout, Network, Unavailable, Unauthorized:
		return true
	}
	return false
}

// Limits on what is read from an error response.
const (
	maxErrorBody    = 64 << 10
	maxErrorField   = 1024
	maxRetryAfter   = 24 * time.Hour
	defaultThrottle = 60 * time.Second
)

// errorEnvelope is Defender's (OData) error body.
type errorEnvelope struct {
	Error struct {
		Code    json.RawMessage `json:"code"`
		Message json.RawMessage `json:"message"`
		Target  json.RawMessage `json:"target"`
	} `json:"error"`
}

// parseErrorBody extracts code, message and target from an error body. A
// body that is not the envelope yields its first line as the message, so
// that a proxy's HTML error page still says something. Fields are capped
// and stripped of control characters: they end up in logs.
func parseErrorBody(body []byte) (code, message, target string) {
	var env errorEnvelope
	if err := json.Unmarshal(body, &env); err == nil {
		code = cleanField(jsonText(env.Error.Code))
		message = cleanField(jsonText(env.Error.Message))
		target = cleanField(jsonText(env.Error.Target))
		if code != "" || message != "" || target != "" {
			return code, message, target
		}
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	return "", cleanField(line), ""
}

// jsonText renders a JSON value as text: a string as itself, an object such
// as {"lang":"en","value":"..."} (the OData v3 message shape) by its value,
// anything else as its JSON.
func jsonText(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var v struct {
		Value *string `json:"value"`
	}
	if json.Unmarshal(raw, &v) == nil && v.Value != nil {
		return *v.Value
	}
	return string(raw)
}

func cleanField(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxErrorField {
		cut := maxErrorField
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP
// date (RFC 9110 §10.2.3). ok is false when the header is absent or
// unreadable. The result is clamped to [0, 24h].
func parseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		// Only digits: "1.5" or "-3" are not delay-seconds.
		for i := 0; i < len(v); i++ {
			if v[i] < '0' || v[i] > '9' {
				return 0, false
			}
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(maxRetryAfter/time.Second) {
			// Too large to be meant: ParseUint fails on overflow too.
			return maxRetryAfter, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d = t.Sub(now)
	switch {
	case d < 0:
		d = 0
	case d > maxRetryAfter:
		d = maxRetryAfter
	}
	// Round up: a date has one-second resolution and waiting less than it
	// says only earns another 429.
	if r := d % time.Second; r != 0 {
		d += time.Second - r
	}
	return d, true
}

// alreadyPendingCodes and the phrases below recognise Defender's 400 for a
// scan requested while another action is pending on the machine. The docs
// only describe it ("already in progress", "pending machine action"), so
// the match is on meaning rather than one exact text.
var alreadyPendingCodes = map[string]bool{
	"activerequestalreadyexists": true,
	"actionalreadyinprogress":    true,
	"pendingactionexists":        true,
}

func isAlreadyPending(code, message string) bool {
	if alreadyPendingCodes[strings.ToLower(code)] {
		return true
	}
	m := strings.ToLower(message)
	switch {
	case strings.Contains(m, "pending machine action"),
		strings.Contains(m, "already in progress"),
		strings.Contains(m, "already pending"),
		strings.Contains(m, "already running"),
		strings.Contains(m, "already exists") && strings.Contains(m, "action"),
		strings.Contains(m, "pending") && strings.Contains(m, "action") && strings.Contains(m, "already"):
		return true
	}
	return false
}

// kindForStatus maps an HTTP error status to a Kind.
func kindForStatus(status int) Kind {
	switch {
	case status == http.StatusBadRequest:
		return BadRequest
	case status == http.StatusUnauthorized:
		return Unauthorized
	case status == http.StatusForbidden:
		return Forbidden
	case status == http.StatusNotFound, status == http.StatusGone:
		return NotFound
	case status == http.StatusTooManyRequests:
		return Throttled
	case status == http.StatusRequestTimeout, status == http.StatusGatewayTimeout:
		return Timeout
	case status >= 500:
		return Server
	case status >= 400:
		return BadRequest
	}
	return Server
}
