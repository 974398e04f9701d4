package handlers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
	"github.com/scanhook/scanhook/rules"
)

// Route paths, also the "route" label of the request metrics.
const (
	routeWebhook = "/v1/webhooks/:source"
	routeExplain = "/v1/explain/:source"
)

// explainResponse is what POST /v1/explain/{source} answers.
type explainResponse struct {
	Source string `json:"source"`
	// Rules is the digest of the rule file that decided.
	Rules     string            `json:"rules"`
	Decisions []explainDecision `json:"decisions"`
}

type explainDecision struct {
	AlertID  string        `json:"alert_id"`
	Source   string        `json:"source"`
	Device   *alert.Device `json:"device"`
	Rule     string        `json:"rule"`
	Scan     string        `json:"scan"`
	Comment  string        `json:"comment"`
	Reason   string        `json:"reason"`
	Cooldown string        `json:"cooldown,omitempty"`
	DryRun   bool          `json:"dry_run"`
}

// lookupSource finds the configured source named in the path.
func (a *api) lookupSource(c *echo.Context) (*source, error) {
	name := c.Param("source")
	if knownSource(name) {
		c.Set(ctxSource, name)
	}
	if src := a.sources[name]; src != nil {
		return src, nil
	}
	detail := "unknown source; want one of " + strings.Join(domain.Sources(), ", ")
	if knownSource(name) {
		detail = "source " + name + " is not configured on this server"
	}
	return nil, &Error{Status: http.StatusNotFound, Type: TypeUnknownSource, Title: "Unknown source",
		Detail: detail, Field: "source", Reason: reasonUnknownSource}
}

// checkJSON accepts application/json and application/*+json, with any
// parameters (charset).
func checkJSON(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return &Error{Status: http.StatusUnsupportedMediaType, Type: TypeUnsupportedMedia, Title: "Unsupported media type",
			Detail: "Content-Type is missing; send application/json", Field: "Content-Type", Reason: reasonMediaType}
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")) {
		return nil
	}
	return &Error{Status: http.StatusUnsupportedMediaType, Type: TypeUnsupportedMedia, Title: "Unsupported media type",
		Detail: "Content-Type must be application/json", Field: "Content-Type", Reason: reasonMediaType}
}

// readBody reads the whole body, refusing more than maxBody bytes whether
// or not a Content-Length was sent (chunked bodies are counted as read).
func (a *api) readBody(c *echo.Context) ([]byte, error) {
	req := c.Request()
	if req.ContentLength > a.maxBody {
		return nil, errTooLarge(a.maxBody)
	}
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	size := req.ContentLength
	if size < 0 {
		size = 0
	}
	buf := bytes.NewBuffer(make([]byte, 0, size+bytes.MinRead))
	_, err := buf.ReadFrom(io.LimitReader(req.Body, a.maxBody+1))
	if int64(buf.Len()) > a.maxBody {
		return nil, errTooLarge(a.maxBody)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || echo.StatusCode(err) == http.StatusRequestEntityTooLarge {
			return nil, errTooLarge(a.maxBody)
		}
		return nil, &Error{Status: http.StatusBadRequest, Type: TypeInvalidBody, Title: "Invalid body",
			Detail: "the body could not be read completely", Field: "body", Reason: reasonInvalidBody, Err: err}
	}
	return buf.Bytes(), nil
}

// allow takes one delivery from the ingest limiter.
func (a *api) allow() error {
	if a.limiter == nil {
		return nil
	}
	now := a.now()
	r := a.limiter.ReserveN(now, 1)
	wait := time.Second
	if r.OK() {
		if wait = r.DelayFrom(now); wait <= 0 {
			return nil
		}
		r.CancelAt(now)
	}
	return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimited, Title: "Too many requests",
		Detail: "the ingest rate limit is reached; retry after the time in Retry-After", Reason: reasonRateLimited, RetryAfter: wait}
}

// decodeRequest is the part webhook and explain share: source, auth,
// media type, body, decode. The caller must call done(accepted) once it
// knows whether the delivery was accepted (it forgets the signature
// otherwise, so the sender may retry).
func (a *api) decodeRequest(c *echo.Context, limited bool) (src *source, alerts []alert.Alert, done func(accepted bool), err error) {
	done = func(bool) {}
	src, err = a.lookupSource(c)
	if err != nil {
		return nil, nil, done, err
	}
	au, err := a.authenticate(c, src)
	if err != nil {
		return nil, nil, done, err
	}
	if limited {
		// Only now, authenticated: an unauthenticated request never holds
		// a slot an authenticated sender could have had.
		select {
		case a.inFlight <- struct{}{}:
			done = func(bool) { <-a.inFlight }
		default:
			return nil, nil, done, &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimited, Title: "Too many requests",
				Detail: "too many deliveries are being handled; retry after the time in Retry-After",
				Reason: reasonRateLimited, RetryAfter: time.Second}
		}
	}
	if au.replayKey != nil && limited {
		ok, full := a.replay.reserve(*au.replayKey, au.replayUntil, a.now())
		if full {
			return nil, nil, done, errUnavailable("too many signed deliveries in the replay window; retry later", nil)
		}
		if !ok {
			return nil, nil, done, errUnauthorized(false)
		}
		key := *au.replayKey
		done = func(accepted bool) {
			if !accepted {
				a.replay.release(key)
			}
			<-a.inFlight
		}
	}
	if err := checkJSON(c.Request()); err != nil {
		return nil, nil, done, err
	}
	body := au.body
	if body == nil {
		if body, err = a.readBody(c); err != nil {
			return nil, nil, done, err
		}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil, done, errInvalidBody("body", "the body is empty")
	}
	if limited {
		if err := a.allow(); err != nil {
			return nil, nil, done, err
		}
	}
	alerts, err = alert.Decode(src.name, body, src.opts)
	if err != nil {
		return nil, nil, done, fmt.Errorf("decode %s body: %w", src.name, err)
	}
	capDevices(alerts, a.maxDevices)
	return src, alerts, done, nil
}

// capDevices keeps the first max devices of a delivery, counted across its
// alerts in order, and moves the rest to their alert's Dropped with the
// reason, so that one delivery bounds the decisions (and scans) it makes
// and no device is lost without a record. The rules then give each dropped
// device a decision with no device and the reason "device dropped: …" (an
// alert left with none: one "no usable device: …" decision listing them).
func capDevices(alerts []alert.Alert, maxDevices int) {
	left := maxDevices
	var reason string
	for i := range alerts {
		a := &alerts[i]
		if len(a.Devices) <= left {
			left -= len(a.Devices)
			continue
		}
		if reason == "" {
			reason = fmt.Sprintf("over server.max_devices_per_delivery (%d) for one delivery", maxDevices)
		}
		over := a.Devices[left:]
		dropped := make([]alert.DroppedDevice, 0, len(a.Dropped)+len(over))
		dropped = append(dropped, a.Dropped...)
		for _, d := range over {
			dropped = append(dropped, alert.DroppedDevice{Value: deviceName(d), Reason: reason})
		}
		a.Devices = slices.Clip(a.Devices[:left])
		a.Dropped = dropped
		left = 0
	}
}

// deviceName is how a dropped device is shown: its host name when known.
func deviceName(d alert.Device) string {
	switch {
	case d.DNSName != "":
		return d.DNSName
	case d.ID != "":
		return d.ID
	default:
		return d.AADDeviceID
	}
}

func (a *api) currentRules() (*rules.Ruleset, error) {
	rs := a.rules.Current()
	if rs == nil {
		return nil, errUnavailable("no rules are loaded", nil)
	}
	return rs, nil
}

// webhook is POST /v1/webhooks/{source}: the alert is durable in the store
// before the 202.
func (a *api) webhook(c *echo.Context) error {
	src, alerts, done, err := a.decodeRequest(c, true)
	accepted := false
	defer func() { done(accepted) }()
	if err != nil {
		return err
	}
	rs, err := a.currentRules()
	if err != nil {
		return err
	}
	d := store.Delivery{Source: src.name, Alerts: make([]store.AlertInput, len(alerts))}
	for i := range alerts {
		decs := rs.Evaluate(&alerts[i])
		in := store.AlertInput{Alert: alerts[i], Decisions: make([]store.DecisionInput, len(decs))}
		for j, dec := range decs {
			in.Decisions[j] = store.DecisionInput{
				Device:   dec.Device,
				Rule:     dec.Rule,
				Scan:     dec.Scan,
				Comment:  dec.Comment,
				Reason:   dec.Reason,
				Cooldown: dec.Cooldown,
				DryRun:   dec.DryRun || a.dryRun,
			}
		}
		d.Alerts[i] = in
	}
	res, err := a.store.Ingest(c.Request().Context(), d)
	if err != nil {
		return &storeError{op: "ingest " + src.name + " delivery", err: err}
	}
	accepted = true

	a.metrics.received.WithLabelValues(src.name).Add(float64(len(alerts)))
	for _, o := range res.Decisions {
		rule := o.Rule
		if rule == "" {
			rule = "none"
		}
		a.metrics.decisions.WithLabelValues(rule, o.Scan, o.Status).Inc()
	}
	return c.JSON(http.StatusAccepted, webhookBody(res))
}

// explain is POST /v1/explain/{source}: decode and evaluate, store
// nothing. It is not counted against the ingest limiter, and a signature
// used here is not remembered (nothing was accepted).
func (a *api) explain(c *echo.Context) error {
	src, alerts, done, err := a.decodeRequest(c, false)
	defer done(false)
	if err != nil {
		return err
	}
	rs, err := a.currentRules()
	if err != nil {
		return err
	}
	out := explainResponse{Source: src.name, Rules: rs.Digest(), Decisions: []explainDecision{}}
	for i := range alerts {
		for _, dec := range rs.Evaluate(&alerts[i]) {
			e := explainDecision{AlertID: dec.AlertID, Source: dec.Source, Device: dec.Device, Rule: dec.Rule,
				Scan: dec.Scan, Comment: dec.Comment, Reason: dec.Reason, DryRun: dec.DryRun || a.dryRun}
			if dec.Cooldown > 0 && dec.Scan != domain.ScanNone {
				e.Cooldown = dec.Cooldown.String()
			}
			out.Decisions = append(out.Decisions, e)
		}
	}
	return c.JSON(http.StatusOK, out)
}
