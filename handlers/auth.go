package handlers

import (
	"container/heap"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v5"
)

// SignatureHeader carries the HMAC signature:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">". Several v1
// values may be sent (a sender rotating its secret); any valid one suffices.
const SignatureHeader = "X-Scanhook-Signature"

// maxSignatures bounds the v1 values checked per request.
const maxSignatures = 4

// maxReplayEntries bounds the replay cache. An entry is ~100 bytes, and
// only signatures that verified and led to a 202 are kept, for at most
// twice the skew; at the default ingest limit of 1000/s the window holds
// 600k, so a sender that fills this is refused (503) rather than let
// replays through.
const maxReplayEntries = 1 << 19

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
	body, err := a.readBody(c)
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
			k := sha256.Sum256(append([]byte(src.name+"\x00"), want...))
			// Remembered until the signature is stale in any case (the
			// timestamp may be up to the skew in the future), with a
			// second to spare at the boundary.
			return auth{body: body, replayKey: &k, replayUntil: signed.Add(signatureSkew + time.Second)}, nil
		}
	}
	return auth{}, errUnauthorized(false)
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

// replayCache remembers accepted signatures until they expire. A signature
// is reserved when it verifies and released if the request then fails, so
// that a sender may retry a delivery scanhook did not accept, while two
// concurrent copies of one signed request cannot both get through.
//
// A key's expiry comes from the signed timestamp, so a key always has the
// same expiry: a released key keeps its slot (marked not live) and a retry
// reuses it, which keeps the heap and the map the same size.
type replayCache struct {
	mu    sync.Mutex
	max   int
	keys  map[[sha256.Size]byte]*replaySlot
	byExp expiryHeap
}

type replaySlot struct {
	exp  int64 // unix nanoseconds
	live bool  // false: released, a new reserve may take it
}

type replayEntry struct {
	key [sha256.Size]byte
	exp int64
}

type expiryHeap []replayEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].exp < h[j].exp }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(replayEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newReplayCache(maxEntries int) *replayCache {
	return &replayCache{max: maxEntries, keys: map[[sha256.Size]byte]*replaySlot{}}
}

// reserve records key until exp. It reports false if key is already
// recorded (a replay), and full when the cache has no room.
func (r *replayCache) reserve(key [sha256.Size]byte, exp, now time.Time) (ok, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := now.UnixNano()
	for len(r.byExp) > 0 && r.byExp[0].exp <= n {
		e := heap.Pop(&r.byExp).(replayEntry)
		delete(r.keys, e.key)
	}
	if slot, seen := r.keys[key]; seen {
		if slot.live {
			return false, false
		}
		slot.live = true
		return true, false
	}
	if len(r.byExp) >= r.max {
		return false, true
	}
	r.keys[key] = &replaySlot{exp: exp.UnixNano(), live: true}
	heap.Push(&r.byExp, replayEntry{key: key, exp: exp.UnixNano()})
	return true, false
}

// release forgets a reserved key (its request was not accepted).
func (r *replayCache) release(key [sha256.Size]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slot := r.keys[key]; slot != nil {
		slot.live = false
	}
}
