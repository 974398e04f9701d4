package defendersim

import (
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"sync"
	"time"
)

// The simulator also plays Entra ID for webhook senders: a Logic App's
// managed identity or an Azure Monitor action group asks Entra ID for a
// token to scanhook's API and presents it on the webhook. Those tokens are
// RS256-signed by a key published in the tenant's JWKS, found through the
// OpenID metadata (v1 and v2), and rotate like Entra's do: a new key is
// published and signs new tokens while the previous one stays published.
//
// The Defender client's own tokens (the client-credential flow) keep their
// HMAC signature: nothing verifies them but the simulator.

// SenderToken describes a token to mint for a webhook sender. Zero fields
// take Logic-App-shaped defaults: v1, the simulator's tenant, issued now,
// valid for an hour, idtyp app.
type SenderToken struct {
	// Version is 1 (default; what managed identities get unless the API's
	// manifest asks for v2) or 2.
	Version int
	// TenantID is tid (default the simulator's tenant); the issuer follows
	// it unless Issuer is set.
	TenantID string
	Audience string
	// ClientID is appid (v1) or azp (v2): the calling application.
	ClientID string
	// ObjectID is oid (and sub): the managed identity's object id.
	ObjectID string
	Roles    []string
	// IssuedAt defaults to now; NotBefore to IssuedAt; Expires to IssuedAt+1h.
	IssuedAt, NotBefore, Expires time.Time
	// Issuer overrides iss (a token from another issuer).
	Issuer string
	// IDType is idtyp (default "app"; "-" leaves it out, "user" for a
	// delegated token). Scope, when set, adds scp as a user token has.
	IDType string
	Scope  string
	// Alg is RS256 (default); "none" makes an unsigned token; "HS256"
	// signs with HMAC keyed by the current public key's PEM (the
	// algorithm-confusion attack).
	Alg string
	// KeyID overrides the kid header; ForeignKey signs with a key that is
	// not published (a token from an impostor).
	KeyID      string
	ForeignKey bool
}

// senderKey is one published signing key.
type senderKey struct {
	kid  string
	priv *rsa.PrivateKey
}

// senderKeys is the sender-token key ring; generated on first use, so
// simulators that never issue sender tokens pay nothing for RSA keys.
type senderKeys struct {
	once    sync.Once
	err     error
	mu      sync.Mutex
	keys    []senderKey // published, newest last; the newest signs
	foreign *rsa.PrivateKey
	fetches int // JWKS requests served
}

func newSenderKey() (senderKey, error) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return senderKey{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return senderKey{}, err
	}
	sum := sha256.Sum256(der)
	return senderKey{kid: b64(sum[:12]), priv: priv}, nil
}

func (k *senderKeys) init() error {
	k.once.Do(func() {
		var first senderKey
		if first, k.err = newSenderKey(); k.err != nil {
			return
		}
		var foreign senderKey
		if foreign, k.err = newSenderKey(); k.err != nil {
			return
		}
		k.keys = []senderKey{first}
		k.foreign = foreign.priv
	})
	return k.err
}

// SenderKeyID is the kid that signs new sender tokens.
func (s *Server) SenderKeyID() (string, error) {
	if err := s.senders.init(); err != nil {
		return "", err
	}
	s.senders.mu.Lock()
	defer s.senders.mu.Unlock()
	return s.senders.keys[len(s.senders.keys)-1].kid, nil
}

// RotateSenderKey publishes a new signing key, which signs tokens from now
// on; the previous key stays published (tokens it signed remain valid) and
// older ones are withdrawn, as Entra ID rolls its keys. It returns the new kid.
func (s *Server) RotateSenderKey() (string, error) {
	if err := s.senders.init(); err != nil {
		return "", err
	}
	k, err := newSenderKey()
	if err != nil {
		return "", err
	}
	s.senders.mu.Lock()
	defer s.senders.mu.Unlock()
	s.senders.keys = append(s.senders.keys, k)
	if len(s.senders.keys) > 2 {
		s.senders.keys = s.senders.keys[len(s.senders.keys)-2:]
	}
	return k.kid, nil
}

// JWKSFetches counts the JWKS documents served (to see a verifier's cache work).
func (s *Server) JWKSFetches() int {
	s.senders.mu.Lock()
	defer s.senders.mu.Unlock()
	return s.senders.fetches
}

// IssuerV1 and IssuerV2 are the issuers the simulator advertises for a
// tenant, in Entra ID's forms: v1 tokens come from sts.windows.net, v2 ones
// from the authority host (here, the simulator itself).
func IssuerV1(tenant string) string { return "https://sts.windows.net/" + tenant + "/" }

// IssuerV2 is the v2 issuer for a tenant under the simulator's URL.
func (s *Server) IssuerV2(tenant string) string { return s.URL() + "/" + tenant + "/v2.0" }

// MintSenderToken signs a token as Entra ID would issue it to a sender.
func (s *Server) MintSenderToken(t SenderToken) (string, error) {
	if err := s.senders.init(); err != nil {
		return "", err
	}
	if t.Version == 0 {
		t.Version = 1
	}
	if t.Version != 1 && t.Version != 2 {
		return "", fmt.Errorf("defendersim: token version %d is not 1 or 2", t.Version)
	}
	if t.TenantID == "" {
		t.TenantID = s.opts.TenantID
	}
	if t.IssuedAt.IsZero() {
		t.IssuedAt = s.now()
	}
	if t.NotBefore.IsZero() {
		t.NotBefore = t.IssuedAt
	}
	if t.Expires.IsZero() {
		t.Expires = t.IssuedAt.Add(time.Hour)
	}
	if t.IDType == "" {
		t.IDType = "app"
	}
	claims := map[string]any{
		"aud": t.Audience,
		"iat": t.IssuedAt.Unix(),
		"nbf": t.NotBefore.Unix(),
		"exp": t.Expires.Unix(),
		"tid": t.TenantID,
		"oid": t.ObjectID,
		"sub": t.ObjectID,
		"rh":  "0.simulated.",
		"uti": newID(),
	}
	if t.Version == 1 {
		claims["iss"] = IssuerV1(t.TenantID)
		claims["ver"] = "1.0"
		claims["appid"] = t.ClientID
		claims["appidacr"] = "2"
	} else {
		claims["iss"] = s.IssuerV2(t.TenantID)
		claims["ver"] = "2.0"
		claims["azp"] = t.ClientID
		claims["azpacr"] = "2"
	}
	if t.Issuer != "" {
		claims["iss"] = t.Issuer
	}
	if t.IDType != "-" {
		claims["idtyp"] = t.IDType
	}
	if t.Scope != "" {
		claims["scp"] = t.Scope
	}
	if len(t.Roles) > 0 {
		claims["roles"] = t.Roles
	}
	body, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}

	s.senders.mu.Lock()
	cur := s.senders.keys[len(s.senders.keys)-1]
	foreign := s.senders.foreign
	s.senders.mu.Unlock()
	alg := t.Alg
	if alg == "" {
		alg = "RS256"
	}
	kid := cur.kid
	if t.KeyID != "" {
		kid = t.KeyID
	}
	hdr, err := json.Marshal(map[string]string{"typ": "JWT", "alg": alg, "kid": kid, "x5t": kid})
	if err != nil {
		return "", err
	}
	in := b64(hdr) + "." + b64(body)
	switch alg {
	case "RS256":
		key := cur.priv
		if t.ForeignKey {
			key = foreign
		}
		digest := sha256.Sum256([]byte(in))
		sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
		if err != nil {
			return "", err
		}
		return in + "." + b64(sig), nil
	case "none":
		return in + ".", nil
	case "HS256":
		der, err := x509.MarshalPKIXPublicKey(&cur.priv.PublicKey)
		if err != nil {
			return "", err
		}
		m := hmac.New(sha256.New, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		m.Write([]byte(in))
		return in + "." + b64(m.Sum(nil)), nil
	default:
		return "", fmt.Errorf("defendersim: alg %q is not RS256, none or HS256", alg)
	}
}

// jwk is one published key, as Entra ID publishes them (no alg member).
type jwk struct {
	Kty string `json:"kty"`
	Use string `json:"use"`
	Kid string `json:"kid"`
	X5t string `json:"x5t"`
	N   string `json:"n"`
	E   string `json:"e"`
}

func (s *Server) serveJWKS(w http.ResponseWriter) {
	if err := s.senders.init(); err != nil {
		http.Error(w, "no signing keys", http.StatusInternalServerError)
		return
	}
	s.senders.mu.Lock()
	s.senders.fetches++
	keys := make([]jwk, 0, len(s.senders.keys))
	for _, k := range s.senders.keys {
		pub := k.priv.PublicKey
		keys = append(keys, jwk{Kty: "RSA", Use: "sig", Kid: k.kid, X5t: k.kid,
			N: b64(pub.N.Bytes()), E: b64(big.NewInt(int64(pub.E)).Bytes())})
	}
	s.senders.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"keys": keys})
}

// SetIssuerDown makes the OpenID metadata and JWKS endpoints answer 503 (a
// verifier must then answer its senders 503, not 401), or serve again.
func (s *Server) SetIssuerDown(down bool) { s.issuerDown.Store(down) }
