package defendersim

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// adminFaults is the JSON form of Faults: durations as Go duration strings.
type adminFaults struct {
	ErrorRate float64 `json:"error_rate"`
	Latency   string  `json:"latency"`
	ResetRate float64 `json:"reset_rate"`
	OutageFor string  `json:"outage_for"`
	// TokenErrorRate fails that fraction of token requests.
	TokenErrorRate float64 `json:"token_error_rate"`
}

type adminRequest struct {
	Method   string    `json:"method"`
	Path     string    `json:"path"`
	RawQuery string    `json:"raw_query,omitempty"`
	Status   int       `json:"status"`
	Time     time.Time `json:"time"`
	// Headers and bodies are left out: they carry secrets and tokens.
}

// serveAdmin answers /admin/*: faults, outcome, requests, actions, stats,
// for the demo and for scripts driving cmd/defender-sim.
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	corr := newID()
	auth := r.Header.Get("Authorization")
	want := "Bearer " + s.opts.AdminToken
	if subtle.ConstantTimeCompare([]byte(auth), []byte(want)) != 1 {
		writeAPIError(w, http.StatusUnauthorized, "Unauthorized", "admin endpoints need Authorization: Bearer <admin token>", corr)
		return
	}
	method := func(allowed ...string) bool {
		for _, a := range allowed {
			if r.Method == a {
				return true
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeAPIError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", fmt.Sprintf("use %s", strings.Join(allowed, " or ")), corr)
		return false
	}
	switch r.URL.Path {
	case "/admin/faults":
		if !method(http.MethodGet, http.MethodPut) {
			return
		}
		if r.Method == http.MethodPut {
			var in adminFaults
			dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&in); err != nil {
				writeAPIError(w, http.StatusBadRequest, "InvalidRequestBody", "faults: "+err.Error(), corr)
				return
			}
			f, err := in.faults()
			if err != nil {
				writeAPIError(w, http.StatusBadRequest, "InvalidInput", err.Error(), corr)
				return
			}
			s.SetFaults(f)
		}
		f := s.CurrentFaults()
		writeJSON(w, http.StatusOK, adminFaults{ErrorRate: f.ErrorRate, Latency: f.Latency.String(), ResetRate: f.ResetRate,
			OutageFor: f.OutageFor.String(), TokenErrorRate: f.TokenErrorRate})
	case "/admin/outcome":
		if !method(http.MethodPut) {
			return
		}
		var in struct {
			Status string `json:"status"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&in); err != nil {
			writeAPIError(w, http.StatusBadRequest, "InvalidRequestBody", "outcome: "+err.Error(), corr)
			return
		}
		if err := s.SetActionOutcome(in.Status); err != nil {
			writeAPIError(w, http.StatusBadRequest, "InvalidInput", "status: "+err.Error(), corr)
			return
		}
		writeJSON(w, http.StatusOK, in)
	case "/admin/requests":
		if !method(http.MethodGet, http.MethodDelete) {
			return
		}
		if r.Method == http.MethodDelete {
			s.ResetRequests()
			w.WriteHeader(http.StatusNoContent)
			return
		}
		reqs := s.Requests()
		out := make([]adminRequest, len(reqs))
		for i, q := range reqs {
			out[i] = adminRequest{Method: q.Method, Path: q.Path, RawQuery: q.RawQuery, Status: q.Status, Time: q.Time}
		}
		writeJSON(w, http.StatusOK, map[string]any{"value": out})
	case "/admin/actions":
		if !method(http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"value": s.Actions()})
	case "/admin/stats":
		if !method(http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, s.Stats())
	case "/admin/machines":
		if !method(http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"value": s.Machines()})
	case "/admin/entra/token":
		if !method(http.MethodPost) {
			return
		}
		var in adminSenderToken
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeAPIError(w, http.StatusBadRequest, "InvalidRequestBody", "token: "+err.Error(), corr)
			return
		}
		spec, err := in.spec(s.now())
		if err != nil {
			writeAPIError(w, http.StatusBadRequest, "InvalidInput", err.Error(), corr)
			return
		}
		tok, err := s.MintSenderToken(spec)
		if err != nil {
			writeAPIError(w, http.StatusBadRequest, "InvalidInput", err.Error(), corr)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"token_type": "Bearer", "access_token": tok})
	case "/admin/entra/rotate":
		if !method(http.MethodPost) {
			return
		}
		kid, err := s.RotateSenderKey()
		if err != nil {
			writeAPIError(w, http.StatusInternalServerError, "InternalError", err.Error(), corr)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"kid": kid})
	default:
		writeAPIError(w, http.StatusNotFound, "NotFound", "unknown admin endpoint "+r.URL.Path, corr)
	}
}

func (a adminFaults) faults() (Faults, error) {
	f := Faults{ErrorRate: a.ErrorRate, ResetRate: a.ResetRate, TokenErrorRate: a.TokenErrorRate}
	if f.TokenErrorRate < 0 || f.TokenErrorRate > 1 {
		return Faults{}, fmt.Errorf("token_error_rate %v is not between 0 and 1", f.TokenErrorRate)
	}
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		return Faults{}, fmt.Errorf("error_rate %v is not between 0 and 1", f.ErrorRate)
	}
	if f.ResetRate < 0 || f.ResetRate > 1 {
		return Faults{}, fmt.Errorf("reset_rate %v is not between 0 and 1", f.ResetRate)
	}
	var err error
	if a.Latency != "" {
		if f.Latency, err = time.ParseDuration(a.Latency); err != nil || f.Latency < 0 {
			return Faults{}, fmt.Errorf("latency %q is not a non-negative duration like 250ms", a.Latency)
		}
	}
	if a.OutageFor != "" {
		if f.OutageFor, err = time.ParseDuration(a.OutageFor); err != nil || f.OutageFor < 0 {
			return Faults{}, fmt.Errorf("outage_for %q is not a non-negative duration like 30s", a.OutageFor)
		}
	}
	return f, nil
}

// adminSenderToken is the JSON form of SenderToken for scripts and the demo:
// times are offsets from now as Go durations ("-10m" for an expired token).
type adminSenderToken struct {
	Version     int      `json:"version"`
	TenantID    string   `json:"tenant_id"`
	Audience    string   `json:"audience"`
	ClientID    string   `json:"client_id"`
	ObjectID    string   `json:"object_id"`
	Roles       []string `json:"roles"`
	ExpiresIn   string   `json:"expires_in"`
	NotBeforeIn string   `json:"not_before_in"`
	Issuer      string   `json:"issuer"`
	IDType      string   `json:"id_type"`
	Scope       string   `json:"scope"`
	Alg         string   `json:"alg"`
	ForeignKey  bool     `json:"foreign_key"`
}

func (a adminSenderToken) spec(now time.Time) (SenderToken, error) {
	t := SenderToken{Version: a.Version, TenantID: a.TenantID, Audience: a.Audience, ClientID: a.ClientID,
		ObjectID: a.ObjectID, Roles: a.Roles, Issuer: a.Issuer, IDType: a.IDType, Scope: a.Scope, Alg: a.Alg,
		ForeignKey: a.ForeignKey, IssuedAt: now}
	if a.ExpiresIn != "" {
		d, err := time.ParseDuration(a.ExpiresIn)
		if err != nil {
			return t, fmt.Errorf("expires_in %q is not a duration like 1h or -10m", a.ExpiresIn)
		}
		t.Expires = now.Add(d)
		if d <= 0 {
			// An expired token was issued before it expired.
			t.IssuedAt = t.Expires.Add(-time.Hour)
		}
	}
	if a.NotBeforeIn != "" {
		d, err := time.ParseDuration(a.NotBeforeIn)
		if err != nil {
			return t, fmt.Errorf("not_before_in %q is not a duration like 10m", a.NotBeforeIn)
		}
		t.NotBefore = now.Add(d)
	}
	return t, nil
}
