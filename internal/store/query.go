// Query helpers: the q type over both dialects, placeholder rebinding, the
// writer's statement cache, and write transactions with their retries.

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// rebind turns the ? placeholders every query is written with into
// PostgreSQL's $1, $2… (no query has a ? inside a string literal).
func rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// querier is what *sql.DB, *sql.Conn and *sql.Tx share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// q runs queries written with ? placeholders on either dialect.
type q struct {
	x  querier
	pg bool
	// SQLite writer only: statements prepared on the write connection.
	// Parsing each statement anew would be a large part of an ingest's
	// CPU; pgx already caches prepared statements per connection on its own.
	stmts *stmtCache
}

// stmtCache holds the statements prepared on SQLite's write connection;
// only the writer goroutine uses it, one transaction at a time.
type stmtCache struct {
	conn *sql.Conn
	m    map[string]*sql.Stmt
}

// maxCachedStmts bounds the cache; the statement texts are fixed except a
// few with a placeholder list that varies with a batch size.
const maxCachedStmts = 200

// stmt returns the prepared statement for query, or nil when the cache is
// full (the caller then runs the text on the connection).
func (c *stmtCache) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := c.m[query]; ok {
		return st, nil
	}
	if len(c.m) >= maxCachedStmts {
		return nil, nil
	}
	st, err := c.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.m[query] = st
	return st, nil
}

func (c *stmtCache) close() {
	for _, st := range c.m {
		st.Close()
	}
	c.m = nil
}

func (c q) sql(query string) string {
	if c.pg {
		return rebind(query)
	}
	return query
}

func (c q) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if c.stmts != nil {
		st, err := c.stmts.stmt(ctx, query)
		if err != nil {
			return nil, err
		}
		if st != nil {
			return st.ExecContext(ctx, args...)
		}
	}
	return c.x.ExecContext(ctx, c.sql(query), args...)
}

func (c q) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if c.stmts != nil {
		st, err := c.stmts.stmt(ctx, query)
		if err != nil {
			return nil, err
		}
		if st != nil {
			return st.QueryContext(ctx, args...)
		}
	}
	return c.x.QueryContext(ctx, c.sql(query), args...)
}

func (c q) row(ctx context.Context, query string, args ...any) *sql.Row {
	if c.stmts != nil {
		st, err := c.stmts.stmt(ctx, query)
		if err == nil && st != nil {
			return st.QueryRowContext(ctx, args...)
		}
		// On a prepare error the same text fails again below, and the
		// error surfaces from Scan, as database/sql does.
	}
	return c.x.QueryRowContext(ctx, c.sql(query), args...)
}

// forUpdate is the row lock clause; SQLite needs none, its single writer
// already serializes every write transaction.
func (c q) forUpdate() string {
	if c.pg {
		return " FOR UPDATE"
	}
	return ""
}

// reader returns a querier for read-only statements.
func (s *sqlStore) reader() q { return q{x: s.db, pg: s.pg} }

// write runs fn in a write transaction and returns once it is committed
// (or failed). On SQLite fn joins the group-commit writer; on PostgreSQL it
// gets its own READ COMMITTED transaction, retried on deadlock or
// serialization failure. fn may run more than once, so it must not keep
// state across runs except what it resets at its start.
func (s *sqlStore) write(ctx context.Context, fn func(ctx context.Context, tx q) error) error {
	if s.writer != nil {
		return s.writer.do(ctx, fn)
	}
	const maxTries = 8
	for try := 1; ; try++ {
		err := s.pgTx(ctx, fn)
		if err == nil || try == maxTries || !retryable(err) {
			return err
		}
		s.log.Debug("store: retrying transaction", "try", try, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try*try) * time.Millisecond):
		}
	}
}

func (s *sqlStore) pgTx(ctx context.Context, fn func(ctx context.Context, tx q) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(ctx, q{x: tx, pg: true}); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// retryable: PostgreSQL deadlock_detected or serialization_failure; the
// transaction was rolled back and can be run again.
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40P01" || pe.Code == "40001"
	}
	return false
}
