package dispatch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/defendersim/simtest"
	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/store"
)

type fakeClock = testutil.Clock

type syncBuffer = testutil.SyncBuffer

func newFakeClock() *fakeClock { return testutil.NewClock() }

// noLimit lets every call through so that the simulator does the throttling.
type noLimit struct{}

func (noLimit) Wait(ctx context.Context, _ defender.Family) error { return ctx.Err() }

// env is a simulator over TLS, the real client, and a real SQLite store.
type env struct {
	sim    *defendersim.Server
	client *defender.Client
	st     store.Store
	reg    *prometheus.Registry
	logs   *syncBuffer
	now    func() time.Time
	seq    int
	// wrap, when set, wraps the store the dispatcher is given.
	wrap func(Store) Store
	// turn, when set, gates the dispatcher's polling.
	turn PollTurn
}

type envOpts struct {
	sim   defendersim.Options
	clock *fakeClock // nil: real time
	// client adjusts the client's configuration and dependencies.
	client func(*defender.Config, *defender.Deps)
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	now := time.Now
	if o.clock != nil {
		now = o.clock.Now
		o.sim.Now = now
	}
	if o.sim.PendingFor == 0 {
		o.sim.PendingFor = 50 * time.Millisecond
	}
	if o.sim.InProgressFor == 0 {
		o.sim.InProgressFor = 50 * time.Millisecond
	}
	sim := simtest.Start(t, o.sim)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: sim.CertPool(), MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = 64
	t.Cleanup(tr.CloseIdleConnections)
	cfg := defender.Config{
		APIURL:        sim.URL(),
		AuthorityHost: sim.URL(),
		Credential:    defender.CredentialClientSecret,
		TenantID:      defendersim.DefaultTenantID,
		ClientID:      defendersim.DefaultClientID,
		Timeout:       5 * time.Second,
	}
	deps := defender.Deps{
		Transport: tr,
		Limiter:   noLimit{},
		Now:       now,
		Getenv: func(k string) string {
			if k == "AZURE_CLIENT_SECRET" {
				return defendersim.DefaultClientSecret
			}
			return ""
		},
		BreakerFailures: 1000,
		BreakerOpenFor:  50 * time.Millisecond,
	}
	if o.client != nil {
		o.client(&cfg, &deps)
	}
	client, err := defender.New(cfg, deps)
	if err != nil {
		t.Fatalf("defender.New: %v", err)
	}
	st, err := store.Open(context.Background(), "sqlite", filepath.Join(t.TempDir(), "scanhook.db"), store.Deps{Now: now})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return &env{sim: sim, client: client, st: st, reg: prometheus.NewRegistry(), logs: &syncBuffer{}, now: now}
}

// dispatcher builds a dispatcher on the env with fast test defaults.
func (e *env) dispatcher(t testing.TB, opts Options) *Dispatcher {
	t.Helper()
	if opts.Owner == "" {
		opts.Owner = "test-" + strings.ReplaceAll(t.Name(), "/", "-")
	}
	if opts.BackoffBase == 0 {
		opts.BackoffBase = 10 * time.Millisecond
	}
	if opts.BackoffMax == 0 {
		opts.BackoffMax = 40 * time.Millisecond
	}
	if opts.ClaimInterval == 0 {
		opts.ClaimInterval = 5 * time.Millisecond
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 20 * time.Millisecond
	}
	if opts.StatsInterval == 0 {
		opts.StatsInterval = 20 * time.Millisecond
	}
	if opts.Lease == 0 {
		opts.Lease = 30 * time.Second
	}
	var st Store = e.st
	if e.wrap != nil {
		st = e.wrap(e.st)
	}
	d, err := New(Deps{
		Store:      st,
		Defender:   e.client,
		PollTurn:   e.turn,
		Logger:     slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: e.reg,
		Now:        e.now,
		Rand:       func() float64 { return 0.5 },
	}, opts)
	if err != nil {
		t.Fatalf("dispatch.New: %v", err)
	}
	return d
}

// start runs d in the background; stop cancels it and returns Run's error.
func start(t testing.TB, d *Dispatcher) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(20 * time.Second):
				err = errors.New("Run did not return within 20s of its context ending")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// queue ingests one alert naming dev with one scan decision and returns
// the receipt and the job id.
func (e *env) queue(t testing.TB, dev alert.Device, scan string) (string, int64) {
	t.Helper()
	e.seq++
	id := fmt.Sprintf("alert-%d-%d", time.Now().UnixNano(), e.seq)
	res, err := e.st.Ingest(context.Background(), store.Delivery{
		Source: "generic",
		Alerts: []store.AlertInput{{
			Alert: alert.Alert{ID: id, Source: "generic", Severity: domain.Severity("high"), Title: "test", Devices: []alert.Device{dev}},
			Decisions: []store.DecisionInput{{
				Device: &dev, Rule: "test-rule", Scan: scan,
				Comment: "scanhook test-rule: generic alert " + id,
			}},
		}},
	})
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if len(res.Decisions) != 1 || res.Decisions[0].JobID == 0 {
		t.Fatalf("Ingest queued no job: %+v", res)
	}
	return res.Receipt, res.Decisions[0].JobID
}

// job reads a job and the receipt's actions.
func (e *env) job(t testing.TB, receipt string) (store.JobDetail, []store.Action) {
	t.Helper()
	r, err := e.st.Receipt(context.Background(), receipt)
	if err != nil {
		t.Fatalf("Receipt: %v", err)
	}
	if len(r.Jobs) != 1 {
		t.Fatalf("receipt %s has %d jobs, want 1", receipt, len(r.Jobs))
	}
	return r.Jobs[0], r.Actions
}

// waitJob waits until the receipt's job is in one of the states.
func (e *env) waitJob(t testing.TB, receipt string, states ...string) store.JobDetail {
	t.Helper()
	var j store.JobDetail
	testutil.WaitForState(t, fmt.Sprintf("the job of receipt %s in state %v", receipt, states), func() bool {
		j, _ = e.job(t, receipt)
		for _, s := range states {
			if j.State == s {
				return true
			}
		}
		return false
	}, func() string {
		return fmt.Sprintf("job %d in state %s (last error %q)", j.ID, j.State, j.LastError)
	})
	return j
}

// scanRequests are the runAntiVirusScan requests the simulator received
// (throttled and failed ones included).
func scanRequests(sim *defendersim.Server) []defendersim.Request {
	var out []defendersim.Request
	for _, r := range sim.Requests() {
		if r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/runAntiVirusScan") {
			out = append(out, r)
		}
	}
	return out
}

// apiRequests are the simulator requests to paths starting with prefix.
func apiRequests(sim *defendersim.Server, method, prefix string) []defendersim.Request {
	var out []defendersim.Request
	for _, r := range sim.Requests() {
		if r.Method == method && strings.HasPrefix(r.Path, prefix) {
			out = append(out, r)
		}
	}
	return out
}

func simActionsOn(sim *defendersim.Server, machineID string) []defendersim.MachineAction {
	var out []defendersim.MachineAction
	for _, a := range sim.Actions() {
		if a.MachineID == machineID {
			out = append(out, a)
		}
	}
	return out
}

func machine(t testing.TB, sim *defendersim.Server, i int) defendersim.Machine {
	t.Helper()
	ms := sim.Machines()
	if i >= len(ms) {
		t.Fatalf("simulator has %d machines, want #%d", len(ms), i)
	}
	return ms[i]
}

// counter reads a counter of the registry (0 when absent).
func counter(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// countingStore counts the dispatcher's claims, the jobs they handed out
// and its reads of open actions (one per poll), so that a test can wait
// for the dispatcher's next loop instead of for time to pass.
type countingStore struct {
	Store
	claims      atomic.Int64 // ClaimJobs calls ended
	claimed     atomic.Int64 // jobs handed out by them
	openActions atomic.Int64 // OpenActions calls ended
}

// counting wraps the env's store for the dispatchers made after it.
func (e *env) counting() *countingStore {
	cs := &countingStore{}
	e.wrap = func(s Store) Store { cs.Store = s; return cs }
	return cs
}

func (c *countingStore) ClaimJobs(ctx context.Context, owner string, limit int, lease time.Duration) ([]store.Job, error) {
	defer c.claims.Add(1)
	jobs, err := c.Store.ClaimJobs(ctx, owner, limit, lease)
	c.claimed.Add(int64(len(jobs)))
	return jobs, err
}

func (c *countingStore) OpenActions(ctx context.Context, limit int) ([]store.Action, error) {
	defer c.openActions.Add(1)
	return c.Store.OpenActions(ctx, limit)
}

// claimRound waits for a whole claim to begin and end after the call: the
// second of two more claims to end began after the first ended. Whatever
// was due when claimRound was called, that claim saw; what it did not hand
// out was not due. (The dispatcher claims every ClaimInterval while idle.)
func (c *countingStore) claimRound(t testing.TB) {
	t.Helper()
	n := c.claims.Load()
	testutil.WaitFor(t, "two more claims", func() bool { return c.claims.Load() >= n+2 })
}

// pollRound is claimRound for the poll loop: a whole poll (OpenActions
// and whatever it asks Defender) ran after the call.
func (c *countingStore) pollRound(t testing.TB) {
	t.Helper()
	n := c.openActions.Load()
	testutil.WaitFor(t, "two more polls", func() bool { return c.openActions.Load() >= n+2 })
}
