package handlers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/store"
)

// Problem types (RFC 9457 "type"). They are URNs rather than URLs because
// scanhook has no documentation site to point at; clients branch on them.
const (
	TypeUnauthorized     = "urn:scanhook:problem:unauthorized"
	TypeNotFound         = "urn:scanhook:problem:not-found"
	TypeUnknownSource    = "urn:scanhook:problem:unknown-source"
	TypeMethodNotAllowed = "urn:scanhook:problem:method-not-allowed"
	TypeTooLarge         = "urn:scanhook:problem:body-too-large"
	TypeUnsupportedMedia = "urn:scanhook:problem:unsupported-media-type"
	TypeInvalidBody      = "urn:scanhook:problem:invalid-body"
	TypeInvalidParameter = "urn:scanhook:problem:invalid-parameter"
	TypeRateLimited      = "urn:scanhook:problem:rate-limited"
	TypeUnavailable      = "urn:scanhook:problem:unavailable"
	TypeInternal         = "urn:scanhook:problem:internal"
)

// Error is an HTTP error with everything its problem response needs.
// Handlers return it (or an error problemFor knows); nothing else decides
// statuses.
type Error struct {
	Status int
	Type   string
	Title  string
	// Detail is shown to the client: it never holds a secret or echoes
	// input beyond a field name.
	Detail string
	// Field names the offending part of the request (a JSON path into the
	// body, or a parameter name).
	Field string
	// Reason is the metrics label for a rejected webhook (bounded set).
	Reason string
	// RetryAfter, when positive, is sent as Retry-After (whole seconds,
	// rounded up).
	RetryAfter time.Duration
	// Challenge, when set on a 401, replaces the default WWW-Authenticate
	// (an RFC 6750 error="invalid_token" for a refused Entra ID token).
	Challenge string
	// Err is the cause, logged but never sent.
	Err error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%d %s", e.Status, e.Title)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// storeError marks a failure of the store (not a bad request), so that
// problemFor answers 503 for it, or 404 when it wraps store.ErrNotFound.
type storeError struct {
	op  string
	err error
}

func (e *storeError) Error() string { return e.op + ": " + e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// problem is the RFC 9457 body, with scanhook's two extension members.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Instance  string `json:"instance"`
	Field     string `json:"field,omitempty"`
	RequestID string `json:"request_id"`
}

// Reasons for rejected webhooks (metric label values).
const (
	reasonUnknownSource = "unknown_source"
	reasonUnauthorized  = "unauthorized"
	reasonTooLarge      = "too_large"
	reasonMediaType     = "unsupported_media_type"
	reasonInvalidBody   = "invalid_body"
	reasonRateLimited   = "rate_limited"
	reasonMethod        = "method_not_allowed"
	reasonUnavailable   = "unavailable"
	reasonInternal      = "internal"
)

// problemFor maps any error to the HTTP error it becomes. It is the one
// place where statuses are decided for errors not already an *Error.
func problemFor(err error) *Error {
	var he *Error
	if errors.As(err, &he) {
		return he
	}
	var fe *alert.FieldError
	if errors.As(err, &fe) {
		return &Error{Status: http.StatusBadRequest, Type: TypeInvalidBody, Title: "Invalid body",
			Detail: fe.Error(), Field: fe.Field, Reason: reasonInvalidBody, Err: err}
	}
	var se *storeError
	if errors.As(err, &se) {
		if errors.Is(err, store.ErrNotFound) {
			return &Error{Status: http.StatusNotFound, Type: TypeNotFound, Title: "Not found",
				Detail: "nothing is stored under this id", Err: err}
		}
		return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Title: "Store unavailable",
			Detail: "the store cannot take the request now; retry later", Reason: reasonUnavailable,
			RetryAfter: 5 * time.Second, Err: err}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Title: "Request cancelled",
			Reason: reasonUnavailable, Err: err}
	}
	// Echo's own errors: router 404/405 and its body limit's 413.
	switch echo.StatusCode(err) {
	case http.StatusNotFound:
		return &Error{Status: http.StatusNotFound, Type: TypeNotFound, Title: "Not found",
			Detail: "no such endpoint", Err: err}
	case http.StatusMethodNotAllowed:
		return &Error{Status: http.StatusMethodNotAllowed, Type: TypeMethodNotAllowed, Title: "Method not allowed",
			Reason: reasonMethod, Err: err}
	case http.StatusRequestEntityTooLarge:
		return &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeTooLarge, Title: "Body too large",
			Reason: reasonTooLarge, Err: err}
	}
	return &Error{Status: http.StatusInternalServerError, Type: TypeInternal, Title: "Internal error",
		Detail: "the request failed inside scanhook; the request id identifies it in the logs", Reason: reasonInternal, Err: err}
}

// writeProblem sends err as problem+json (nothing when the response is
// already committed) and returns what was sent.
func writeProblem(c *echo.Context, err error, requestID string) *Error {
	pe := problemFor(err)
	if r, _ := echo.UnwrapResponse(c.Response()); r != nil && r.Committed {
		return pe
	}
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, echo.MIMEApplicationProblemJSON)
	h.Set("Cache-Control", "no-store")
	if pe.Status == http.StatusUnauthorized {
		if pe.Challenge != "" {
			h.Set("WWW-Authenticate", pe.Challenge)
		} else {
			h.Set("WWW-Authenticate", `Bearer realm="scanhook"`)
		}
	}
	if pe.RetryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((pe.RetryAfter+time.Second-1)/time.Second), 10))
	}
	body := problem{
		Type:      pe.Type,
		Title:     pe.Title,
		Status:    pe.Status,
		Detail:    pe.Detail,
		Instance:  c.Request().URL.EscapedPath(),
		Field:     pe.Field,
		RequestID: requestID,
	}
	if body.Type == "" {
		body.Type = "about:blank"
	}
	if body.Title == "" {
		body.Title = http.StatusText(pe.Status)
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(pe.Status)
		return pe
	}
	if werr := c.JSON(pe.Status, body); werr != nil {
		c.Logger().Debug("write problem response", "error", werr)
	}
	return pe
}

// renderError is Echo's HTTPErrorHandler; observe renders errors itself,
// so this only serves errors raised outside it.
func (a *api) renderError(c *echo.Context, err error) {
	id, _ := c.Get(ctxRequestID).(string)
	_ = writeProblem(c, err, id) // the problem it returns is the one it has just written
}

// Errors handlers build directly.

func errUnauthorized(missing bool) *Error {
	// "missing" or "invalid", nothing more: which credential failed, or
	// why, would help a guesser.
	detail := "the credentials are invalid"
	if missing {
		detail = "credentials are missing"
	}
	return &Error{Status: http.StatusUnauthorized, Type: TypeUnauthorized, Title: "Unauthorized",
		Detail: detail, Reason: reasonUnauthorized}
}

func errInvalidParam(field, detail string) *Error {
	return &Error{Status: http.StatusBadRequest, Type: TypeInvalidParameter, Title: "Invalid parameter",
		Detail: detail, Field: field, Reason: reasonInvalidBody}
}

func errInvalidBody(field, detail string) *Error {
	return &Error{Status: http.StatusBadRequest, Type: TypeInvalidBody, Title: "Invalid body",
		Detail: detail, Field: field, Reason: reasonInvalidBody}
}

func errTooLarge(limit int64) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeTooLarge, Title: "Body too large",
		Detail: fmt.Sprintf("the body is larger than %d bytes", limit), Field: "body", Reason: reasonTooLarge}
}

func errUnavailable(detail string, err error) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Title: "Service unavailable",
		Detail: detail, Reason: reasonUnavailable, RetryAfter: 5 * time.Second, Err: err}
}
