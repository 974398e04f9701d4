package defendersim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

var actionTypes = []string{"RunAntiVirusScan", "Offboard", "LiveResponse", "CollectInvestigationPackage", "Isolate",
	"Unisolate", "StopAndQuarantineFile", "RestrictCodeExecution", "UnrestrictCodeExecution"}

var actionStatuses = []string{StatusPending, StatusInProgress, StatusSucceeded, StatusFailed, StatusTimeOut, StatusCancelled}

var actionSchema = schema{
	"id":                    {kind: kindString},
	"status":                {kind: kindEnum, enums: actionStatuses},
	"machineId":             {kind: kindString},
	"type":                  {kind: kindEnum, enums: actionTypes},
	"requestor":             {kind: kindString},
	"creationDateTimeUtc":   {kind: kindTime},
	"lastUpdateDateTimeUtc": {kind: kindTime},
}

func isFinal(status string) bool {
	switch status {
	case StatusSucceeded, StatusFailed, StatusTimeOut, StatusCancelled:
		return true
	}
	return false
}

// MachineAction is a snapshot of one action, status as of the snapshot.
type MachineAction struct {
	ID                      string
	Type                    string
	Scope                   string
	Requestor               string
	RequestorComment        string
	Status                  string
	MachineID               string
	ComputerDNSName         string
	CreationDateTimeUTC     time.Time
	LastUpdateDateTimeUTC   time.Time
	CancellationRequestor   string
	CancellationComment     string
	CancellationDateTimeUTC time.Time // zero unless cancelled
}

// action is the stored record; its status is derived from the clock, so a
// fake clock moves every action along without a background goroutine.
type action struct {
	seq                                               int // position in actionStore.list
	id, machineID, dnsName, scope, comment, requestor string
	created                                           time.Time
	pendingFor, inProgressFor                         time.Duration
	final                                             string
	cancelled                                         bool
	cancelAt                                          time.Time
	cancelComment, cancelBy                           string
}

func (a *action) state(now time.Time) (status string, updated time.Time) {
	if a.cancelled {
		return StatusCancelled, a.cancelAt
	}
	el := now.Sub(a.created)
	switch {
	case el < a.pendingFor:
		return StatusPending, a.created
	case el < a.pendingFor+a.inProgressFor:
		return StatusInProgress, a.created.Add(a.pendingFor)
	default:
		return a.final, a.created.Add(a.pendingFor + a.inProgressFor)
	}
}

func (a *action) snapshot(now time.Time) MachineAction {
	st, up := a.state(now)
	ma := MachineAction{
		ID: a.id, Type: "RunAntiVirusScan", Scope: a.scope, Requestor: a.requestor, RequestorComment: a.comment,
		Status: st, MachineID: a.machineID, ComputerDNSName: a.dnsName,
		CreationDateTimeUTC: a.created, LastUpdateDateTimeUTC: up,
	}
	if a.cancelled {
		ma.CancellationRequestor, ma.CancellationComment, ma.CancellationDateTimeUTC = a.cancelBy, a.cancelComment, a.cancelAt
	}
	return ma
}

// formatTime writes times as .NET does: seven fractional digits, UTC.
func formatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.0000000Z") }

// actionJSON is the MachineAction entity as the API returns it.
type actionJSON struct {
	ID                      string   `json:"id"`
	Type                    string   `json:"type"`
	Title                   *string  `json:"title"`
	Requestor               string   `json:"requestor"`
	RequestorComment        string   `json:"requestorComment"`
	Status                  string   `json:"status"`
	MachineID               string   `json:"machineId"`
	ComputerDNSName         string   `json:"computerDnsName"`
	CreationDateTimeUTC     string   `json:"creationDateTimeUtc"`
	LastUpdateDateTimeUTC   string   `json:"lastUpdateDateTimeUtc"`
	CancellationRequestor   *string  `json:"cancellationRequestor"`
	CancellationComment     *string  `json:"cancellationComment"`
	CancellationDateTimeUTC *string  `json:"cancellationDateTimeUtc"`
	ErrorHResult            int      `json:"errorHResult"`
	Scope                   string   `json:"scope"`
	ExternalID              *string  `json:"externalId"`
	RequestSource           string   `json:"requestSource"`
	RelatedFileInfo         any      `json:"relatedFileInfo"`
	Commands                []string `json:"commands"`
	TroubleshootInfo        *string  `json:"troubleshootInfo"`
}

func (m MachineAction) view() actionJSON {
	v := actionJSON{
		ID: m.ID, Type: m.Type, Requestor: m.Requestor, RequestorComment: m.RequestorComment, Status: m.Status,
		MachineID: m.MachineID, ComputerDNSName: m.ComputerDNSName,
		CreationDateTimeUTC:   formatTime(m.CreationDateTimeUTC),
		LastUpdateDateTimeUTC: formatTime(m.LastUpdateDateTimeUTC),
		Scope:                 m.Scope, RequestSource: "PublicApi", Commands: []string{},
	}
	if m.Status == StatusFailed {
		v.ErrorHResult = -2147467259 // E_FAIL, so a failed scan carries an error
	}
	if !m.CancellationDateTimeUTC.IsZero() {
		at := formatTime(m.CancellationDateTimeUTC)
		by, c := m.CancellationRequestor, m.CancellationComment
		v.CancellationRequestor, v.CancellationComment, v.CancellationDateTimeUTC = &by, &c, &at
	}
	return v
}

// MarshalJSON writes the API's JSON form, for /admin/actions and tests.
func (m MachineAction) MarshalJSON() ([]byte, error) { return json.Marshal(m.view()) }

type actionStore struct {
	mu                        sync.Mutex
	pendingFor, inProgressFor time.Duration
	final                     string
	list                      []*action
	byID                      map[string]*action
	lastScan                  map[string]*action // by machine id
}

func newActionStore(pending, inProgress time.Duration, final string) *actionStore {
	return &actionStore{pendingFor: pending, inProgressFor: inProgress, final: final,
		byID: map[string]*action{}, lastScan: map[string]*action{}}
}

func (st *actionStore) setOutcome(final string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.final = final
}

func (st *actionStore) all(now time.Time) []MachineAction {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]MachineAction, len(st.list))
	for i, a := range st.list {
		out[i] = a.snapshot(now)
	}
	return out
}

// create starts a scan unless one is still running on the machine, in which
// case it returns the running one and false. Check and insert share the lock
// so concurrent requests cannot both start a scan.
func (st *actionStore) create(m Machine, scope, comment, requestor string, now time.Time) (MachineAction, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if prev := st.lastScan[m.ID]; prev != nil {
		if s, _ := prev.state(now); !isFinal(s) {
			return prev.snapshot(now), false
		}
	}
	a := &action{
		id: newID(), machineID: m.ID, dnsName: m.ComputerDNSName, scope: scope, comment: comment, requestor: requestor,
		created:    now.UTC().Truncate(100 * time.Nanosecond),
		pendingFor: st.pendingFor, inProgressFor: st.inProgressFor, final: st.final,
	}
	if m.HealthStatus != "Active" {
		// A device that does not report in never starts the scan.
		a.pendingFor, a.inProgressFor, a.final = st.pendingFor+st.inProgressFor, 0, StatusTimeOut
	}
	a.seq = len(st.list)
	st.list = append(st.list, a)
	st.byID[a.id] = a
	st.lastScan[m.ID] = a
	return a.snapshot(now), true
}

func (st *actionStore) get(id string, now time.Time) (MachineAction, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	a := st.byID[strings.ToLower(id)]
	if a == nil {
		return MachineAction{}, false
	}
	return a.snapshot(now), true
}

var errNotFound = errors.New("not found")

func (st *actionStore) cancel(id, comment, by string, now time.Time) (MachineAction, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	a := st.byID[strings.ToLower(id)]
	if a == nil {
		return MachineAction{}, errNotFound
	}
	if s, _ := a.state(now); isFinal(s) {
		return a.snapshot(now), fmt.Errorf("action %s is already %s and cannot be cancelled", a.id, s)
	}
	a.cancelled, a.cancelAt, a.cancelComment, a.cancelBy = true, now.UTC().Truncate(100*time.Nanosecond), comment, by
	return a.snapshot(now), nil
}

func (st *actionStore) filter(f node, top, skip int, now time.Time) []MachineAction {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := []MachineAction{}
	seen := 0
	list := st.list
	if ids, ok := eqCandidates(f, "id"); ok {
		list = list[:0:0]
		picked := map[int]bool{}
		for _, id := range ids {
			if a := st.byID[id]; a != nil && !picked[a.seq] {
				picked[a.seq] = true
				list = append(list, a)
			}
		}
		sort.Slice(list, func(i, j int) bool { return list[i].seq < list[j].seq })
	}
	for _, a := range list {
		ma := a.snapshot(now)
		if f != nil && !f.eval(actionGetter(ma), nil) {
			continue
		}
		seen++
		if seen <= skip {
			continue
		}
		if len(out) >= top {
			break
		}
		out = append(out, ma)
	}
	return out
}

func actionGetter(m MachineAction) func(string) (value, bool) {
	return func(f string) (value, bool) {
		switch f {
		case "id":
			return value{str: m.ID}, true
		case "status":
			return value{str: m.Status}, true
		case "machineId":
			return value{str: m.MachineID}, true
		case "type":
			return value{str: m.Type}, true
		case "requestor":
			return value{str: m.Requestor}, true
		case "creationDateTimeUtc":
			return value{tm: m.CreationDateTimeUTC}, true
		case "lastUpdateDateTimeUtc":
			return value{tm: m.LastUpdateDateTimeUTC}, true
		}
		return value{}, false
	}
}

// bodyError is a rejected request body: the API error code and a message
// naming the field.
type bodyError struct {
	Code, Msg string
}

func (e *bodyError) Error() string { return e.Code + ": " + e.Msg }

// writeBodyError answers 400 with a rejected body's code and message. The
// body decoders return nothing but *bodyError, so anything else is a bug in
// the simulator, and panics as the type assertion this replaces did.
func writeBodyError(w http.ResponseWriter, err error, corr string) {
	var be *bodyError
	if !errors.As(err, &be) {
		panic(fmt.Sprintf("defendersim: body decoder returned %T: %v", err, err))
	}
	writeAPIError(w, http.StatusBadRequest, be.Code, be.Msg, corr)
}

// decodeStrictObject reads a JSON object whose keys must be exactly the
// allowed ones (case-sensitive, no duplicates, nothing after the object).
// Values come back raw; a wrong-case key is named with the expected spelling.
func decodeStrictObject(body []byte, allowed ...string) (map[string]json.RawMessage, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, &bodyError{"InvalidRequestBody", "the request body is empty; a JSON object is required"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, &bodyError{"InvalidRequestBody", "the request body is not valid JSON: " + err.Error()}
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, &bodyError{"InvalidRequestBody", "the request body must be a JSON object"}
	}
	out := map[string]json.RawMessage{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, &bodyError{"InvalidRequestBody", "the request body is not valid JSON: " + err.Error()}
		}
		key, ok := kt.(string)
		if !ok {
			return nil, &bodyError{"InvalidRequestBody", "the request body is not valid JSON"}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, &bodyError{"InvalidRequestBody", fmt.Sprintf("the value of %q is not valid JSON: %v", key, err)}
		}
		known := false
		for _, a := range allowed {
			if key == a {
				known = true
				break
			}
			if strings.EqualFold(key, a) {
				return nil, &bodyError{"InvalidRequestBody", fmt.Sprintf("unknown property %q: property names are case-sensitive, expected %q", key, a)}
			}
		}
		if !known {
			return nil, &bodyError{"InvalidRequestBody", fmt.Sprintf("unknown property %q; allowed: %s", key, strings.Join(allowed, ", "))}
		}
		if _, dup := out[key]; dup {
			return nil, &bodyError{"InvalidRequestBody", fmt.Sprintf("property %q appears more than once", key)}
		}
		out[key] = raw
	}
	if _, err := dec.Token(); err != nil {
		return nil, &bodyError{"InvalidRequestBody", "the request body is not valid JSON: " + err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &bodyError{"InvalidRequestBody", "the request body has data after the JSON object"}
	}
	return out, nil
}

// requiredString reads a required, non-empty string property.
func requiredString(obj map[string]json.RawMessage, key string) (string, error) {
	raw, ok := obj[key]
	if !ok || string(raw) == "null" {
		return "", &bodyError{"MissingRequiredParameter", fmt.Sprintf("the required property %q is missing", key)}
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", &bodyError{"InvalidRequestBody", fmt.Sprintf("property %q must be a string", key)}
	}
	if strings.TrimSpace(v) == "" {
		return "", &bodyError{"MissingRequiredParameter", fmt.Sprintf("the required property %q is empty", key)}
	}
	return v, nil
}

type scanRequest struct {
	Comment, ScanType string
}

// decodeScanRequest decodes a runAntiVirusScan body as strictly as the
// service: exactly Comment and ScanType, ScanType Quick or Full.
func decodeScanRequest(body []byte) (scanRequest, error) {
	obj, err := decodeStrictObject(body, "Comment", "ScanType")
	if err != nil {
		return scanRequest{}, err
	}
	c, err := requiredString(obj, "Comment")
	if err != nil {
		return scanRequest{}, err
	}
	t, err := requiredString(obj, "ScanType")
	if err != nil {
		return scanRequest{}, err
	}
	if t != "Quick" && t != "Full" {
		return scanRequest{}, &bodyError{"InvalidRequestBody", fmt.Sprintf("ScanType %q is not valid: use Quick or Full", t)}
	}
	return scanRequest{Comment: c, ScanType: t}, nil
}

func (s *Server) runScan(w http.ResponseWriter, r *http.Request, ri *reqInfo, params []string) {
	s.stats.add(func(c *counters) { c.ScanCalls++ })
	if !isJSON(r.Header.Get("Content-Type")) {
		writeAPIError(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", "Content-Type must be application/json", ri.corr)
		return
	}
	req, err := decodeScanRequest(ri.body)
	if err != nil {
		writeBodyError(w, err, ri.corr)
		return
	}
	m, ok := s.inv.byIDOnly(params[0])
	if !ok {
		writeAPIError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine %s was not found", params[0]), ri.corr)
		return
	}
	for _, p := range s.opts.UnsupportedPlatforms {
		if strings.EqualFold(p, m.OSPlatform) {
			writeAPIError(w, http.StatusBadRequest, "OsPlatformNotSupported",
				fmt.Sprintf("Action RunAntiVirusScan is not supported on OS platform %s of machine %s", m.OSPlatform, m.ID), ri.corr)
			return
		}
	}
	ma, created := s.acts.create(m, req.ScanType, req.Comment, ri.app.AppID, s.now())
	if !created {
		s.stats.add(func(c *counters) { c.AlreadyRunning++ })
		if s.opts.DuplicateScan == DuplicateScanExisting {
			writeAction(w, r, http.StatusCreated, ma)
			return
		}
		writeAPIError(w, http.StatusBadRequest, "ActiveRequestAlreadyExists",
			fmt.Sprintf("Action is already in progress: machine %s has a pending RunAntiVirusScan action %s (status %s)", m.ID, ma.ID, ma.Status), ri.corr)
		return
	}
	s.stats.add(func(c *counters) { c.ScansCreated++ })
	writeAction(w, r, http.StatusCreated, ma)
}

func writeAction(w http.ResponseWriter, r *http.Request, status int, ma MachineAction) {
	writeJSON(w, status, struct {
		Context string `json:"@odata.context"`
		actionJSON
	}{baseURL(r) + "/api/$metadata#MachineActions/$entity", ma.view()})
}

func (s *Server) getAction(w http.ResponseWriter, r *http.Request, ri *reqInfo, params []string) {
	if r.URL.RawQuery != "" {
		writeAPIError(w, http.StatusBadRequest, "ODataError", "query options are not supported on a single machine action", ri.corr)
		return
	}
	ma, ok := s.acts.get(params[0], s.now())
	if !ok {
		writeAPIError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("MachineAction %s was not found", params[0]), ri.corr)
		return
	}
	writeAction(w, r, http.StatusOK, ma)
}

func (s *Server) listActions(w http.ResponseWriter, r *http.Request, ri *reqInfo, _ []string) {
	filter, top, skip, err := queryOptions(r, actionSchema)
	if err != nil {
		writeAPIError(w, http.StatusBadRequest, "ODataError", err.Error(), ri.corr)
		return
	}
	list := s.acts.filter(filter, top, skip, s.now())
	vals := make([]any, len(list))
	for i, a := range list {
		if s.opts.ListLastUpdateTimeUtc {
			vals[i] = legacyActionJSON{a.view()}
		} else {
			vals[i] = a.view()
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": baseURL(r) + "/api/$metadata#MachineActions",
		"value":          vals,
	})
}

func (s *Server) cancelAction(w http.ResponseWriter, r *http.Request, ri *reqInfo, params []string) {
	if !isJSON(r.Header.Get("Content-Type")) {
		writeAPIError(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", "Content-Type must be application/json", ri.corr)
		return
	}
	obj, err := decodeStrictObject(ri.body, "Comment")
	var comment string
	if err == nil {
		comment, err = requiredString(obj, "Comment")
	}
	if err != nil {
		writeBodyError(w, err, ri.corr)
		return
	}
	ma, err := s.acts.cancel(params[0], comment, ri.app.AppID, s.now())
	switch {
	case errors.Is(err, errNotFound):
		writeAPIError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("MachineAction %s was not found", params[0]), ri.corr)
	case err != nil:
		writeAPIError(w, http.StatusBadRequest, "BadRequest", err.Error(), ri.corr)
	default:
		s.stats.add(func(c *counters) { c.Cancelled++ })
		writeAction(w, r, http.StatusOK, ma)
	}
}

// legacyActionJSON spells the update time lastUpdateTimeUtc.
type legacyActionJSON struct{ actionJSON }

func (l legacyActionJSON) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(l.actionJSON)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m["lastUpdateTimeUtc"] = m["lastUpdateDateTimeUtc"]
	delete(m, "lastUpdateDateTimeUtc")
	return json.Marshal(m)
}
