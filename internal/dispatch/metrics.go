package dispatch

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/store"
)

type metrics struct {
	jobs           *prometheus.CounterVec
	attempts       prometheus.Counter
	attemptsPerJob prometheus.Histogram
	scanCalls      prometheus.Counter
	adoptChecks    prometheus.Counter
	inFlight       prometheus.Gauge
	resolves       *prometheus.CounterVec
	pollBatches    *prometheus.CounterVec
	actionUpdates  *prometheus.CounterVec
	storeErrors    *prometheus.CounterVec
	budgetWaits    prometheus.Counter

	queue       *prometheus.GaugeVec
	due         prometheus.Gauge
	oldestDue   prometheus.Gauge
	openActions prometheus.Gauge
}

// jobStates are exported even when zero, so that dashboards see a 0
// rather than no series.
var jobStates = []string{domain.JobQueued, domain.JobLeased, domain.JobCalling, domain.JobRetry,
	domain.JobSubmitted, domain.JobAlreadyScanning, domain.JobDead, domain.JobWaiting, domain.JobDeduplicated}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_jobs_total",
			Help: "Scan job attempts by outcome: submitted, adopted (a crashed attempt's action found), already_scanning, retry, throttled_local (held back by our own rate limit; the attempt is given back), dead, deduplicated (the resolved machine already had an open scan or was in cooldown under another name), machine_busy (a Full waiting for the machine's open Quick decided under another name), lease_lost, abandoned (stopped), store_error.",
		}, []string{"outcome"}),
		attempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scanhook_dispatch_attempts_total",
			Help: "Scan job attempts started.",
		}),
		attemptsPerJob: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "scanhook_dispatch_job_attempts",
			Help:    "Attempts a job took to reach a final outcome (submitted, already scanning or dead).",
			Buckets: []float64{1, 2, 3, 4, 6, 8, 12, 16, 24},
		}),
		scanCalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scanhook_dispatch_scan_calls_total",
			Help: "runAntiVirusScan calls made (after marking the job as calling).",
		}),
		adoptChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scanhook_dispatch_adopt_checks_total",
			Help: "Look-ups for the action of an attempt interrupted while calling Defender.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_dispatch_calls_in_flight",
			Help: "Job attempts in flight (each making Defender calls).",
		}),
		resolves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_dispatch_resolves_total",
			Help: "Device to machine id lookups (DNS name, computer name or AAD device id): cache_hit, cache_negative, found, not_found, error.",
		}, []string{"result"}),
		pollBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_dispatch_poll_batches_total",
			Help: "ListActions calls made to poll open actions, by result.",
		}, []string{"result"}),
		actionUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_dispatch_action_updates_total",
			Help: "Polled action statuses recorded, by status.",
		}, []string{"status"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "scanhook_dispatch_store_errors_total",
			Help: "Store operations of the dispatcher that failed, by operation.",
		}, []string{"op"}),
		budgetWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "scanhook_dispatch_budget_waits_total",
			Help: "Times the dispatcher left due jobs queued because the scan rate limit had no room yet.",
		}),
		queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "scanhook_jobs",
			Help: "Scan jobs by state (refreshed periodically from the store).",
		}, []string{"state"}),
		due: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_jobs_due",
			Help: "Scan jobs due now (claimable).",
		}),
		oldestDue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_jobs_oldest_due_seconds",
			Help: "How long the oldest due job has been waiting since it became due.",
		}),
		openActions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "scanhook_dispatch_open_actions",
			Help: "Defender actions not final yet.",
		}),
	}
	for _, s := range jobStates {
		m.queue.WithLabelValues(s).Set(0)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.jobs, m.attempts, m.attemptsPerJob, m.scanCalls, m.adoptChecks, m.inFlight,
		m.resolves, m.pollBatches, m.actionUpdates, m.storeErrors, m.budgetWaits, m.queue, m.due, m.oldestDue, m.openActions} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return m, errors.Join(errs...)
}

func (m *metrics) setStats(st store.Stats) {
	for _, s := range jobStates {
		m.queue.WithLabelValues(s).Set(float64(st.JobsByState[s]))
	}
	for s, n := range st.JobsByState {
		m.queue.WithLabelValues(s).Set(float64(n))
	}
	m.due.Set(float64(st.QueueDepth))
	m.oldestDue.Set(st.OldestDue.Seconds())
	m.openActions.Set(float64(st.OpenActions))
}
