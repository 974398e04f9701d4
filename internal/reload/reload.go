// Package reload owns the rule set the service is running with: it loads the
// rule file, swaps a new version in atomically when the file changes or on
// SIGHUP, and keeps the old rules when a new file is broken.
//
// It polls the file's content rather than watching inotify events because a
// Kubernetes ConfigMap update swaps a symlinked folder (..data), which
// inotify watches on the file itself miss; a content hash sees every update,
// whatever the mechanism, at the cost of one small read per interval.
package reload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/rules"
)

// Holder serves the current rule set and reloads it.
type Holder struct {
	path   string
	opts   rules.Options
	logger *slog.Logger
	read   func(string) ([]byte, error)

	current atomic.Pointer[rules.Ruleset]
	mu      sync.Mutex // serializes reloads
	lastSum [sha256.Size]byte

	ok        prometheus.Gauge
	reloads   *prometheus.CounterVec
	lastOK    prometheus.Gauge
	ruleCount prometheus.Gauge
	// whenFailed counts `when` evaluations that failed, by rule and reason
	// (cost_limit or error).
	whenFailed *prometheus.CounterVec
}

// New loads path once; a broken file at start is an error, since the
// service must not run without rules.
func New(path string, opts rules.Options, logger *slog.Logger, reg prometheus.Registerer) (*Holder, error) {
	h := &Holder{
		path:   path,
		opts:   opts,
		logger: logger,
		read:   os.ReadFile,
		ok: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_rules_last_reload_successful",
			Help: "1 if the last load of the rule file succeeded, 0 if it failed (the previous rules stay in force).",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_rules_reloads_total",
			Help: "Rule file loads by result.",
		}, []string{"result"}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_rules_last_reload_success_timestamp_seconds",
			Help: "When the rule file was last loaded successfully.",
		}),
		ruleCount: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_rules_loaded",
			Help: "Number of rules in force.",
		}),
		whenFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_rules_when_failures_total",
			Help: "Evaluations of a rule's when expression that failed (the rule did not match), by rule and reason: cost_limit or error.",
		}, []string{"rule", "reason"}),
	}
	if opts.WhenFailed == nil {
		h.opts.WhenFailed = func(rule string, costLimit bool) {
			reason := "error"
			if costLimit {
				reason = "cost_limit"
			}
			h.whenFailed.WithLabelValues(rule, reason).Inc()
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{h.ok, h.reloads, h.lastOK, h.ruleCount, h.whenFailed} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register rules metrics: %w", err)
			}
		}
	}
	if _, err := h.Reload(); err != nil {
		return nil, err
	}
	return h, nil
}

// Static wraps a rule set that never reloads (the demo's embedded rules, tests).
func Static(rs *rules.Ruleset) *Holder {
	h := &Holder{}
	h.current.Store(rs)
	return h
}

// Current returns the rule set in force; it never blocks.
func (h *Holder) Current() *rules.Ruleset { return h.current.Load() }

// Reload reads the file and swaps it in if it changed and is valid. It
// reports whether the rules changed. On error the old rules stay.
func (h *Holder) Reload() (bool, error) {
	if h.path == "" {
		return false, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	data, err := h.read(h.path)
	if err != nil {
		h.failed(fmt.Errorf("read rules %s: %w", h.path, err))
		return false, fmt.Errorf("read rules %s: %w", h.path, err)
	}
	sum := sha256.Sum256(data)
	if h.current.Load() != nil && bytes.Equal(sum[:], h.lastSum[:]) {
		return false, nil
	}
	rs, err := rules.Load(h.path, data, h.opts)
	if err != nil {
		// Remember the broken content so a poll does not log it every tick.
		h.lastSum = sum
		h.failed(err)
		return false, err
	}
	h.lastSum = sum
	h.current.Store(rs)
	if h.ok != nil {
		h.ok.Set(1)
		h.reloads.WithLabelValues("success").Inc()
		h.lastOK.SetToCurrentTime()
		h.ruleCount.Set(float64(rs.Len()))
	}
	if h.logger != nil {
		h.logger.Info("rules loaded", "file", h.path, "rules", rs.Len(), "digest", rs.Digest())
	}
	return true, nil
}

func (h *Holder) failed(err error) {
	if h.ok != nil {
		h.ok.Set(0)
		h.reloads.WithLabelValues("failure").Inc()
	}
	if h.logger != nil && h.current.Load() != nil {
		h.logger.Error("rule file rejected; keeping the rules in force", "file", h.path, "error", err.Error())
	}
}

// Watch reloads every interval and whenever hup receives, until ctx ends.
func (h *Holder) Watch(ctx context.Context, interval time.Duration, hup <-chan os.Signal) {
	if h.path == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = h.Reload()
		case <-hup:
			// A SIGHUP always re-reads, even if a poll saw the same bytes
			// fail before: the operator may have fixed a referenced file.
			h.mu.Lock()
			h.lastSum = [sha256.Size]byte{}
			h.mu.Unlock()
			_, _ = h.Reload()
		}
	}
}
