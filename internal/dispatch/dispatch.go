// Package dispatch owns the road from a queued scan job to a Defender
// machine action: it claims due jobs from the store under a lease, resolves
// the device to a Defender machine id, asks Defender for the scan exactly
// once (marking the job as calling first, and looking for the action a
// crashed attempt may have created before calling again), records the
// outcome with retries, backoff and dead-lettering, and polls the open
// actions until they are final, many actions per Defender call.
//
// It never retries inside one attempt: an attempt ends with one outcome
// recorded in the store, and a retry is a later claim of the same job, so
// that the store (and every replica sharing it) sees each step.
package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/defender"
	"github.com/scanhook/scanhook/internal/store"
)

// Store is what the dispatcher uses of the store.
type Store interface {
	ClaimJobs(ctx context.Context, owner string, limit int, lease time.Duration) ([]store.Job, error)
	MarkCalling(ctx context.Context, jobID int64, owner string) error
	CompleteJob(ctx context.Context, r store.JobResult) error
	BindMachine(ctx context.Context, jobID int64, owner, machineID string) (store.MachineCheck, error)
	MachineByName(ctx context.Context, name string, maxAge time.Duration) (id string, at time.Time, ok bool, err error)
	RememberMachineName(ctx context.Context, name, machineID string) error
	ReleaseJobs(ctx context.Context, owner string) error
	OpenActions(ctx context.Context, limit int) ([]store.Action, error)
	UpdateActions(ctx context.Context, updates []store.ActionUpdate) error
	Stats(ctx context.Context) (store.Stats, error)
}

// Defender is what the dispatcher uses of the Defender client.
type Defender interface {
	RunAntiVirusScan(ctx context.Context, machineID string, scanType string, comment string) (*defender.MachineAction, error)
	FindMachineByComputerName(ctx context.Context, name string) (*defender.Machine, error)
	FindMachineByAADDeviceID(ctx context.Context, id string) (*defender.Machine, error)
	FindMachinesByIP(ctx context.Context, ip string, at time.Time) ([]defender.Machine, error)
	ListActions(ctx context.Context, filter defender.ActionFilter) ([]defender.MachineAction, error)
	// Room says how many more calls of the family the rate limit would
	// admit now and, when none, how long until one; it takes nothing.
	Room(ctx context.Context, family defender.Family) (calls int, wait time.Duration, err error)
}

// PollTurn asks whether this replica may poll action status now. ok false
// means another replica holds the turn. A granted turn lasts until lost
// closes (the replica's hold on it broke) or release is called. Several
// replicas on one database share a turn so that each open action is polled
// once per interval, not once per replica.
type PollTurn func(ctx context.Context) (lost <-chan struct{}, release func(), ok bool, err error)

// Deps are the dispatcher's collaborators. Store and Defender are required.
type Deps struct {
	Store    Store
	Defender Defender
	// PollTurn, when set, gates status polling (several replicas); nil
	// means this process always polls.
	PollTurn PollTurn
	Logger   *slog.Logger
	// Registerer receives the dispatcher's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock for every recorded time (retry times, job age);
	// give the store the same clock. Defaults to time.Now.
	Now func() time.Time
	// Rand is the jitter source, uniform in [0, 1). Defaults to
	// math/rand/v2's Float64.
	Rand func() float64
}

// Options tune the dispatcher. Zero values take the defaults below.
type Options struct {
	// Owner names this process in job leases; unique per process
	// (DefaultOwner gives hostname, pid and a random part).
	Owner string
	// Workers bounds the jobs worked on at once (and so the jobs leased).
	Workers int
	// MaxAttempts: a job whose attempt fails for the MaxAttempts-th time
	// is dead.
	MaxAttempts int
	// MaxAge: a job older than this is dead instead of retried.
	MaxAge time.Duration
	// BackoffBase and BackoffMax shape the retry delay: BackoffBase·2^(n-1)
	// after the n-th attempt, capped at BackoffMax, with equal jitter, and
	// never shorter than the Retry-After Defender or the breaker asked for.
	BackoffBase, BackoffMax time.Duration
	// Lease is how long a claimed job is ours. One attempt (every Defender
	// call of it) must end within Lease/2.
	Lease time.Duration
	// PollInterval is how often open actions are polled.
	PollInterval time.Duration
	// ClaimInterval is the idle wait between claims that found nothing.
	ClaimInterval time.Duration
	// NoBudgetWait: claim due jobs whatever room the scan rate limit has.
	// By default the dispatcher claims no more than it has room for (see
	// budget). Tests set it to exercise the hold-back path, which remains
	// for the race the look cannot close: another replica taking the room
	// between the look and the call.
	NoBudgetWait bool
	// DryRun: never call Defender. Jobs still queued are closed as dead
	// with a "dry run" error (the store has no skipped outcome for jobs;
	// normally a dry-run decision never creates a job), and no action is
	// polled.
	DryRun bool

	// ShutdownGrace bounds how long Run waits, once its context is done,
	// for attempts in flight before cancelling them. Default 10s, at most
	// Lease/2.
	ShutdownGrace time.Duration
	// PollBatch is how many open actions one poll tick looks at (default
	// 100); PollChunk how many action ids go into one ListActions call
	// (default 25, which keeps the query under Defender's URL limit so the
	// client sends one request per chunk).
	PollBatch, PollChunk int
	// StatsInterval is how often the queue gauges are refreshed from
	// Store.Stats (default 15s).
	StatsInterval time.Duration
	// ResolveTTL and ResolveNegativeTTL are how long a DNS name's machine
	// id (default 1h) or its absence (default 5m) is remembered;
	// ResolveCacheSize bounds the names remembered (default 10,000).
	ResolveTTL, ResolveNegativeTTL time.Duration
	ResolveCacheSize               int
}

// Defaults of the tunables that are not configuration keys; those that are
// (workers, attempts, age, backoff, lease, poll interval) default to
// config.Defaults(), their one definition.
const (
	defaultClaimInterval      = 200 * time.Millisecond
	defaultShutdownGrace      = 10 * time.Second
	defaultPollBatch          = 100
	defaultPollChunk          = 25
	defaultStatsInterval      = 15 * time.Second
	defaultResolveTTL         = time.Hour
	defaultResolveNegativeTTL = 5 * time.Minute
	defaultResolveCacheSize   = 10000
)

// FromConfig turns the `dispatch:` configuration into Options.
func FromConfig(c config.Dispatch, dryRun bool, owner string) Options {
	return Options{
		Owner:        owner,
		Workers:      c.Workers,
		MaxAttempts:  c.MaxAttempts,
		MaxAge:       c.MaxAge,
		BackoffBase:  c.BackoffBase,
		BackoffMax:   c.BackoffMax,
		Lease:        c.Lease,
		PollInterval: c.PollInterval,
		DryRun:       dryRun,
	}
}

// DefaultOwner is a lease owner unique to this process: host name, pid and
// a random suffix (a restarted container may reuse both host and pid).
func DefaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "scanhook"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

func (o *Options) fill() error {
	def := config.Defaults().Dispatch
	type dur struct {
		name string
		v    *time.Duration
		def  time.Duration
	}
	for _, d := range []dur{
		{"max_age", &o.MaxAge, def.MaxAge},
		{"backoff_base", &o.BackoffBase, def.BackoffBase},
		{"backoff_max", &o.BackoffMax, def.BackoffMax},
		{"lease", &o.Lease, def.Lease},
		{"poll_interval", &o.PollInterval, def.PollInterval},
		{"claim_interval", &o.ClaimInterval, defaultClaimInterval},
		{"shutdown_grace", &o.ShutdownGrace, defaultShutdownGrace},
		{"stats_interval", &o.StatsInterval, defaultStatsInterval},
		{"resolve_ttl", &o.ResolveTTL, defaultResolveTTL},
		{"resolve_negative_ttl", &o.ResolveNegativeTTL, defaultResolveNegativeTTL},
	} {
		if *d.v < 0 {
			return fmt.Errorf("dispatch.%s: %s is negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	type num struct {
		name string
		v    *int
		def  int
	}
	for _, n := range []num{
		{"workers", &o.Workers, def.Workers},
		{"max_attempts", &o.MaxAttempts, def.MaxAttempts},
		{"poll_batch", &o.PollBatch, defaultPollBatch},
		{"poll_chunk", &o.PollChunk, defaultPollChunk},
		{"resolve_cache_size", &o.ResolveCacheSize, defaultResolveCacheSize},
	} {
		if *n.v < 0 {
			return fmt.Errorf("dispatch.%s: %d is negative", n.name, *n.v)
		}
		if *n.v == 0 {
			*n.v = n.def
		}
	}
	if o.BackoffMax < o.BackoffBase {
		return fmt.Errorf("dispatch.backoff_max: %s is below backoff_base %s", o.BackoffMax, o.BackoffBase)
	}
	if o.Owner == "" {
		o.Owner = DefaultOwner()
	}
	if o.ShutdownGrace > o.Lease/2 {
		o.ShutdownGrace = o.Lease / 2
	}
	return nil
}

// Dispatcher turns queued scan jobs into Defender scans. Run drives it.
type Dispatcher struct {
	st   Store
	def  Defender
	turn PollTurn
	log  *slog.Logger
	now  func() time.Time
	rnd  func() float64
	opts Options
	m    *metrics
	res  *resolveCache

	kick     chan struct{}
	slotFree chan struct{}
	inFlight atomic.Int64
	running  atomic.Bool
}

// New builds a dispatcher; it starts nothing.
func New(deps Deps, opts Options) (*Dispatcher, error) {
	if deps.Store == nil {
		return nil, errors.New("dispatch: Deps.Store is nil")
	}
	if deps.Defender == nil {
		return nil, errors.New("dispatch: Deps.Defender is nil")
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Rand == nil {
		deps.Rand = mrand.Float64
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, fmt.Errorf("dispatch metrics: %w", err)
	}
	return &Dispatcher{
		st:       deps.Store,
		def:      deps.Defender,
		turn:     deps.PollTurn,
		log:      deps.Logger.With("component", "dispatch"),
		now:      deps.Now,
		rnd:      deps.Rand,
		opts:     opts,
		m:        m,
		res:      newResolveCache(opts.ResolveCacheSize, opts.ResolveTTL, opts.ResolveNegativeTTL, deps.Now),
		kick:     make(chan struct{}, 1),
		slotFree: make(chan struct{}, 1),
	}, nil
}

// Owner is the lease owner this dispatcher claims jobs as.
func (d *Dispatcher) Owner() string { return d.opts.Owner }

// Kick asks for a claim now rather than at the next tick, e.g. right after
// an ingest queued a job. It never blocks.
func (d *Dispatcher) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Run claims and works jobs, polls open actions and refreshes the queue
// gauges until ctx is done. It then stops claiming, gives the attempts in
// flight up to ShutdownGrace to end (cancelling them after), and hands every
// job it still holds back to the queue. It returns nil after a clean stop.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("dispatch: Run called twice")
	}
	defer d.running.Store(false)
	d.log.Info("dispatcher started", "owner", d.opts.Owner, "workers", d.opts.Workers, "dry_run", d.opts.DryRun)

	// Attempts run on their own context: a stop must not cut a Defender
	// call in half when it can be let finish within the grace period.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()

	var bg sync.WaitGroup
	bg.Go(func() { d.statsLoop(ctx) })
	if !d.opts.DryRun {
		bg.Go(func() { d.pollLoop(ctx) })
	}

	var workers sync.WaitGroup
	d.claimLoop(ctx, workCtx, &workers)

	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	grace := time.NewTimer(d.opts.ShutdownGrace)
	select {
	case <-done:
	case <-grace.C:
		d.log.Warn("dispatcher stop: cancelling attempts still in flight", "in_flight", d.inFlight.Load())
		cancelWork()
		// A cancelled attempt ends at once unless the store does not
		// answer; a process must still be able to exit then.
		stuck := time.NewTimer(stuckAfterCancel)
		select {
		case <-done:
		case <-stuck.C:
			n := d.inFlight.Load()
			d.log.Error("dispatcher stop: attempts did not end after cancellation; their jobs return to the queue when their lease ends",
				"in_flight", n)
			return fmt.Errorf("dispatch stop: %d attempts did not end within %s of cancellation", n, stuckAfterCancel)
		}
		stuck.Stop()
	}
	grace.Stop()
	bg.Wait()

	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := d.st.ReleaseJobs(rctx, d.opts.Owner); err != nil {
		d.log.Error("dispatcher stop: releasing jobs failed; they return to the queue when their lease ends",
			"owner", d.opts.Owner, "error", err.Error())
		return fmt.Errorf("dispatch stop: %w", err)
	}
	d.log.Info("dispatcher stopped", "owner", d.opts.Owner)
	return nil
}

// stuckAfterCancel bounds the wait for cancelled attempts at stop, and
// releaseTimeout the hand-back of the jobs still held.
const (
	stuckAfterCancel = 5 * time.Second
	releaseTimeout   = 10 * time.Second
)

// MaxStopTime bounds how long Run takes to return once its context is done
// with the default ShutdownGrace: the chart's termination grace period must
// cover it after the HTTP drain.
const MaxStopTime = defaultShutdownGrace + stuckAfterCancel + releaseTimeout

// claimLoop leases only as many jobs as there are free workers, so that no
// job's lease runs down while it waits for a worker.
func (d *Dispatcher) claimLoop(ctx, workCtx context.Context, workers *sync.WaitGroup) {
	errWait := d.opts.ClaimInterval
	for ctx.Err() == nil {
		free := d.opts.Workers - int(d.inFlight.Load())
		if free <= 0 {
			select {
			case <-ctx.Done():
			case <-d.slotFree:
			}
			continue
		}
		limit, wait := d.budget(ctx, free)
		if wait > 0 {
			d.m.budgetWaits.Inc()
			// A kick does not make room; the limiter's prediction does,
			// or calls in flight finishing, hence the cap.
			d.sleep(ctx, min(wait, budgetRecheck))
			continue
		}
		if limit == 0 {
			// What room is left, our own attempts in flight may take.
			select {
			case <-ctx.Done():
			case <-d.slotFree:
			}
			continue
		}
		jobs, err := d.st.ClaimJobs(ctx, d.opts.Owner, limit, d.opts.Lease)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.m.storeErrors.WithLabelValues("claim").Inc()
			d.log.Error("claiming jobs failed", "error", err.Error(), "retry_in", errWait)
			d.sleep(ctx, errWait)
			// Back off while the store is down, up to a few seconds.
			errWait = min(errWait*2, max(5*time.Second, d.opts.ClaimInterval))
			continue
		}
		errWait = d.opts.ClaimInterval
		claimedAt := time.Now()
		for _, j := range jobs {
			if ctx.Err() != nil {
				// Claimed as we were stopped: ReleaseJobs hands it back.
				break
			}
			d.inFlight.Add(1)
			d.m.inFlight.Inc()
			workers.Go(func() {
				defer func() {
					d.inFlight.Add(-1)
					d.m.inFlight.Dec()
					select {
					case d.slotFree <- struct{}{}:
					default:
					}
				}()
				d.work(workCtx, j, claimedAt)
			})
		}
		if len(jobs) < limit {
			// Nothing more is due: wait for the tick, a kick or a stop.
			t := time.NewTimer(d.opts.ClaimInterval)
			select {
			case <-ctx.Done():
			case <-d.kick:
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// budgetRecheck caps one wait for the scan budget: a prediction made while
// calls are in flight is a lower bound that their completion can change.
const budgetRecheck = time.Second

// budget is how many of free jobs to claim: as many as the scan rate limit
// has room for, so that no claimed job is only held back by it (a claim, a
// mark and a reschedule for nothing: in a storm of 500 new devices with 100
// scans a minute, 1,200 writes in its first second through the one SQLite
// writer that is also taking the alerts). With no room it gives the
// predicted wait instead. Every job ends in a scan call or needs one first;
// the few that would not (a device gone from Defender) wait with the rest.
// A limiter that cannot answer lets claiming go on: its Wait still decides
// each call.
func (d *Dispatcher) budget(ctx context.Context, free int) (limit int, wait time.Duration) {
	if d.opts.NoBudgetWait || d.opts.DryRun {
		return free, 0
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	calls, wait, err := d.def.Room(dctx, defender.ScanActions)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("asking the scan rate limit for room failed; claiming anyway", "error", err.Error())
		}
		return free, 0
	}
	if calls <= 0 {
		return 0, max(wait, time.Millisecond)
	}
	// Our attempts in flight may not have reached the limiter yet, so they
	// are counted against the room; those that have are counted twice,
	// which only errs on the careful side.
	return max(min(free, calls-int(d.inFlight.Load())), 0), 0
}

func (d *Dispatcher) sleep(ctx context.Context, dur time.Duration) {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (d *Dispatcher) statsLoop(ctx context.Context) {
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := d.st.Stats(sctx)
		cancel()
		if err == nil {
			d.m.setStats(st)
		} else if ctx.Err() == nil {
			d.m.storeErrors.WithLabelValues("stats").Inc()
			d.log.Warn("reading queue stats failed", "error", err.Error())
		}
		t := time.NewTimer(d.opts.StatsInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (d *Dispatcher) pollLoop(ctx context.Context) {
	t := time.NewTicker(d.opts.PollInterval)
	defer t.Stop()
	var (
		lost    <-chan struct{}
		release func()
	)
	defer func() {
		if release != nil {
			release()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if d.turn != nil {
			if release != nil {
				select {
				case <-lost:
					d.log.Warn("lost the poll turn; another replica may take it")
					release()
					release, lost = nil, nil
				default:
				}
			}
			if release == nil {
				l, r, ok, err := d.turn(ctx)
				if err != nil {
					if ctx.Err() == nil {
						d.log.Warn("asking for the poll turn failed", "error", err.Error())
					}
					continue
				}
				if !ok {
					continue
				}
				lost, release = l, r
				d.log.Info("took the poll turn")
			}
		}
		if _, err := d.pollOnce(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("polling actions failed", "error", err.Error())
		}
	}
}
