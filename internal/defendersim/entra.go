package defendersim

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is defined as a SHA-1 thumbprint
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// tokenClaims are the claims of an issued access token (a v1-style Entra
// token, which is what Defender receives for client credentials).
type tokenClaims struct {
	Audience  string   `json:"aud"`
	Issuer    string   `json:"iss"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf"`
	Expires   int64    `json:"exp"`
	AppID     string   `json:"appid"`
	AZP       string   `json:"azp"`
	TenantID  string   `json:"tid"`
	Roles     []string `json:"roles"`
	OID       string   `json:"oid"`
	Sub       string   `json:"sub"`
	Ver       string   `json:"ver"`
}

// baseURL is the scheme and host the request came in on, so the endpoints the
// openid configuration advertises are reachable however the handler is served.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// serveEntra answers the Entra ID endpoints; false when the path is not one.
func (s *Server) serveEntra(w http.ResponseWriter, r *http.Request, ri *reqInfo) bool {
	segs := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	metadataOrKeys := func() bool {
		if r.Method != http.MethodGet {
			writeAADError(w, http.StatusMethodNotAllowed, "invalid_request", 900561, "The endpoint only accepts GET requests.", ri.corr)
			return false
		}
		if s.issuerDown.Load() {
			writeAADError(w, http.StatusServiceUnavailable, "temporarily_unavailable", 50196, "The server is temporarily unable to service the request. Try again later.", ri.corr)
			return false
		}
		return true
	}
	switch {
	case len(segs) == 4 && segs[1] == "v2.0" && segs[2] == ".well-known" && segs[3] == "openid-configuration":
		if metadataOrKeys() {
			s.openIDConfig(w, r, ri, segs[0])
		}
	case len(segs) == 3 && segs[1] == ".well-known" && segs[2] == "openid-configuration":
		if metadataOrKeys() {
			s.openIDConfigV1(w, r, ri, segs[0])
		}
	case len(segs) == 4 && segs[1] == "oauth2" && segs[2] == "v2.0" && segs[3] == "token":
		s.token(w, r, ri, segs[0])
	case len(segs) == 4 && segs[1] == "discovery" && segs[2] == "v2.0" && segs[3] == "keys",
		len(segs) == 3 && segs[1] == "discovery" && segs[2] == "keys":
		// The sender tokens' RS256 keys (sender.go). The Defender client's
		// tokens are HMAC-signed and have no public key.
		if metadataOrKeys() {
			s.serveJWKS(w)
		}
	default:
		return false
	}
	return true
}

// openIDConfigV1 is the tenant's v1 metadata: Entra ID names the v1 issuer
// after sts.windows.net whatever the authority host.
func (s *Server) openIDConfigV1(w http.ResponseWriter, r *http.Request, ri *reqInfo, tenant string) {
	if tenant != s.opts.TenantID {
		writeAADError(w, http.StatusBadRequest, "invalid_tenant", 90002,
			fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant), ri.corr)
		return
	}
	base := baseURL(r) + "/" + tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                IssuerV1(tenant),
		"authorization_endpoint":                base + "/oauth2/authorize",
		"token_endpoint":                        base + "/oauth2/token",
		"jwks_uri":                              base + "/discovery/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "token id_token", "token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"tenant_region_scope":                   "NA",
		"cloud_instance_name":                   "defender-sim",
	})
}

func (s *Server) openIDConfig(w http.ResponseWriter, r *http.Request, ri *reqInfo, tenant string) {
	if tenant != s.opts.TenantID {
		writeAADError(w, http.StatusBadRequest, "invalid_tenant", 90002,
			fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant), ri.corr)
		return
	}
	base := baseURL(r) + "/" + tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                base + "/v2.0",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"tenant_region_scope":                   "NA",
		"cloud_instance_name":                   "defender-sim",
	})
}

// aadError is the Entra ID token endpoint error body.
type aadError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
}

func writeAADError(w http.ResponseWriter, status int, code string, aadsts int, desc, corr string) {
	writeJSON(w, status, aadError{
		Error:            code,
		ErrorDescription: fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s", aadsts, desc, corr, corr),
		ErrorCodes:       []int{aadsts},
		Timestamp:        time.Now().UTC().Format("2006-01-02 15:04:05Z"),
		TraceID:          corr,
		CorrelationID:    corr,
	})
}

func (s *Server) token(w http.ResponseWriter, r *http.Request, ri *reqInfo, tenant string) {
	fail := func(status int, code string, aadsts int, desc string) {
		s.stats.add(func(c *counters) { c.TokenErrors++ })
		writeAADError(w, status, code, aadsts, desc, ri.corr)
	}
	if s.fault.tokenFault() {
		s.stats.add(func(c *counters) { c.FaultsInjected++ })
		writeAADError(w, http.StatusServiceUnavailable, "temporarily_unavailable", 50196, "The server is temporarily unable to service the request. Try again later.", ri.corr)
		return
	}
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "invalid_request", 900561, "The endpoint only accepts POST, OPTIONS requests. Received a "+r.Method+" request.")
		return
	}
	if tenant != s.opts.TenantID {
		fail(http.StatusBadRequest, "invalid_request", 90002,
			fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant))
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "application/x-www-form-urlencoded") {
		fail(http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'. (Content-Type must be application/x-www-form-urlencoded.)")
		return
	}
	form, err := url.ParseQuery(string(ri.body))
	if err != nil {
		fail(http.StatusBadRequest, "invalid_request", 900144, "The request body is not a valid form: "+err.Error())
		return
	}
	one := func(k string) (string, bool) {
		v := form[k]
		if len(v) > 1 {
			return "", false
		}
		if len(v) == 0 {
			return "", true
		}
		return v[0], true
	}
	for k := range form {
		if _, ok := one(k); !ok {
			fail(http.StatusBadRequest, "invalid_request", 90014, fmt.Sprintf("The request contains the parameter '%s' more than once.", k))
			return
		}
	}
	grant, _ := one("grant_type")
	switch grant {
	case "":
		fail(http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
		return
	case "client_credentials":
	default:
		fail(http.StatusBadRequest, "unsupported_grant_type", 70003, fmt.Sprintf("The app requested an unsupported grant type '%s'.", grant))
		return
	}
	clientID, _ := one("client_id")
	if clientID == "" {
		fail(http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
		return
	}
	if clientID != s.opts.ClientID {
		fail(http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", clientID, tenant))
		return
	}
	secret, _ := one("client_secret")
	assertion, _ := one("client_assertion")
	aType, _ := one("client_assertion_type")
	switch {
	case secret != "" && assertion != "":
		fail(http.StatusBadRequest, "invalid_request", 90015, "The request contains both 'client_secret' and 'client_assertion'.")
		return
	case secret != "":
		if subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) != 1 {
			fail(http.StatusUnauthorized, "invalid_client", 7000215,
				fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID))
			return
		}
	case assertion != "":
		if aType != assertionType {
			fail(http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'client_assertion_type' = '"+assertionType+"'.")
			return
		}
		if err := s.checkAssertion(assertion, clientID, baseURL(r)+r.URL.Path); err != nil {
			fail(http.StatusUnauthorized, "invalid_client", 700027, "Client assertion failed signature validation or its claims are invalid: "+err.Error())
			return
		}
	default:
		fail(http.StatusUnauthorized, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	scope, _ := one("scope")
	if scope == "" {
		fail(http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
		return
	}
	if !s.scopeOK(scope) {
		fail(http.StatusBadRequest, "invalid_scope", 1002012,
			fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI) of %s.", scope, s.opts.Audience))
		return
	}
	now := s.now()
	claims := tokenClaims{
		Audience:  s.opts.Audience,
		Issuer:    "https://sts.windows.net/" + tenant + "/",
		IssuedAt:  now.Unix(),
		NotBefore: now.Add(-5 * time.Minute).Unix(),
		Expires:   now.Add(s.opts.TokenTTL).Unix(),
		AppID:     clientID,
		AZP:       clientID,
		TenantID:  tenant,
		Roles:     append([]string(nil), s.opts.Roles...),
		OID:       clientID,
		Sub:       clientID,
		Ver:       "1.0",
	}
	tok, err := s.sign(claims)
	if err != nil {
		fail(http.StatusInternalServerError, "server_error", 90000, "could not sign the token")
		return
	}
	s.stats.add(func(c *counters) { c.TokensIssued++ })
	ttl := int(s.opts.TokenTTL / time.Second)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     ttl,
		"ext_expires_in": ttl,
		"access_token":   tok,
	})
}

// scopeOK: client credentials take exactly one scope, the resource's
// /.default; MSAL may add openid/profile/offline_access, which Entra ignores.
func (s *Server) scopeOK(scope string) bool {
	found := false
	for _, sc := range strings.Fields(scope) {
		switch {
		case sc == s.opts.Audience+"/.default":
			found = true
		case sc == LegacyScope && s.opts.Audience == DefaultAudience:
			found = true
		case sc == "openid" || sc == "profile" || sc == "offline_access":
		default:
			return false
		}
	}
	return found
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (s *Server) sign(c tokenClaims) (string, error) {
	hdr := b64([]byte(`{"alg":"HS256","typ":"JWT","kid":"defender-sim"}`))
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	in := hdr + "." + b64(body)
	m := hmac.New(sha256.New, s.signer)
	m.Write([]byte(in))
	return in + "." + b64(m.Sum(nil)), nil
}

// checkBearer validates an API call's Authorization header; the returned
// problem is the 401 message, empty when the token is good.
func (s *Server) checkBearer(r *http.Request) (*tokenClaims, string) {
	h := r.Header.Values("Authorization")
	if len(h) == 0 {
		return nil, "Authorization header is missing"
	}
	if len(h) > 1 {
		return nil, "more than one Authorization header"
	}
	scheme, tok, ok := strings.Cut(h[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil, "Authorization header is not a Bearer token"
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, "the bearer token is not a JWT"
	}
	m := hmac.New(sha256.New, s.signer)
	m.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, m.Sum(nil)) {
		return nil, "the bearer token signature is invalid"
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, "the bearer token payload is not base64url"
	}
	var c tokenClaims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, "the bearer token payload is not JSON"
	}
	now := s.now().Unix()
	if now >= c.Expires {
		return nil, "the bearer token has expired"
	}
	if now < c.NotBefore {
		return nil, "the bearer token is not valid yet"
	}
	if c.Audience != s.opts.Audience {
		return nil, fmt.Sprintf("the bearer token audience %q is not %q", c.Audience, s.opts.Audience)
	}
	if c.TenantID != s.opts.TenantID {
		return nil, "the bearer token is for another tenant"
	}
	return &c, ""
}

// checkAssertion validates a client_assertion JWT the way Entra ID does for a
// certificate credential: signed by the registered certificate's key,
// identified by its thumbprint, issued by and about the client, addressed to
// the token endpoint, and not expired.
func (s *Server) checkAssertion(assertion, clientID, tokenEndpoint string) error {
	if s.opts.AcceptAnyAssertion {
		return nil
	}
	cert := s.opts.ClientCertificate
	if cert == nil {
		return errors.New("no certificate is registered for this application")
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return errors.New("the registered certificate has no RSA key")
	}
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return errors.New("the assertion is not a JWT")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return errors.New("the assertion header is not base64url")
	}
	var hdr map[string]any
	if err := json.Unmarshal(hb, &hdr); err != nil {
		return errors.New("the assertion header is not JSON")
	}
	alg, _ := hdr["alg"].(string)
	var thumbKey string
	var want []byte
	switch alg {
	case "RS256":
		sum := sha1.Sum(cert.Raw) //nolint:gosec // x5t is SHA-1 by definition
		thumbKey, want = "x5t", sum[:]
	case "PS256":
		sum := sha256.Sum256(cert.Raw)
		thumbKey, want = "x5t#S256", sum[:]
	default:
		return fmt.Errorf("the assertion alg %q is not RS256 or PS256", alg)
	}
	tp, _ := hdr[thumbKey].(string)
	got, err := decodeAnyBase64(tp)
	if err != nil || !hmac.Equal(got, want) {
		return fmt.Errorf("the assertion %s header does not match the registered certificate", thumbKey)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return errors.New("the assertion signature is not base64url")
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if alg == "RS256" {
		err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
	} else {
		err = rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, nil)
	}
	if err != nil {
		return errors.New("the assertion signature is invalid")
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return errors.New("the assertion payload is not base64url")
	}
	var c struct {
		Aud string      `json:"aud"`
		Iss string      `json:"iss"`
		Sub string      `json:"sub"`
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(pb, &c); err != nil {
		return errors.New("the assertion payload is not JSON with string aud, iss, sub and numeric exp")
	}
	if c.Iss != clientID || c.Sub != clientID {
		return errors.New("the assertion iss and sub must be the client id")
	}
	if c.Aud != tokenEndpoint {
		return fmt.Errorf("the assertion aud %q is not the token endpoint %q", c.Aud, tokenEndpoint)
	}
	// The client signs with its own wall clock, not the simulator's
	// (possibly fake) one.
	exp, err := c.Exp.Int64()
	if err != nil || time.Now().Unix() >= exp {
		return errors.New("the assertion has expired or has no exp")
	}
	return nil
}

func decodeAnyBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}
