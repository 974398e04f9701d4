package defender

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	calls       *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	breaker     *prometheus.GaugeVec
	limiterWait *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_defender_calls_total",
			Help: "Defender API calls by operation and outcome (ok, the error kind, or throttled_local when our own rate limit held the call back and nothing was sent).",
		}, []string{"op", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "scanhook_defender_call_duration_seconds",
			Help:    "Time of Defender API calls sent, token included, limiter wait excluded.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"op"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "scanhook_defender_breaker_state",
			Help: "Circuit breaker state per endpoint family: 0 closed, 1 half-open, 2 open.",
		}, []string{"family"}),
		limiterWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "scanhook_defender_limiter_wait_seconds",
			Help:    "Time calls waited for the Defender rate limiter, per endpoint family.",
			Buckets: []float64{.001, .01, .1, .5, 1, 5, 15, 30, 60, 300, 900, 3600},
		}, []string{"family"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.calls, err = register(reg, m.calls); err != nil {
		return nil, err
	}
	if m.latency, err = register(reg, m.latency); err != nil {
		return nil, err
	}
	if m.breaker, err = register(reg, m.breaker); err != nil {
		return nil, err
	}
	if m.limiterWait, err = register(reg, m.limiterWait); err != nil {
		return nil, err
	}
	return m, nil
}

// register adopts an identical collector already registered (a second
// client on the same registry, as in tests) instead of failing.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
