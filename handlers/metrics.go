package handlers

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the HTTP layer's scanhook_* series. Every label value comes
// from a bounded set: source names, rejection reasons, rule names from the
// rule file, route templates, methods and status codes.
type metrics struct {
	received  *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	decisions *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	// entraRejected counts refused Entra ID tokens by check (the reasons
	// of internal/entraauth), which the rejected series lumps together.
	entraRejected *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_alerts_received_total",
			Help: "Alerts in webhook deliveries that were accepted (202), by source.",
		}, []string{"source"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_webhook_rejected_total",
			Help: "Webhook deliveries refused, by source (unknown for names that are not sources) and reason.",
		}, []string{"source", "reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_decisions_total",
			Help: "Per-device decisions recorded at intake, by rule (none when no rule matched), scan type and status.",
		}, []string{"rule", "scan", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "scanhook_http_request_duration_seconds",
			Help:    "HTTP request duration by route template, method and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method", "code"}),
		entraRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_entra_token_rejected_total",
			Help: "Entra ID tokens refused on a webhook, by source and failed check (audience, issuer, expired, role, unavailable, ...).",
		}, []string{"source", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.received, m.rejected, m.decisions, m.duration, m.entraRejected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register HTTP metrics: %w", err)
		}
	}
	return m, nil
}
