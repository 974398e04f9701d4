// Schema migrations, embedded and applied at Open.

package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"
)

//go:embed migrations
var migrationsFS embed.FS

// migrationLockKey is the first half of the two-key advisory lock that
// serializes migrations on PostgreSQL; the second half is the schema's hash,
// so stores in different schemas of one database do not wait on each other.
const migrationLockKey = 0x5ca4

// migrate applies the embedded migrations that schema_migrations does not
// list yet, each in its own transaction. On PostgreSQL it holds an advisory
// lock for the whole run, so replicas starting together apply each file once.
func migrate(ctx context.Context, db *sql.DB, pg bool) error {
	dir := "migrations/sqlite"
	if pg {
		dir = "migrations/postgres"
	}
	entries, err := fs.ReadDir(migrationsFS, dir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sql") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)

	conn, err := connectRetryingBusy(ctx, db)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	if pg {
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1, hashtext(current_schema()))`, migrationLockKey); err != nil {
			return fmt.Errorf("advisory lock: %w", err)
		}
		defer func() {
			// A fresh context: the lock must go even if ctx is done, or
			// the pooled session would keep it.
			uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1, hashtext(current_schema()))`, migrationLockKey); err != nil {
				// Discard the session: that releases the lock.
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
		}()
	}
	// One transaction for the whole run: DDL is transactional in both
	// dialects, and on SQLite the writer DSN makes it BEGIN IMMEDIATE, which
	// serializes processes opening the same file at once.
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	c := q{x: tx, pg: pg}
	if _, err := c.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	applied := map[string]bool{}
	rows, err := c.query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, name := range names {
		version := strings.TrimSuffix(name, ".sql")
		if applied[version] {
			continue
		}
		body, err := migrationsFS.ReadFile(path.Join(dir, name))
		if err != nil {
			return err
		}
		if _, err := c.exec(ctx, string(body)); err != nil {
			return fmt.Errorf("apply %s: %w", name, err)
		}
		if _, err := c.exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, time.Now().UnixMicro()); err != nil {
			return fmt.Errorf("record %s: %w", name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migrations: %w", err)
	}
	return nil
}
