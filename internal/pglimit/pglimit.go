// Package pglimit owns the Defender rate limits shared by every replica
// through PostgreSQL: a defender.CompletionLimiter whose log of admitted
// calls lives in one table, and the "poll turn" that lets one replica at a
// time follow machine actions.
//
// Defender's limits (100 calls a minute, 1,500 an hour per endpoint family)
// are per Entra ID application, not per pod, so replicas must count
// together. Each admission is one short implicit transaction that takes a
// transaction-scoped advisory lock for the family, counts on PostgreSQL's
// clock (clock_timestamp()) and inserts a row; admissions of one family are
// thus serialized across replicas and measured on one clock, and replica
// clocks do not matter. The semantics are those of
// defender.SlidingWindowLimiter read strictly: a call occupies its slot from
// admission until Done, and then for Length (+ margin) from its completion.
//
// One PostgreSQL schema is one application's budget: replicas that share a
// search_path share the limits.
package pglimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/scanhook/scanhook/internal/defender"
)

// Advisory lock namespaces (the first key of the two-key form; the second
// is a hash of the schema, and of the family for admissions). The store
// uses 0x5ca4 for its migrations.
const (
	migrateLockKey = 0x5ca6
	turnLockKey    = 0x5ca7
	admitLockKey   = 0x5ca8
)

// Defaults for Options.
const (
	DefaultStaleAfter   = 2 * time.Minute
	DefaultPollInterval = 250 * time.Millisecond
	DefaultPruneEvery   = time.Minute
	DefaultQueryTimeout = 5 * time.Second
	DefaultTurnCheck    = 2 * time.Second
	// defaultMaxConns is the pool size Open uses when the DSN does not set
	// pool_max_conns: one admitting goroutine per family plus Done calls.
	defaultMaxConns = 8
)

// Options configures the Limiter.
type Options struct {
	// Windows apply to every family, each family counted on its own, e.g.
	// {100, time.Minute} and {1500, time.Hour}. At least one is required.
	Windows []defender.Window
	// Margin lengthens every window, to absorb the difference between
	// PostgreSQL's clock and Defender's. 0 means 1% of each window;
	// negative means none.
	Margin time.Duration
	// StaleAfter bounds how long an admitted call may stay in flight: a
	// row not Done after StaleAfter is counted as completed at
	// admitted_at+StaleAfter, so a replica that died between Wait and Done
	// cannot block a family for ever. It must exceed the client's per-call
	// timeout (defender.Config.Timeout, 30s by default): a call still
	// running past it could be counted too early. Default 2 minutes.
	StaleAfter time.Duration
	// PollInterval caps one sleep of Wait while the wait is only a lower
	// bound (calls in flight, perhaps on other replicas, must complete
	// first): each poll re-reads the table, so another replica's Done is
	// seen within it. When the wait is exact (completed calls must age
	// out) Wait sleeps for all of it. Default 250ms.
	PollInterval time.Duration
	// PruneEvery is how often rows older than the longest window are
	// deleted. Default 1 minute.
	PruneEvery time.Duration
	// QueryTimeout bounds each statement. Default 5s.
	QueryTimeout time.Duration
	// TurnCheck is how often a held poll turn checks its connection.
	// Default 2s.
	TurnCheck time.Duration
	// Owner names this replica in the table's owner column (diagnostics
	// only). Default: the host name and a random suffix.
	Owner  string
	Logger *slog.Logger
}

// window is a Window with the margin added, in microseconds for the SQL.
type window struct {
	limit  int
	length time.Duration
}

// Limiter is the shared limiter. It implements defender.CompletionLimiter
// and is safe for concurrent use; one per process is enough, shared by
// every client of that process.
type Limiter struct {
	pool     *pgxpool.Pool
	ownsPool bool
	log      *slog.Logger
	owner    string
	windows  []window // shortest first
	stale    time.Duration
	poll     time.Duration
	pruneInt time.Duration
	timeout  time.Duration
	turnInt  time.Duration

	admitSQL string

	mu       sync.Mutex
	closed   bool
	closing  chan struct{} // closed by Close: wakes sleeping waiters
	families map[defender.Family]*familyState
	undone   []int64 // rows whose Done failed to reach the table; retried
	turns    map[*Turn]struct{}

	lastPrune atomic.Int64 // unix nanoseconds of the last prune start
	bg        sync.WaitGroup
}

// familyState is this replica's view of one family.
type familyState struct {
	name string
	// turn holds the right to query PostgreSQL for this family: one
	// admitting goroutine per replica, the others queue here, so a storm
	// of waiters costs PostgreSQL one poll per replica, not one per call.
	turn chan struct{}
	// Guarded by Limiter.mu.
	inflight []int64   // our admitted rows not yet Done, oldest first
	nextFree time.Time // local estimate: nothing is admitted before it
	changed  chan struct{}
}

// Open connects to dsn (a pgx connection string; pool_* parameters are
// honoured) and returns a Limiter that owns the pool: Close closes it.
func Open(ctx context.Context, dsn string, opts Options) (*Limiter, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The DSN may hold a password: say what failed, not the DSN.
		return nil, fmt.Errorf("pglimit: parse dsn: %w", err)
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pglimit: connect: %w", err)
	}
	l, err := New(ctx, pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	l.ownsPool = true
	return l, nil
}

// New returns a Limiter on pool, creating its table in the pool's current
// schema when missing. The caller keeps the pool: Close leaves it open.
func New(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Limiter, error) {
	if pool == nil {
		return nil, errors.New("pglimit: nil pool")
	}
	if len(opts.Windows) == 0 {
		return nil, errors.New("pglimit: options.windows: at least one window is required")
	}
	l := &Limiter{
		pool:     pool,
		log:      opts.Logger,
		owner:    opts.Owner,
		stale:    orDefault(opts.StaleAfter, DefaultStaleAfter),
		poll:     orDefault(opts.PollInterval, DefaultPollInterval),
		pruneInt: orDefault(opts.PruneEvery, DefaultPruneEvery),
		timeout:  orDefault(opts.QueryTimeout, DefaultQueryTimeout),
		turnInt:  orDefault(opts.TurnCheck, DefaultTurnCheck),
		families: map[defender.Family]*familyState{},
		turns:    map[*Turn]struct{}{},
		closing:  make(chan struct{}),
	}
	for name, d := range map[string]time.Duration{
		"stale_after": opts.StaleAfter, "poll_interval": opts.PollInterval, "prune_every": opts.PruneEvery,
		"query_timeout": opts.QueryTimeout, "turn_check": opts.TurnCheck,
	} {
		if d < 0 {
			return nil, fmt.Errorf("pglimit: options.%s: must not be negative (got %s)", name, d)
		}
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.owner == "" {
		l.owner = defaultOwner()
	}
	for i, w := range opts.Windows {
		if w.Limit <= 0 || w.Length <= 0 {
			return nil, fmt.Errorf("pglimit: options.windows[%d]: limit and length must be positive (got %d per %s)", i, w.Limit, w.Length)
		}
		margin := opts.Margin
		if margin == 0 {
			margin = w.Length / 100
		}
		margin = max(margin, 0)
		// Microsecond resolution: PostgreSQL's timestamps have no more.
		length := (w.Length + margin + time.Microsecond - 1).Truncate(time.Microsecond)
		l.windows = append(l.windows, window{limit: w.Limit, length: length})
	}
	slices.SortFunc(l.windows, func(a, b window) int { return int(a.length - b.length) })
	for _, f := range defender.Families() {
		l.families[f] = &familyState{name: f.String(), turn: make(chan struct{}, 1), changed: make(chan struct{})}
	}
	l.admitSQL = buildAdmitSQL(l.windows, l.stale)
	l.lastPrune.Store(time.Now().UnixNano())
	if err := l.migrate(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func defaultOwner() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	if host == "" {
		host = "replica"
	}
	return host + "-" + hex.EncodeToString(b[:])
}

// migrate creates the table when missing. The advisory lock makes replicas
// starting together wait for one another instead of racing on the catalog
// (CREATE ... IF NOT EXISTS alone can fail with a unique violation there).
func (l *Limiter) migrate(ctx context.Context) error {
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pglimit: migrate: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::integer, hashtext(current_schema()))`, migrateLockKey); err != nil {
		return fmt.Errorf("pglimit: migrate: advisory lock: %w", err)
	}
	stmts := []string{
		// family is the family's name, not its number: renumbering the
		// Go constants must not mix the counts up.
		`CREATE TABLE IF NOT EXISTS pglimit_calls (
			id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			family      TEXT NOT NULL,
			admitted_at TIMESTAMPTZ NOT NULL,
			done_at     TIMESTAMPTZ,
			owner       TEXT NOT NULL
		)`,
		`CREATE INDEX IF NOT EXISTS pglimit_calls_family_done ON pglimit_calls (family, done_at)`,
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("pglimit: migrate: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pglimit: migrate: %w", err)
	}
	return nil
}

// Close marks this replica's calls still in flight as done, releases any
// poll turn it holds, and closes the pool if Open made it. Waits after
// Close fail; Done after Close does nothing.
func (l *Limiter) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.closing)
	var ids []int64
	for _, f := range l.families {
		ids = append(ids, f.inflight...)
		f.inflight = nil
	}
	ids = append(ids, l.undone...)
	l.undone = nil
	turns := make([]*Turn, 0, len(l.turns))
	for t := range l.turns {
		turns = append(turns, t)
	}
	l.mu.Unlock()
	for _, t := range turns {
		t.Release()
	}
	var err error
	if len(ids) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		if _, xerr := l.pool.Exec(ctx, markDoneSQL, ids); xerr != nil {
			err = fmt.Errorf("pglimit: close: mark %d calls done: %w", len(ids), xerr)
		}
		cancel()
	}
	l.bg.Wait()
	if l.ownsPool {
		l.pool.Close()
	}
	return err
}
