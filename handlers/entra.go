package handlers

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/scanhook/scanhook/internal/entraauth"
)

// EntraVerifier checks an Entra ID access token for one source; an
// *entraauth.Verifier is one. Its errors are *entraauth.Error.
type EntraVerifier interface {
	Verify(ctx context.Context, token string) (entraauth.Caller, error)
}

// entraRetryAfter is what a sender is told to wait when the signing keys
// cannot be fetched (the verifier retries loading every few seconds).
const entraRetryAfter = 10 * time.Second

// checkEntra tries the bearer token as an Entra ID token when the source
// takes them. It reports ok for a good token; otherwise err is nil when it
// did not try (no verifier, no token, or a token that cannot be a JWT
// while a static bearer token is also configured), or the *Error to answer:
// 401 naming the failed check with an RFC 6750 challenge, or 503 with
// Retry-After when the keys cannot be fetched. The token is never logged:
// neither the Error nor its cause holds it.
func (a *api) checkEntra(c *echo.Context, src *source, tok string) (ok bool, _ error) {
	if src.entra == nil || tok == "" || (src.bearer != nil && strings.Count(tok, ".") != 2) {
		return false, nil
	}
	_, err := src.entra.Verify(c.Request().Context(), tok)
	if err == nil {
		return true, nil
	}
	var e *entraauth.Error
	if !errors.As(err, &e) {
		e = &entraauth.Error{Reason: entraauth.ReasonUnavailable, Description: "the token could not be checked; retry later", Err: err}
	}
	a.metrics.entraRejected.WithLabelValues(src.name, e.Reason).Inc()
	if e.Unavailable() {
		return false, &Error{Status: http.StatusServiceUnavailable, Type: TypeUnavailable, Title: "Token keys unavailable",
			Detail: "Entra ID signing keys cannot be fetched now; retry later", Reason: reasonUnavailable,
			RetryAfter: entraRetryAfter, Err: e}
	}
	desc := e.Reason + ": " + e.Description
	return false, &Error{Status: http.StatusUnauthorized, Type: TypeUnauthorized, Title: "Unauthorized",
		Detail: "Entra ID token refused: " + desc, Reason: reasonUnauthorized,
		Challenge: `Bearer error="invalid_token", error_description="` + quotable(desc) + `"`}
}

// preferEntraError keeps the Entra ID verdict when another method also
// failed on authentication: it says more than "the credentials are invalid".
func preferEntraError(err, entraErr error) error {
	if err == nil || entraErr == nil {
		return err
	}
	var he *Error
	if errors.As(err, &he) && he.Status == http.StatusUnauthorized {
		return entraErr
	}
	return err
}

// quotable keeps a description inside an RFC 6750 quoted string.
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r > 0x7e {
			return '\''
		}
		return r
	}, s)
}
