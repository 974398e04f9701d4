// SQLite: opening the reader and writer pools, the DSN and its pragmas.

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite" // also registers the "sqlite" database/sql driver
)

// sqliteTuning is what tests shorten: the checkpointer's timing and the
// writer cache's growth.
type sqliteTuning struct {
	ckpt  checkpointConfig
	cache cacheConfig
}

func defaultTuning() sqliteTuning {
	return sqliteTuning{ckpt: defaultCheckpointConfig(), cache: defaultCacheConfig()}
}

// sqliteRole is what a connection pool is for.
type sqliteRole int

const (
	roleWriter sqliteRole = iota
	roleReader
	roleCheckpointer
)

func sqliteDSN(dsn string, role sqliteRole, tune sqliteTuning) (string, error) {
	if dsn == "" {
		return "", errors.New("store dsn: empty SQLite file path")
	}
	if strings.Contains(dsn, ":memory:") || strings.Contains(dsn, "mode=memory") {
		// The reader and writer pools must see the same database.
		return "", errors.New("store dsn: in-memory SQLite is not supported, give a file path")
	}
	if !strings.HasPrefix(dsn, "file:") {
		dsn = "file:" + dsn
	}
	q := url.Values{}
	// WAL: readers never block the writer. synchronous=FULL: every commit
	// is fsynced, so an acknowledged alert survives not only a SIGKILL
	// (NORMAL would be enough for that) but a power cut or kernel panic
	// too; group commit makes one fsync cover a whole batch, which is what
	// keeps FULL affordable.
	//
	// busy_timeout first: the driver runs these in order on each new
	// connection, and the others should wait for a lock where SQLite lets
	// them (journal_mode(WAL) on a new file cannot: connectRetryingBusy).
	if role == roleCheckpointer {
		q.Add("_pragma", "busy_timeout("+strconv.Itoa(checkpointBusyTimeoutMS)+")")
	} else {
		q.Add("_pragma", "busy_timeout(10000)")
	}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	// Group commit runs every call in a SAVEPOINT; keep the statement
	// sub-journals in memory instead of temp files (they are never needed
	// after a crash: the WAL is the durable record).
	q.Add("_pragma", "temp_store(MEMORY)")
	switch role {
	case roleWriter:
		// Migrations take the write lock at BEGIN, so a second process on
		// the same file waits in busy_timeout instead of failing at the
		// first write (the writer says BEGIN IMMEDIATE itself).
		q.Set("_txlock", "immediate")
		// The checkpointer copies the WAL back, not the writer's commits
		// (see checkpointConfig). journal_size_limit: when the writer
		// restarts the log from its beginning it cuts the file back to
		// this size, so one burst does not leave a larger file behind.
		q.Add("_pragma", "wal_autocheckpoint(0)")
		q.Add("_pragma", "journal_size_limit("+strconv.FormatInt(tune.ckpt.restartAt, 10)+")")
		// The writer alone gets a cache that grows (cacheConfig): it is
		// the one connection that inserts into the random-keyed indexes,
		// and it runs every ingest.
		q.Add("_pragma", "cache_size(-"+strconv.Itoa(tune.cache.minKiB)+")")
	case roleReader:
		// Readers never commit, so they never run an automatic checkpoint.
		q.Add("_pragma", "query_only(1)")
	case roleCheckpointer:
		q.Add("_pragma", "wal_autocheckpoint(0)")
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + q.Encode(), nil
}

func (s *sqlStore) openSQLite(ctx context.Context, dsn string, tune sqliteTuning) error {
	ckpt := tune.ckpt
	wdsn, err := sqliteDSN(dsn, roleWriter, tune)
	if err != nil {
		return err
	}
	rdsn, _ := sqliteDSN(dsn, roleReader, tune)
	wdb, err := sql.Open("sqlite", wdsn)
	if err != nil {
		return fmt.Errorf("open sqlite %q: %w", dsn, err)
	}
	// The writer goroutine holds one connection for good (newWriter); the
	// second serves Ping, so a health check never waits for a commit.
	wdb.SetMaxOpenConns(2)
	wdb.SetMaxIdleConns(2)
	wdb.SetConnMaxIdleTime(0)
	wdb.SetConnMaxLifetime(0)
	if err := migrate(ctx, wdb, false); err != nil {
		wdb.Close()
		return fmt.Errorf("migrate sqlite %q: %w", dsn, err)
	}
	rdb, err := sql.Open("sqlite", rdsn)
	if err != nil {
		wdb.Close()
		return fmt.Errorf("open sqlite %q: %w", dsn, err)
	}
	rdb.SetMaxOpenConns(4)
	rdb.SetMaxIdleConns(4)
	if err := rdb.PingContext(ctx); err != nil {
		wdb.Close()
		rdb.Close()
		return fmt.Errorf("open sqlite %q: %w", dsn, err)
	}
	if s.writer, err = newWriter(ctx, wdb, tune.cache, s.log); err != nil {
		wdb.Close()
		rdb.Close()
		return fmt.Errorf("open sqlite %q: %w", dsn, err)
	}
	if !ckpt.off {
		c, err := newCheckpointer(ctx, dsn, ckpt, s.writer, s.log)
		if err != nil {
			s.writer.close()
			wdb.Close()
			rdb.Close()
			return err
		}
		s.ckpt = c
	}
	s.db, s.wdb = rdb, wdb
	return nil
}

// connectRetryingBusy opens a connection, trying again for up to 10 s
// while SQLite answers SQLITE_BUSY. A new connection sets journal_mode(WAL);
// on a new file that is a write, and when another process or store is
// opening the same file at that moment SQLite refuses it at once, without
// waiting in busy_timeout (it would deadlock: the statement already holds a
// read lock). Once the file is in WAL mode the pragma takes no lock.
func connectRetryingBusy(ctx context.Context, db *sql.DB) (*sql.Conn, error) {
	deadline := time.Now().Add(10 * time.Second)
	for try := 1; ; try++ {
		conn, err := db.Conn(ctx)
		var se *sqlite.Error
		if err == nil || !errors.As(err, &se) || se.Code()&0xff != sqliteBusy || time.Now().After(deadline) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(min(try, 10)) * 5 * time.Millisecond):
		}
	}
}

// sqliteBusy is SQLITE_BUSY, the primary result code.
const sqliteBusy = 5
