package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// checkpointConfig tunes SQLite's background WAL checkpointer.
//
// Why a checkpointer of our own: SQLite's automatic checkpoint runs inside
// the COMMIT of whichever connection pushes the WAL past its threshold, which
// here is always the single writer, so every few hundred commits one group
// commit also copied the WAL back into the database and fsynced it (~17% of
// the writer's wall time under load). The writer's connections therefore run
// with wal_autocheckpoint(0) and a goroutine on a connection of its own does
// the checkpointing instead.
//
// Durability does not change: a commit is durable once its frames are in the
// WAL and the WAL is fsynced, which the writer still does on every commit
// (synchronous=FULL). A checkpoint only copies already-durable frames into
// the database file (fsyncing that file before the WAL may be reused), so
// when it runs, and on which connection, decides the WAL's size, not what a
// crash can lose.
type checkpointConfig struct {
	// poll is how often the checkpointer looks at the writer and the WAL.
	// Under load it is also how often a PASSIVE checkpoint runs: the -wal
	// file stays at its high-water mark (see restartAt), so it is always
	// over walLimit once a burst has grown it.
	//
	// Short on purpose: each checkpoint copies pages into the database
	// file and fsyncs it, and the writer's own fsyncs wait behind that
	// flush. Many small flushes disturb them far less than a few large
	// ones, for a little more CPU and disk writing (docs/performance.md).
	poll time.Duration
	// interval: a PASSIVE checkpoint at least this often while commits come in.
	interval time.Duration
	// walLimit: a PASSIVE checkpoint as soon as the -wal file is larger
	// (checked every poll), so under load the copying goes on in small steps.
	walLimit int64
	// restartAt: when a PASSIVE checkpoint reports a log this large, the
	// writer never found the WAL fully copied at the start of a transaction
	// (so never restarted it: it has been busy without a break), and a
	// RESTART checkpoint makes it restart. It is the WAL's bound under a
	// sustained load, and also the writer's journal_size_limit, so a burst
	// larger than it does not leave a larger file behind.
	//
	// Each RESTART parks the writer (it copies the frames written since
	// the last PASSIVE and fsyncs), so it is rare on purpose: a small
	// bound makes it run several times a second under load. A file that
	// size is also overwritten in place between restarts, which is cheaper
	// than growing it again.
	restartAt int64
	// idle: a checkpoint of every frame once no commit has come for this
	// long, so the database file alone is complete while nothing happens.
	idle time.Duration
	// off: no checkpointer at all (tests: shows the WAL grows without it).
	off bool
}

func defaultCheckpointConfig() checkpointConfig {
	return checkpointConfig{
		poll:      20 * time.Millisecond,
		interval:  time.Second,
		walLimit:  4 << 20,
		restartAt: 64 << 20,
		idle:      2 * time.Second,
	}
}

// checkpointBusyTimeoutMS bounds how long a RESTART or TRUNCATE checkpoint
// waits for the writer's current transaction and for readers; it holds the
// write lock while it waits for readers, so the writer may wait this long.
// PASSIVE never waits. A checkpoint that gives up is tried again later.
const checkpointBusyTimeoutMS = 200

// checkpointer runs SQLite WAL checkpoints on its own connection.
//
// PASSIVE checkpoints never wait and hold no lock the writer or the readers
// wait on: they copy the frames no reader still needs from the WAL and skip
// what is in use, so neither the writer nor the read pool waits for one. They alone cannot shrink the WAL under a sustained
// load, though: the writer restarts the log from its beginning only when it
// finds every frame already copied as it begins a transaction, which never
// happens while it keeps appending. Hence the two blocking modes, each used
// rarely: RESTART once the log has grown past restartAt (the writer waits for
// the tail of frames written since the last PASSIVE to be copied), and
// TRUNCATE on Close, which leaves an empty -wal file. The writer is parked
// for a RESTART (see restart); it then waits for that checkpoint only, which
// has little left to copy.
//
// When the writer goes idle a PASSIVE checkpoint copies every frame back and
// nothing more: the writer's next transaction then starts the log over by
// itself, in place. A TRUNCATE there (as this once did) resets the log under
// the writer, which makes it drop its page cache, and leaves the file to
// grow again block by block, each commit's fsync then also committing the
// file system's journal, which made the first half second of a burst after
// an idle spell several times slower.
type checkpointer struct {
	db       *sql.DB
	log      *slog.Logger
	cfg      checkpointConfig
	w        *writer
	walPath  string
	pageSize int64
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	// idled counts idle checkpoints that copied every frame (for tests).
	idled atomic.Uint64
}

func newCheckpointer(ctx context.Context, dsn string, cfg checkpointConfig, w *writer, log *slog.Logger) (*checkpointer, error) {
	cdsn, err := sqliteDSN(dsn, roleCheckpointer, sqliteTuning{ckpt: cfg})
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", cdsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite checkpointer: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	c := &checkpointer{db: db, log: log, cfg: cfg, w: w, stop: make(chan struct{}), done: make(chan struct{})}
	var (
		seq        int
		name, file string
	)
	if err := db.QueryRowContext(ctx, `SELECT seq, name, file FROM pragma_database_list WHERE name = 'main'`).Scan(&seq, &name, &file); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite checkpointer: database file: %w", err)
	}
	if err := db.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&c.pageSize); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite checkpointer: page size: %w", err)
	}
	c.walPath = file + "-wal"
	go c.loop()
	return c, nil
}

// checkpointResult is what PRAGMA wal_checkpoint answers.
type checkpointResult struct {
	busy   bool  // a RESTART or TRUNCATE could not finish
	frames int64 // frames in the WAL
	copied int64 // frames copied into the database
}

func (c *checkpointer) checkpoint(ctx context.Context, mode string) (checkpointResult, error) {
	var (
		r    checkpointResult
		busy int
	)
	// mode is one of three constants, never outside input.
	err := c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &r.frames, &r.copied)
	if err != nil {
		return r, fmt.Errorf("wal_checkpoint(%s): %w", mode, err)
	}
	r.busy = busy != 0
	return r, nil
}

// walSize is the -wal file's size (0 when there is none).
func (c *checkpointer) walSize() int64 {
	fi, err := os.Stat(c.walPath)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("store: stat sqlite wal", "err", err)
		}
		return 0
	}
	return fi.Size()
}

func (c *checkpointer) loop() {
	defer close(c.done)
	t := time.NewTicker(c.cfg.poll)
	defer t.Stop()
	ctx := context.Background()
	seen := c.w.commits.Load()
	lastCommit := time.Now()
	lastCkpt := lastCommit
	ckptAt, idleAt := seen, seen // commit counts the last checkpoints covered
	// restarted is the log size the last RESTART left for the writer to
	// reset: a PASSIVE still seeing exactly that many frames means the
	// writer has not begun a transaction since, not that it needs another.
	var restarted int64 = -1
	for {
		var now time.Time
		select {
		case <-c.stop:
			return
		case now = <-t.C:
		}
		n := c.w.commits.Load()
		if n != seen {
			seen, lastCommit = n, now
		}
		switch {
		case n != idleAt && now.Sub(lastCommit) >= c.cfg.idle:
			r, err := c.checkpoint(ctx, "PASSIVE")
			if err != nil {
				c.log.Warn("store: sqlite checkpoint", "err", err)
			} else if r.copied == r.frames {
				// A reader's old snapshot can hold frames back: until
				// then, try again at the next poll.
				idleAt = n
				c.idled.Add(1)
			}
			ckptAt, lastCkpt = n, now
		case n != ckptAt && (now.Sub(lastCkpt) >= c.cfg.interval || c.walSize() > c.cfg.walLimit):
			r, err := c.checkpoint(ctx, "PASSIVE")
			ckptAt, lastCkpt = n, now
			if err != nil {
				c.log.Warn("store: sqlite checkpoint", "err", err)
				continue
			}
			if r.frames*c.pageSize > c.cfg.restartAt && r.frames != restarted {
				restarted = c.restart(ctx)
			}
		}
	}
}

// restart runs a RESTART checkpoint with the writer parked between two
// transactions. Left to SQLite's busy handler it would almost never get the
// write lock: the writer takes it again right after every commit.
// It returns the frames the log held (-1 if it did not run).
func (c *checkpointer) restart(ctx context.Context) int64 {
	resume := make(chan struct{})
	select {
	case c.w.pauses <- resume:
	case <-c.w.exited:
		return -1
	case <-c.stop:
		return -1
	}
	defer close(resume)
	r, err := c.checkpoint(ctx, "RESTART")
	if err != nil {
		c.log.Warn("store: sqlite checkpoint", "err", err)
		return -1
	}
	if r.busy {
		// A reader held an old snapshot past the busy timeout; next time.
		c.log.Debug("store: sqlite RESTART checkpoint was busy")
		return -1
	}
	return r.frames
}

// close stops the loop, truncates the WAL (the writer must be stopped
// first, or the TRUNCATE may find it busy) and closes the connection.
func (c *checkpointer) close() error {
	var err error
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Not an error of Close: nothing is lost, SQLite checkpoints
		// again when the last connection closes.
		if r, cerr := c.checkpoint(ctx, "TRUNCATE"); cerr != nil {
			c.log.Warn("store: final sqlite checkpoint", "err", cerr)
		} else if r.busy {
			c.log.Warn("store: final sqlite checkpoint was busy; the WAL is kept")
		}
		err = c.db.Close()
	})
	return err
}
