package handlers

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/scanhook/scanhook/internal/domain"
)

// Context keys set by observe and the handlers.
const (
	ctxRequestID = "scanhook.request_id"
	ctxSource    = "scanhook.source"
)

// maxRequestIDLen bounds an incoming X-Request-Id; longer or odd ones are
// replaced, so a header cannot inject into logs or blow them up.
const maxRequestIDLen = 128

func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// observe wraps every request: request id, security headers, panic
// recovery, the problem response for any error, the access log line and
// the metrics. Being outermost (after routing), it sees unknown routes and
// wrong methods too.
func (a *api) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		start := time.Now()
		req := c.Request()
		id := req.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		c.Set(ctxRequestID, id)
		h := c.Response().Header()
		h.Set("X-Request-Id", id)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")

		err := refuseEncoding(req)
		if err == nil {
			err = a.callRecover(next, c)
		}
		var pe *Error
		if err != nil {
			pe = writeProblem(c, err, id)
		}

		status := http.StatusOK
		var size int64
		if r, _ := echo.UnwrapResponse(c.Response()); r != nil {
			status, size = r.Status, r.Size
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		elapsed := time.Since(start)
		a.metrics.duration.WithLabelValues(route, methodLabel(req.Method), strconv.Itoa(status)).Observe(elapsed.Seconds())

		src, _ := c.Get(ctxSource).(string)
		if src == "" && route == routeWebhook {
			// Refused before the handler looked the source up (405):
			// still counted under its source. The
			// router fills no parameter on a 405, hence the path.
			name := c.Param("source")
			if name == "" {
				name = strings.TrimPrefix(req.URL.Path, "/v1/webhooks/")
			}
			if knownSource(name) {
				src = name
			}
		}
		if pe != nil && (route == routeWebhook) {
			label := src
			if label == "" {
				label = "unknown"
			}
			reason := pe.Reason
			if reason == "" {
				reason = reasonInternal
			}
			a.metrics.rejected.WithLabelValues(label, reason).Inc()
		}

		// The path only: the query may hold ?token=, and headers and bodies
		// carry credentials and alert contents.
		attrs := []slog.Attr{
			slog.String("request_id", id),
			slog.String("method", req.Method),
			slog.String("path", req.URL.EscapedPath()),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
			slog.Int64("bytes", size),
			slog.String("remote", c.RealIP()),
		}
		if src != "" {
			attrs = append(attrs, slog.String("source", src))
		}
		level := slog.LevelInfo
		if pe != nil {
			attrs = append(attrs, slog.String("problem", pe.Type))
			if pe.Field != "" {
				attrs = append(attrs, slog.String("field", pe.Field))
			}
			if pe.Status >= 500 {
				level = slog.LevelError
				if pe.Err != nil {
					attrs = append(attrs, slog.String("error", pe.Err.Error()))
				}
			}
		}
		a.log.LogAttrs(req.Context(), level, "http request", attrs...)
		return nil
	}
}

// refuseEncoding refuses a compressed body (Content-Encoding: gzip and the
// like): it is not decoded, so that server.max_body_bytes bounds what a
// request makes scanhook hold, and refusing it names the encoding rather
// than calling the bytes invalid JSON.
func refuseEncoding(req *http.Request) error {
	enc := strings.TrimSpace(req.Header.Get("Content-Encoding"))
	if enc == "" || strings.EqualFold(enc, "identity") {
		return nil
	}
	if len(enc) > 64 {
		enc = enc[:64] + "…"
	}
	return &Error{Status: http.StatusUnsupportedMediaType, Type: TypeUnsupportedMedia, Title: "Unsupported media type",
		Detail: "Content-Encoding " + strconv.Quote(enc) + " is not supported; send the body uncompressed",
		Field:  "Content-Encoding", Reason: reasonMediaType}
}

// callRecover runs next, turning a panic into a 500 (http.ErrAbortHandler
// is re-raised: net/http uses it to abort a response on purpose).
func (a *api) callRecover(next echo.HandlerFunc, c *echo.Context) (err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if r == http.ErrAbortHandler { //nolint:errorlint // a panic value, not a returned error: net/http compares it the same way
			panic(r)
		}
		err = &Error{Status: http.StatusInternalServerError, Type: TypeInternal, Title: "Internal error",
			Detail: "the request failed inside scanhook; the request id identifies it in the logs",
			Reason: reasonInternal, Err: fmt.Errorf("panic: %v\n%s", r, debug.Stack())}
	}()
	return next(c)
}

// methodLabel keeps the method label bounded: clients may send any token.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// knownSource keeps metric labels bounded: a name from the URL is used
// only when it is one of the source names.
func knownSource(name string) bool { return slices.Contains(domain.Sources(), name) }
