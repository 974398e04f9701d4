package defendersim

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"
)

func getJSONDoc(t *testing.T, s *Server, path string, out any) int {
	t.Helper()
	resp, err := s.Client().Get(s.URL() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

type testJWKS struct {
	Keys []struct{ Kty, Use, Kid, N, E string } `json:"keys"`
}

func (j testJWKS) key(t *testing.T, kid string) *rsa.PublicKey {
	t.Helper()
	for _, k := range j.Keys {
		if k.Kid == kid {
			n, _ := base64.RawURLEncoding.DecodeString(k.N)
			e, _ := base64.RawURLEncoding.DecodeString(k.E)
			return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		}
	}
	return nil
}

func splitJWT(t *testing.T, tok string) (hdr, claims map[string]any, signed string, sig []byte) {
	t.Helper()
	p := strings.Split(tok, ".")
	if len(p) != 3 {
		t.Fatalf("not a JWT: %d parts", len(p))
	}
	for i, out := range []*map[string]any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(p[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
	sig, _ = base64.RawURLEncoding.DecodeString(p[2])
	return hdr, claims, p[0] + "." + p[1], sig
}

// TestSenderTokens checks the simulator as an Entra ID issuer for senders:
// v1 and v2 metadata with Entra's issuer forms, a JWKS whose key verifies
// the minted tokens, and the claims a Logic App's managed identity sends.
func TestSenderTokens(t *testing.T) {
	s := startTest(t, Options{})
	ten := DefaultTenantID
	var v1, v2 struct{ Issuer, JWKSURI string }
	var raw1, raw2 map[string]any
	if getJSONDoc(t, s, "/"+ten+"/.well-known/openid-configuration", &raw1) != 200 ||
		getJSONDoc(t, s, "/"+ten+"/v2.0/.well-known/openid-configuration", &raw2) != 200 {
		t.Fatal("metadata not served")
	}
	v1.Issuer, v1.JWKSURI = raw1["issuer"].(string), raw1["jwks_uri"].(string)
	v2.Issuer, v2.JWKSURI = raw2["issuer"].(string), raw2["jwks_uri"].(string)
	if v1.Issuer != "https://sts.windows.net/"+ten+"/" || v2.Issuer != s.URL()+"/"+ten+"/v2.0" || v2.Issuer != s.IssuerV2(ten) {
		t.Fatalf("issuers %q %q", v1.Issuer, v2.Issuer)
	}
	if getJSONDoc(t, s, "/other-tenant/.well-known/openid-configuration", nil) != http.StatusBadRequest {
		t.Error("metadata for an unknown tenant")
	}
	var jwks testJWKS
	if getJSONDoc(t, s, strings.TrimPrefix(v1.JWKSURI, s.URL()), &jwks) != 200 || len(jwks.Keys) != 1 {
		t.Fatalf("jwks %+v", jwks)
	}
	if k := jwks.Keys[0]; k.Kty != "RSA" || k.Use != "sig" {
		t.Fatalf("jwk %+v", k)
	}

	for _, ver := range []int{1, 2} {
		tok, err := s.MintSenderToken(SenderToken{Version: ver, Audience: "api://scanhook", ClientID: "cid", ObjectID: "oid", Roles: []string{"Alerts.Submit"}})
		if err != nil {
			t.Fatal(err)
		}
		hdr, c, signed, sig := splitJWT(t, tok)
		if hdr["alg"] != "RS256" {
			t.Fatalf("alg %v", hdr["alg"])
		}
		pub := jwks.key(t, hdr["kid"].(string))
		digest := sha256.Sum256([]byte(signed))
		if pub == nil || rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
			t.Fatalf("v%d token does not verify with the published key", ver)
		}
		wantIss, caller := v1.Issuer, "appid"
		if ver == 2 {
			wantIss, caller = v2.Issuer, "azp"
		}
		if c["iss"] != wantIss || c[caller] != "cid" || c["oid"] != "oid" || c["tid"] != ten || c["idtyp"] != "app" ||
			c["aud"] != "api://scanhook" || c["roles"].([]any)[0] != "Alerts.Submit" {
			t.Fatalf("v%d claims %v", ver, c)
		}
	}

	// Rotation: the new key signs, both are published; a second rotation
	// withdraws the first.
	first, _ := s.SenderKeyID()
	second, err := s.RotateSenderKey()
	if err != nil || second == first {
		t.Fatalf("rotate: %v %q", err, second)
	}
	tok, _ := s.MintSenderToken(SenderToken{Audience: "a"})
	if hdr, _, _, _ := splitJWT(t, tok); hdr["kid"] != second {
		t.Fatalf("signed by %v, want the new key %s", hdr["kid"], second)
	}
	jwks = testJWKS{}
	getJSONDoc(t, s, "/"+ten+"/discovery/v2.0/keys", &jwks)
	if jwks.key(t, first) == nil || jwks.key(t, second) == nil {
		t.Fatal("rotation must keep the previous key published")
	}
	third, _ := s.RotateSenderKey()
	jwks = testJWKS{}
	getJSONDoc(t, s, "/"+ten+"/discovery/keys", &jwks)
	if jwks.key(t, first) != nil || jwks.key(t, third) == nil || len(jwks.Keys) != 2 {
		t.Fatalf("after a second rotation: %+v", jwks)
	}

	// Attack shapes.
	none, _ := s.MintSenderToken(SenderToken{Alg: "none"})
	if hdr, _, _, sig := splitJWT(t, none); hdr["alg"] != "none" || len(sig) != 0 {
		t.Fatalf("alg none token: %v", hdr)
	}
	hs, _ := s.MintSenderToken(SenderToken{Alg: "HS256"})
	if hdr, _, _, _ := splitJWT(t, hs); hdr["alg"] != "HS256" {
		t.Fatalf("HS256 token: %v", hdr)
	}
	foreign, _ := s.MintSenderToken(SenderToken{ForeignKey: true})
	_, _, signed, sig := splitJWT(t, foreign)
	digest := sha256.Sum256([]byte(signed))
	if rsa.VerifyPKCS1v15(jwks.key(t, third), crypto.SHA256, digest[:], sig) == nil {
		t.Fatal("a foreign-key token verifies with the published key")
	}

	// An issuer outage answers 503 on metadata and keys.
	before := s.JWKSFetches()
	s.SetIssuerDown(true)
	if getJSONDoc(t, s, "/"+ten+"/discovery/keys", nil) != http.StatusServiceUnavailable ||
		getJSONDoc(t, s, "/"+ten+"/.well-known/openid-configuration", nil) != http.StatusServiceUnavailable {
		t.Fatal("issuer down still serves")
	}
	s.SetIssuerDown(false)
	if s.JWKSFetches() != before {
		t.Error("a refused JWKS request counted as served")
	}
}

// TestAdminSenderToken mints through /admin/entra/token (the demo and
// scripts' way) and rotates through /admin/entra/rotate.
func TestAdminSenderToken(t *testing.T) {
	s := startTest(t, Options{AdminToken: "admin"})
	call := func(path, body string) map[string]any {
		req, _ := http.NewRequest(http.MethodPost, s.URL()+path, bytes.NewReader([]byte(body)))
		req.Header.Set("Authorization", "Bearer admin")
		resp, err := s.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", path, resp.StatusCode, out)
		}
		return out
	}
	out := call("/admin/entra/token", `{"version":2,"audience":"api://scanhook","client_id":"c","roles":["Alerts.Submit"],"expires_in":"-10m"}`)
	_, c, _, _ := splitJWT(t, out["access_token"].(string))
	if c["ver"] != "2.0" || c["azp"] != "c" || int64(c["exp"].(float64)) >= time.Now().Unix() {
		t.Fatalf("claims %v", c)
	}
	if kid := call("/admin/entra/rotate", `{}`)["kid"]; kid == "" || kid == nil {
		t.Fatal("rotate returned no kid")
	}
}
