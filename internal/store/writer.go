// SQLite's group-commit writer and the growth of its page cache.

package store

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// writer is SQLite's single writer with group commit: concurrent write
// calls queue up while a commit is being fsynced, and the next transaction
// takes them all, each inside its own SAVEPOINT so that one failing call is
// rolled back alone. Every caller returns only after the transaction holding
// its work has committed.
//
// It runs BEGIN and COMMIT itself on a connection it holds (a *sql.Conn)
// rather than through *sql.Tx: database/sql starts a goroutine for every
// query inside a Tx (Rows.awaitDone, watching the Tx's own cancelable
// context), several per ingest, and under load they crowd the scheduler's
// run queue, so the writer (the service's one serial step) waits behind
// them for a CPU. Queries on a Conn with a context that cannot be
// cancelled start none.
type writer struct {
	conn  *sql.Conn
	stmts *stmtCache
	// tx runs statements on conn through stmts: the callers' work and the
	// writer's own BEGIN, SAVEPOINT and COMMIT alike.
	tx      q
	log     *slog.Logger
	reqs    chan *writeReq
	closing chan struct{}
	exited  chan struct{}
	once    sync.Once
	// commits counts committed transactions; the checkpointer reads it to
	// tell a busy writer from an idle one.
	commits atomic.Uint64
	// pauses parks the writer between two transactions until the channel
	// received is closed (the checkpointer's RESTART).
	pauses chan chan struct{}
	// gap is commitGap in nanoseconds (tests lengthen it).
	gap atomic.Int64
	// cache is how the page cache grows; cacheKiB its size now and
	// cacheAt when the writer last looked. The loop alone uses them.
	cache    cacheConfig
	cacheKiB int
	cacheAt  time.Time
}

type writeReq struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx q) error
	done chan error // buffered 1
}

// maxBatch bounds a group commit, so one transaction stays short even
// under a storm.
const maxBatch = 256

// commitGap is the least time from the start of one group commit to the
// start of the next, once groups have more than one call: calls that
// arrive sooner wait for the rest of it and join the next group. A call
// after a quiet spell starts at once, and so does each call of a lone
// sender whose groups are all of one (it would otherwise be held to one
// call per gap); under concurrent load it makes groups larger, and most
// of a commit's cost is per group, not per call (every group rewrites the
// last page of each table and index it touched, and fsyncs), so a few
// milliseconds of waiting buy less CPU, fewer disk writes and a lower tail
// latency under load.
const commitGap = 4 * time.Millisecond

// newWriter takes one connection of db for good and starts the writer on it.
func newWriter(ctx context.Context, db *sql.DB, cache cacheConfig, log *slog.Logger) (*writer, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlite writer connection: %w", err)
	}
	w := &writer{
		conn:    conn,
		stmts:   &stmtCache{conn: conn, m: map[string]*sql.Stmt{}},
		log:     log,
		reqs:    make(chan *writeReq, 4*maxBatch),
		closing: make(chan struct{}),
		exited:  make(chan struct{}),
		pauses:  make(chan chan struct{}),
		// The connection's DSN set the cache to its first size.
		cache:    cache,
		cacheKiB: cache.minKiB,
	}
	w.tx = q{x: conn, stmts: w.stmts}
	w.gap.Store(int64(commitGap))
	go w.loop()
	return w, nil
}

func (w *writer) do(ctx context.Context, fn func(ctx context.Context, tx q) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case w.reqs <- r:
	case <-w.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the work may commit, so wait for the verdict even if ctx
	// ends: answering "failed" for committed work would only cause a
	// redelivery, but there is no reason to.
	select {
	case err := <-r.done:
		return err
	case <-w.exited:
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	}
}

func (w *writer) close() {
	w.once.Do(func() { close(w.closing) })
	<-w.exited
	w.stmts.close()
	w.conn.Close()
}

func (w *writer) loop() {
	defer close(w.exited)
	batch := make([]*writeReq, 0, maxBatch)
	var (
		lastBegin time.Time
		lastSize  int
	)
	for {
		batch = batch[:0]
		// A pause first: under load reqs is always ready, and select
		// would otherwise leave a waiting checkpointer to chance.
		select {
		case resume := <-w.pauses:
			<-resume
		default:
		}
		select {
		case r := <-w.reqs:
			batch = append(batch, r)
		case resume := <-w.pauses:
			<-resume
			continue
		case <-w.closing:
			w.drain()
			return
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case r := <-w.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if wait := time.Until(lastBegin.Add(time.Duration(w.gap.Load()))); wait > 0 && lastSize > 1 && len(batch) < maxBatch {
			batch = w.gather(batch, wait)
		}
		lastBegin, lastSize = time.Now(), len(batch)
		w.run(batch)
		w.growCache(time.Now())
	}
}

// cacheConfig sizes the SQLite writer connection's page cache, which grows
// with the database.
//
// Every alert inserts into indexes keyed by hashes and ids (the receipt,
// the alert's (source, id)), each at a random page; with SQLite's default
// 2 MiB cache most of those pages were read from the file again once the
// indexes outgrew it. They take about 130 bytes an alert together, so
// 16 MiB keeps them in memory for the first hundred thousand alerts or so.
//
// Why not 16 MiB from the start: each page the cache takes on is a new
// allocation (8 KiB: SQLite's allocator rounds a 4 KiB page and its header
// up to a power of two), and on a fresh process each is new memory that
// must be faulted in. A burst on a new database would fill a 16 MiB cache
// within seconds, putting thousands of page faults in the writer, the
// service's one serial step, when a fresh process can least afford them.
// Grown with the database, the cache takes on memory a little at a time,
// and only once the indexes need it: a new database's indexes fit in 2 MiB
// for its first ten thousand alerts or so.
type cacheConfig struct {
	// minKiB is the cache at start, maxKiB the most it grows to.
	minKiB, maxKiB int
	// ratio: the cache follows the database's size divided by ratio
	// (between minKiB and maxKiB). The random-keyed indexes are about a
	// fortieth of the database (130 of some 5,300 bytes an alert).
	ratio int64
	// stepKiB is the most it grows at once, every: how often the writer
	// looks (between two transactions), so that opening a large database
	// does not bring the whole cache in at once either.
	stepKiB int
	every   time.Duration
}

func defaultCacheConfig() cacheConfig {
	return cacheConfig{minKiB: 2 << 10, maxKiB: 16 << 10, ratio: 32, stepKiB: 1 << 10, every: time.Second}
}

// growCache makes the page cache follow the database's size (see
// cacheConfig), between two transactions. A failure only leaves the cache
// as it is: it is logged and tried again at the next look.
func (w *writer) growCache(now time.Time) {
	if w.cacheKiB >= w.cache.maxKiB || now.Sub(w.cacheAt) < w.cache.every {
		return
	}
	w.cacheAt = now
	ctx := context.Background()
	var dbKiB int64
	if err := w.tx.row(ctx, "SELECT page_count * page_size >> 10 FROM pragma_page_count(), pragma_page_size()").Scan(&dbKiB); err != nil {
		w.log.Warn("store: read the database size", "err", err)
		return
	}
	want := int(min(dbKiB/max(w.cache.ratio, 1), int64(w.cache.maxKiB)))
	if want <= w.cacheKiB {
		return
	}
	next := min(want, w.cacheKiB+w.cache.stepKiB)
	// Not through the statement cache: every size is a new statement.
	if _, err := w.conn.ExecContext(ctx, "PRAGMA cache_size = -"+strconv.Itoa(next)); err != nil {
		w.log.Warn("store: grow the writer's page cache", "to_kib", next, "err", err)
		return
	}
	w.log.Debug("store: writer's page cache grown", "kib", next, "database_kib", dbKiB)
	w.cacheKiB = next
}

// gather adds the calls that arrive within wait to batch (up to maxBatch).
// Closing cuts it short: the calls already taken still run.
func (w *writer) gather(batch []*writeReq, wait time.Duration) []*writeReq {
	t := time.NewTimer(wait)
	defer t.Stop()
	for len(batch) < maxBatch {
		select {
		case r := <-w.reqs:
			batch = append(batch, r)
		case <-t.C:
			return batch
		case <-w.closing:
			return batch
		}
	}
	return batch
}

// drain fails what is still queued at close.
func (w *writer) drain() {
	for {
		select {
		case r := <-w.reqs:
			r.done <- ErrClosed
		default:
			return
		}
	}
}

// exec runs one of the writer's own fixed statements (BEGIN, SAVEPOINT...).
func (w *writer) exec(query string) error {
	_, err := w.tx.exec(context.Background(), query)
	return err
}

// rollback ends a failed transaction. Its error is only logged: a
// connection that cannot roll back fails the next BEGIN, which reports it.
func (w *writer) rollback() {
	if err := w.exec("ROLLBACK"); err != nil {
		w.log.Error("store: rollback failed", "err", err)
	}
}

func (w *writer) run(batch []*writeReq) {
	fail := func(rs []*writeReq, err error) {
		for _, r := range rs {
			r.done <- err
		}
	}
	// IMMEDIATE takes the write lock now, so a second process on the same
	// file waits in busy_timeout here instead of failing at its first write.
	if err := w.exec("BEGIN IMMEDIATE"); err != nil {
		// A transaction a failed ROLLBACK left open would fail every
		// batch from here on; end it and try once more. The BEGIN's retry
		// reports what matters.
		_ = w.exec("ROLLBACK")
		if err := w.exec("BEGIN IMMEDIATE"); err != nil {
			fail(batch, fmt.Errorf("begin: %w", err))
			return
		}
	}
	ok := make([]*writeReq, 0, len(batch))
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- err
			continue
		}
		if err := w.exec("SAVEPOINT w"); err != nil {
			w.rollback()
			fail(ok, fmt.Errorf("savepoint: %w", err))
			fail(batch[i:], fmt.Errorf("savepoint: %w", err))
			return
		}
		// Without cancellation: a statement interrupted mid-transaction
		// can make SQLite roll back the whole transaction, sinking the
		// other callers' work with it. (Also what keeps database/sql from
		// starting a goroutine per query, see writer.)
		if ferr := r.fn(context.WithoutCancel(r.ctx), w.tx); ferr != nil {
			err := w.exec("ROLLBACK TO w")
			if err == nil {
				err = w.exec("RELEASE w")
			}
			if err != nil {
				// The transaction is unusable: nothing of this batch commits.
				w.rollback()
				err = fmt.Errorf("rollback to savepoint after %v: %w", ferr, err)
				fail(ok, err)
				r.done <- ferr
				fail(batch[i+1:], err)
				return
			}
			r.done <- ferr
			continue
		}
		if err := w.exec("RELEASE w"); err != nil {
			w.rollback()
			err = fmt.Errorf("release savepoint: %w", err)
			fail(ok, err)
			fail(batch[i:], err)
			return
		}
		ok = append(ok, r)
	}
	if len(ok) == 0 {
		w.rollback()
		return
	}
	if err := w.exec("COMMIT"); err != nil {
		// SQLite may leave the transaction open after a failed COMMIT
		// (SQLITE_BUSY); end it so the next batch starts clean. When it
		// did not, this ROLLBACK fails with nothing to report.
		_ = w.exec("ROLLBACK")
		w.log.Error("store: group commit failed", "calls", len(ok), "err", err)
		fail(ok, fmt.Errorf("commit: %w", err))
		return
	}
	w.commits.Add(1)
	fail(ok, nil)
}
