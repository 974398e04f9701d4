package defendersim

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// maxBody bounds request bodies; Defender's are tiny.
const maxBody = 1 << 20

// reqInfo travels with one request through the handlers.
type reqInfo struct {
	corr string
	body []byte
	app  *tokenClaims
	rec  *Request
}

// statusWriter captures the status code for the request record.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush keeps streaming possible through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (hijack).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) routes() http.Handler {
	return http.HandlerFunc(s.serve)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	path := r.URL.Path
	if strings.HasPrefix(path, "/admin/") || path == "/admin" {
		s.serveAdmin(w, r)
		return
	}
	rec := &Request{
		Method:   r.Method,
		Path:     path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Time:     s.now(),
	}
	ri := &reqInfo{corr: newID(), rec: rec}
	w.Header().Set("request-id", ri.corr)
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		rec.Status = sw.status
		s.rec.add(*rec)
		s.log.Debug("defendersim request", "method", r.Method, "path", path, "status", sw.status,
			"correlation_id", ri.corr, "duration", time.Since(start))
	}()

	var body []byte
	var err error
	if r.Body != nil { // nil when a test calls ServeHTTP with a client request
		body, err = io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	}
	if err != nil {
		writeAPIError(sw, http.StatusBadRequest, "BadRequest", "could not read the request body: "+err.Error(), ri.corr)
		return
	}
	rec.Body = body
	if len(body) > maxBody {
		writeAPIError(sw, http.StatusRequestEntityTooLarge, "BadRequest", "request body is larger than 1 MiB", ri.corr)
		return
	}
	ri.body = body

	if strings.HasPrefix(path, "/api/") || path == "/api" {
		s.serveAPI(sw, r, ri)
		return
	}
	if s.serveEntra(sw, r, ri) {
		return
	}
	writeAPIError(sw, http.StatusNotFound, "NotFound", fmt.Sprintf("no resource at %s", path), ri.corr)
}

// apiRoute is one API endpoint.
type apiRoute struct {
	family string
	role   string // any of the token's roles must grant this
	serve  func(w http.ResponseWriter, r *http.Request, ri *reqInfo, params []string)
}

// matchAPI finds the endpoint for a path; allowed lists the methods the path
// accepts when the method does not match (405).
func (s *Server) matchAPI(method string, segs []string) (rt *apiRoute, params []string, allowed string) {
	type cand struct {
		method string
		route  apiRoute
		params []string
	}
	var cands []cand
	n := len(segs)
	switch {
	case n == 2 && segs[1] == "machines":
		cands = append(cands, cand{http.MethodGet, apiRoute{FamilyMachines, RoleMachineReadAll, s.listMachines}, nil})
	case n == 3 && segs[1] == "machines" && strings.HasPrefix(segs[2], "findbyip(") && strings.HasSuffix(segs[2], ")"):
		cands = append(cands, cand{http.MethodGet, apiRoute{FamilyFindByIP, RoleMachineReadAll, s.findByIP}, []string{segs[2]}})
	case n == 3 && segs[1] == "machines" && segs[2] != "":
		cands = append(cands, cand{http.MethodGet, apiRoute{FamilyMachines, RoleMachineReadAll, s.getMachine}, []string{segs[2]}})
	case n == 4 && segs[1] == "machines" && segs[2] != "" && segs[3] == "runAntiVirusScan":
		cands = append(cands, cand{http.MethodPost, apiRoute{FamilyScan, RoleMachineScan, s.runScan}, []string{segs[2]}})
	case n == 2 && segs[1] == "machineactions":
		cands = append(cands, cand{http.MethodGet, apiRoute{FamilyActions, RoleMachineReadAll, s.listActions}, nil})
	case n == 3 && segs[1] == "machineactions" && segs[2] != "":
		cands = append(cands, cand{http.MethodGet, apiRoute{FamilyActions, RoleMachineReadAll, s.getAction}, []string{segs[2]}})
	case n == 4 && segs[1] == "machineactions" && segs[2] != "" && segs[3] == "cancel":
		cands = append(cands, cand{http.MethodPost, apiRoute{FamilyScan, RoleMachineScan, s.cancelAction}, []string{segs[2]}})
	}
	var methods []string
	for i := range cands {
		if cands[i].method == method {
			return &cands[i].route, cands[i].params, ""
		}
		methods = append(methods, cands[i].method)
	}
	return nil, nil, strings.Join(methods, ", ")
}

// splitPath splits an escaped path into unescaped segments, so an id with an
// escaped slash stays one segment.
func splitPath(escaped string) ([]string, bool) {
	raw := strings.Split(strings.TrimPrefix(escaped, "/"), "/")
	out := make([]string, len(raw))
	for i, p := range raw {
		u, err := url.PathUnescape(p)
		if err != nil {
			return nil, false
		}
		out[i] = u
	}
	return out, true
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, ri *reqInfo) {
	// Faults come first: a failing front end answers before auth.
	if s.injectFaults(w, r, ri) {
		return
	}
	claims, problem := s.checkBearer(r)
	if problem != "" {
		s.stats.add(func(c *counters) { c.Unauthorized++ })
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeAPIError(w, http.StatusUnauthorized, "Unauthorized", problem, ri.corr)
		return
	}
	ri.app = claims
	segs, ok := splitPath(r.URL.EscapedPath())
	if !ok {
		writeAPIError(w, http.StatusBadRequest, "BadRequest", "malformed URL path escape", ri.corr)
		return
	}
	route, params, allowed := s.matchAPI(r.Method, segs)
	if route == nil {
		if allowed != "" {
			w.Header().Set("Allow", allowed)
			writeAPIError(w, http.StatusMethodNotAllowed, "MethodNotAllowed",
				fmt.Sprintf("method %s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allowed), ri.corr)
			return
		}
		writeAPIError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("no API resource at %s", r.URL.Path), ri.corr)
		return
	}
	if !hasRole(claims.Roles, route.role) {
		writeAPIError(w, http.StatusForbidden, "Forbidden",
			fmt.Sprintf("the application %s lacks the %s permission", claims.AppID, route.role), ri.corr)
		return
	}
	ok, retry, at := s.lim.allow(claims.TenantID+"/"+claims.AppID, route.family, s.now)
	// The record carries the time the limiter counted the call at, so tests
	// can check the sliding windows from Requests() alone.
	ri.rec.Time = at
	if !ok {
		s.stats.add(func(c *counters) { c.Throttled++; c.family(route.family).Throttled++ })
		secs := int((retry + time.Second - 1) / time.Second)
		if secs < 1 {
			secs = 1
		}
		w.Header().Set("Retry-After", fmt.Sprint(secs))
		writeAPIError(w, http.StatusTooManyRequests, "TooManyRequests",
			fmt.Sprintf("API calls quota exceeded for %s calls; retry in %d seconds", route.family, secs), ri.corr)
		return
	}
	s.stats.add(func(c *counters) { c.family(route.family).Calls++ })
	route.serve(w, r, ri, params)
}

func hasRole(have []string, want string) bool {
	for _, h := range have {
		if h == want {
			return true
		}
		if want == RoleMachineReadAll && h == RoleMachineReadWriteAll {
			return true
		}
	}
	return false
}

// apiError is the Defender error envelope.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Target  string `json:"target"`
	} `json:"error"`
}

func writeAPIError(w http.ResponseWriter, status int, code, msg, corr string) {
	var e apiError
	e.Error.Code, e.Error.Message, e.Error.Target = code, msg, corr
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// isJSON accepts application/json with optional parameters, as ASP.NET does.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// recorder keeps the most recent requests.
type recorder struct {
	mu   sync.Mutex
	max  int
	reqs []Request
}

func newRecorder(limit int) *recorder { return &recorder{max: limit} }

func (r *recorder) add(q Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.max > 0 && len(r.reqs) >= r.max {
		// Drop the oldest tenth at once so trimming is amortised.
		drop := r.max / 10
		if drop < 1 {
			drop = 1
		}
		r.reqs = append(r.reqs[:0], r.reqs[drop:]...)
	}
	r.reqs = append(r.reqs, q)
}

func (r *recorder) snapshot() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Request, len(r.reqs))
	copy(out, r.reqs)
	return out
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = nil
}
