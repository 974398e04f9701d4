package handlers

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

// maxScansLimit is the largest ?limit= (the store's own cap).
const maxScansLimit = 1000

// readyTimeout bounds the store ping of /readyz, so that a hung database
// makes the probe fail rather than hang.
const readyTimeout = 2 * time.Second

// validReceiptID reports whether id has the shape of store.ReceiptID:
// "r_" and 26 lower-case base32 characters.
func validReceiptID(id string) bool {
	if len(id) != 28 || !strings.HasPrefix(id, "r_") {
		return false
	}
	for i := 2; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// receipt is GET /v1/receipts/{receipt}.
func (a *api) receipt(c *echo.Context) error {
	id := c.Param("receipt")
	if !validReceiptID(id) {
		return errInvalidParam("receipt", "a receipt id is r_ followed by 26 characters a-z, 2-7")
	}
	det, err := a.store.Receipt(c.Request().Context(), id)
	if err != nil {
		return &storeError{op: "read receipt " + id, err: err}
	}
	return c.JSON(http.StatusOK, receiptBody(det))
}

// scanStatuses are the values ?status= may take: decision statuses, job
// states and Defender action statuses (lower case), as store.ScanQuery
// matches them.
var scanStatuses = func() map[string]bool {
	m := map[string]bool{}
	for _, s := range slices.Concat(domain.DecisionStatuses(), domain.JobStates(), domain.ActionStatuses()) {
		m[strings.ToLower(s)] = true
	}
	return m
}()

// scans is GET /v1/scans?device=&status=&limit=.
func (a *api) scans(c *echo.Context) error {
	q, err := parseScanQuery(c.QueryParams())
	if err != nil {
		return err
	}
	recs, err := a.store.ListScans(c.Request().Context(), q)
	if err != nil {
		return &storeError{op: "list scans", err: err}
	}
	return c.JSON(http.StatusOK, scansBody(recs))
}

func parseScanQuery(params map[string][]string) (store.ScanQuery, error) {
	var q store.ScanQuery
	for key, vals := range params {
		switch key {
		case "device", "status", "limit":
		default:
			// A misspelt filter would silently list everything.
			return q, errInvalidParam(key, "unknown query parameter; use device, status or limit")
		}
		if len(vals) != 1 {
			return q, errInvalidParam(key, "give this parameter once")
		}
	}
	// An empty value means no filter, so that "?device=&status=&limit="
	// templates work.
	get := func(key string) (string, bool) {
		v, ok := params[key]
		if !ok || v[0] == "" {
			return "", false
		}
		return v[0], true
	}
	if v, ok := get("device"); ok {
		dev := strings.ToLower(strings.TrimSuffix(v, "."))
		if !alert.ValidMachineID(dev) && !alert.ValidDNSName(dev) {
			return q, errInvalidParam("device", "device must be a 40-hex machine id or a DNS name")
		}
		q.Device = dev
	}
	if v, ok := get("status"); ok {
		st := strings.ToLower(v)
		if !scanStatuses[st] {
			return q, errInvalidParam("status", "status must be a decision status (queued, skipped, duplicate, cooldown, already_scanning, dry_run), a job state (leased, calling, retry, submitted, dead) or an action status (pending, inprogress, succeeded, failed, timeout, cancelled)")
		}
		q.Status = st
	}
	if v, ok := get("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxScansLimit {
			return q, errInvalidParam("limit", "limit must be a whole number from 1 to 1000")
		}
		q.Limit = n
	}
	return q, nil
}

// healthz is GET /healthz: the process serves requests.
func (a *api) healthz(c *echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is GET /readyz: rules loaded and the store reachable.
func (a *api) readyz(c *echo.Context) error {
	rs := a.rules.Current()
	if rs == nil {
		return errUnavailable("not ready: no rules are loaded", nil)
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), readyTimeout)
	defer cancel()
	if err := a.store.Ping(ctx); err != nil {
		return errUnavailable("not ready: the store is unreachable", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"status": "ready", "rules": rs.Digest(), "rule_count": rs.Len()})
}
