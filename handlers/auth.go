package handlers

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v5"
	"golang.org/x/time/rate"
)

// SignatureHeader carries the HMAC signature:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">". Several v1
// values may be sent (a sender rotating its secret); any valid one suffices.
const SignatureHeader = "X-Scanhook-Signature"

// maxSignatures bounds the v1 values checked per request.
const maxSignatures = 4

// auth is the outcome of authenticating a webhook request.
type auth struct {
	// body is set when the signature check had to read it.
	body []byte
	// replayKey is the signature to remember if the request is accepted.
	replayKey   *[sha256.Size]byte
	replayUntil time.Time
}

// bearerToken returns the token of "Authorization: Bearer <token>" (the
// scheme is case-insensitive), and whether the header was present at all.
func bearerToken(r *http.Request) (token string, present bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", true
	}
	return strings.TrimSpace(tok), true
}

// tokenEqual compares a presented token with a configured one in constant
// time; hashing first makes the time independent of the lengths too.
func tokenEqual(got string, want *[sha256.Size]byte) bool {
	g := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(g[:], want[:]) == 1
}

// authenticate checks the credentials of a webhook or explain request for
// src. Any one configured credential that is valid suffices. When only the
// signature can vouch for the request, the body is read (within the limit)
// to check it.
func (a *api) authenticate(c *echo.Context, src *source) (auth, error) {
	if src.noAuth {
		return auth{}, nil
	}
	req := c.Request()
	tok, presented := bearerToken(req)
	if src.bearer != nil && tok != "" && tokenEqual(tok, src.bearer) {
		return auth{}, nil
	}
	entraOK, entraErr := a.checkEntra(c, src, tok) // entra.go
	if entraOK {
		return auth{}, nil
	}
	qtok, hasQuery := req.URL.Query()["token"]
	presented = presented || hasQuery
	if src.query != nil && len(qtok) == 1 && qtok[0] != "" && tokenEqual(qtok[0], src.query) {
		return auth{}, nil
	}
	sig := req.Header.Values(SignatureHeader)
	if src.hmac != nil && len(sig) > 0 {
		au, err := a.checkSignature(c, src, sig)
		return au, preferEntraError(err, entraErr)
	}
	if entraErr != nil {
		return auth{}, entraErr
	}
	return auth{}, errUnauthorized(!presented && len(sig) == 0)
}

// checkSignature verifies the HMAC signature header. The timestamp is
// checked before the body is read, so stale or malformed signatures cost
// nothing; a valid signature seen before is refused as a replay.
func (a *api) checkSignature(c *echo.Context, src *source, values []string) (auth, error) {
	if len(values) != 1 {
		return auth{}, errUnauthorized(false)
	}
	ts, macs, ok := parseSignature(values[0])
	if !ok {
		return auth{}, errUnauthorized(false)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return auth{}, errUnauthorized(false)
	}
	now := a.now()
	signed := time.Unix(sec, 0)
	if d := now.Sub(signed); d > signatureSkew || d < -signatureSkew {
		return auth{}, errUnauthorized(false)
	}
	body, err := a.readUnverified(c)
	if err != nil {
		return auth{}, err
	}
	m := hmac.New(sha256.New, src.hmac)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	want := m.Sum(nil)
	for _, got := range macs {
		if hmac.Equal(got, want) {
			// Keyed by source too: two sources sharing a secret must not
			// see each other's signatures as replays.
			// Remembered until the signature is stale in any case (the
			// timestamp may be up to the skew in the future), with a
			// second to spare at the boundary.
			until := signed.Add(signatureSkew + time.Second)
			k := replayKeyFor(src.name, want, until)
			return auth{body: body, replayKey: &k, replayUntil: until}, nil
		}
	}
	return auth{}, errUnauthorized(false)
}

// readUnverified reads a body that only its signature can vouch for. It
// takes one of the unverified slots (429 when none is free, before any of
// the body is read) and gives the body server.unverified_read_timeout to
// arrive, so that slow or unsigned bodies hold neither a server.max_in_flight
// slot nor one of these for long.
func (a *api) readUnverified(c *echo.Context) ([]byte, error) {
	select {
	case a.unverified <- struct{}{}:
		defer func() { <-a.unverified }()
	default:
		return nil, &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimited, Title: "Too many requests",
			Detail: "too many signed bodies are being read to check their signature; retry after the time in Retry-After",
			Reason: reasonRateLimited, RetryAfter: time.Second}
	}
	if a.unverifiedTaken != nil {
		a.unverifiedTaken()
	}
	// The connection's deadline, so wall time rather than a.now. A writer
	// that cannot set one (ErrNotSupported) leaves server.read_timeout in
	// force.
	rc := http.NewResponseController(c.Response())
	deadline := rc.SetReadDeadline(time.Now().Add(a.unverifiedTimeout)) == nil
	body, err := a.readBody(c)
	if err != nil {
		var pe *Error
		if deadline && errors.As(err, &pe) && errors.Is(pe.Err, os.ErrDeadlineExceeded) {
			pe.Detail = "the body did not arrive within server.unverified_read_timeout"
		}
		return nil, err
	}
	if deadline {
		// The body is in: what is left of the request (the store, the
		// response) must not be cut by a deadline meant for the read.
		_ = rc.SetReadDeadline(time.Time{})
	}
	return body, nil
}

// parseSignature splits "t=<digits>,v1=<hex>[,v1=<hex>…]". Unknown keys are
// ignored (a future v2 next to v1).
func parseSignature(h string) (ts string, macs [][]byte, ok bool) {
	for part := range strings.SplitSeq(h, ",") {
		k, v, found := strings.Cut(strings.TrimSpace(part), "=")
		if !found {
			return "", nil, false
		}
		switch k {
		case "t":
			if ts != "" || v == "" || len(v) > 12 || strings.Trim(v, "0123456789") != "" {
				return "", nil, false
			}
			ts = v
		case "v1":
			if len(v) != 2*sha256.Size || len(macs) >= maxSignatures {
				return "", nil, false
			}
			b, err := hex.DecodeString(v)
			if err != nil {
				return "", nil, false
			}
			macs = append(macs, b)
		}
	}
	return ts, macs, ts != "" && len(macs) > 0
}

// requireReadToken guards the read endpoints: a bearer token that is the
// API token or any source's bearer token.
func (a *api) requireReadToken(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		tok, present := bearerToken(c.Request())
		if !present || tok == "" {
			return errUnauthorized(!present)
		}
		g := sha256.Sum256([]byte(tok))
		match := 0
		for i := range a.readTokens {
			// No early exit: the time taken does not tell which token matched.
			match |= subtle.ConstantTimeCompare(g[:], a.readTokens[i][:])
		}
		if match != 1 {
			return errUnauthorized(false)
		}
		return next(c)
	}
}

// replayKeyFor is the replay cache's key for a signature: the first 24
// bytes of SHA-256(source, NUL, HMAC), then the unix second of until, so
// that the cache can find the key's set from the key alone (release).
func replayKeyFor(source string, mac []byte, until time.Time) [sha256.Size]byte {
	k := sha256.Sum256(append([]byte(source+"\x00"), mac...))
	binary.BigEndian.PutUint64(k[24:], uint64(until.Unix())) //nolint:gosec // bits kept as they are; release converts them back
	return k
}

// replayCache remembers accepted signatures until they expire. A signature
// is reserved when it verifies and released if the request then fails, so
// that a sender may retry a delivery scanhook did not accept, while two
// concurrent copies of one signed request cannot both get through.
//
// A key's expiry comes from the signed timestamp, so a key always has the
// same expiry, and the keys are kept in one set per second of expiry: a
// lookup reads one set, and a second's set is dropped whole once it has
// passed. A released key is deleted, so a delivery the ingest limiter
// refused (429) holds no room: the cache holds only deliveries the limiter
// admitted within the window, plus those in flight.
//
// A key is held as its first 128 bits (of a SHA-256, see replayKeyFor):
// ample to tell signatures apart, and half the memory. A key costs about
// 30 bytes (16 in the set, the rest map overhead; measured), so signed
// deliveries at the default ingest limit of 5,000/s hold about 45 MB with
// senders' clocks in step (keys live five minutes), and at most about
// 90 MB when every sender signs five minutes ahead (keys live ten).
type replayCache struct {
	mu sync.Mutex
	// max bounds the keys held (0: no bound); see replayCapacity.
	max int
	n   int
	// bySecond holds the keys by the unix second of their expiry; low is
	// at or below the oldest second it may hold.
	bySecond map[int64]map[replayKey]struct{}
	low      int64
}

type replayKey [16]byte

// replayRetention is the longest a key can be held after it is reserved:
// a timestamp up to the skew ahead expires twice the skew and a second
// later, and its second's set is dropped a second after that.
const replayRetention = 2*signatureSkew + 2*time.Second

// minReplayEntries is the least capacity a limited cache gets, so that a
// very low ingest limit still leaves room for its burst and retries.
const minReplayEntries = 1 << 12

// replayCapacity is the most keys the replay cache can have to hold when
// lim admits the signed deliveries and at most maxInFlight are being
// handled at once: lim admits at most its burst plus rate × retention
// within the retention, and each delivery in flight may hold a
// reservation the limiter has not yet seen. 0 means unbounded: without
// an ingest limit, memory is bounded by what the server can take in within
// the retention. A cache of this size never refuses a signed delivery the
// limiter would admit.
func replayCapacity(lim *rate.Limiter, maxInFlight int) int {
	if lim == nil || lim.Limit() == rate.Inf {
		return 0
	}
	n := float64(lim.Burst()) + math.Ceil(float64(lim.Limit())*replayRetention.Seconds()) + float64(maxInFlight) + 1
	if n > 1<<40 {
		return 0
	}
	return max(int(n), minReplayEntries)
}

func newReplayCache(maxEntries int) *replayCache {
	return &replayCache{max: maxEntries, bySecond: map[int64]map[replayKey]struct{}{}}
}

// reserve records key until exp. It reports false if key is already
// recorded (a replay), and full when the cache has no room.
func (r *replayCache) reserve(key [sha256.Size]byte, exp, now time.Time) (ok, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expire(now.Unix())
	sec := expirySecond(exp)
	if sec < now.Unix() {
		// Already past: its set would be dropped at once. The signature
		// check refuses such a timestamp before it gets here.
		return true, false
	}
	k := replayKey(key[:16])
	set := r.bySecond[sec]
	if _, seen := set[k]; seen {
		return false, false
	}
	if r.max > 0 && r.n >= r.max {
		return false, true
	}
	if set == nil {
		set = map[replayKey]struct{}{}
		r.bySecond[sec] = set
		r.low = min(r.low, sec)
	}
	set[k] = struct{}{}
	r.n++
	return true, false
}

// release forgets a reserved key (its request was not accepted). A key
// made by replayKeyFor names its expiry second; any other is looked for in
// every second's set.
func (r *replayCache) release(key [sha256.Size]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := replayKey(key[:16])
	if set := r.bySecond[int64(binary.BigEndian.Uint64(key[24:]))]; set != nil { //nolint:gosec // undoes replayKeyFor's int64 -> uint64, bit for bit
		if _, ok := set[k]; ok {
			delete(set, k)
			r.n--
			return
		}
	}
	for _, set := range r.bySecond {
		if _, ok := set[k]; ok {
			delete(set, k)
			r.n--
			return
		}
	}
}

// expirySecond is the second whose set holds a key expiring at exp: the
// second exp falls in, so that the set is dropped only once every key in
// it has expired.
func expirySecond(exp time.Time) int64 { return exp.Unix() }

// expire drops the sets of the seconds before now: every key in them
// expired at least a second ago.
func (r *replayCache) expire(now int64) {
	if now <= r.low {
		return
	}
	if now-r.low > int64(len(r.bySecond)) {
		// A long quiet spell (or the first call): look only at the sets
		// there are.
		for sec, set := range r.bySecond {
			if sec < now {
				r.n -= len(set)
				delete(r.bySecond, sec)
			}
		}
	} else {
		for sec := r.low; sec < now; sec++ {
			if set, ok := r.bySecond[sec]; ok {
				r.n -= len(set)
				delete(r.bySecond, sec)
			}
		}
	}
	r.low = now
}
