// The store handle: Open picks the backend; Ping and Close.

package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// sqlStore implements Store over database/sql for both dialects.
type sqlStore struct {
	pg     bool
	log    *slog.Logger
	now    func() time.Time
	db     *sql.DB       // PostgreSQL: everything. SQLite: reads.
	wdb    *sql.DB       // SQLite only: the single write connection.
	writer *writer       // SQLite only.
	ckpt   *checkpointer // SQLite only; nil when checkpointConfig.off.
	once   sync.Once
}

// Open opens (creating if needed) the store and applies pending
// migrations. driver is "sqlite" (dsn: a file path or a "file:" URI) or
// "postgres" (dsn: a pgx connection string).
func Open(ctx context.Context, driver, dsn string, deps Deps) (Store, error) {
	s, err := open(ctx, driver, dsn, deps, defaultTuning())
	if err != nil {
		// Not a typed nil in the interface.
		return nil, err
	}
	return s, nil
}

func open(ctx context.Context, driver, dsn string, deps Deps, tune sqliteTuning) (*sqlStore, error) {
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &sqlStore{log: deps.Logger, now: deps.Now}
	switch driver {
	case "sqlite":
		if err := s.openSQLite(ctx, dsn, tune); err != nil {
			return nil, err
		}
	case "postgres":
		s.pg = true
		if err := s.openPostgres(ctx, dsn); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("store driver %q: want sqlite or postgres", driver)
	}
	return s, nil
}

func (s *sqlStore) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping store: %w", err)
	}
	if s.wdb != nil {
		if err := s.wdb.PingContext(ctx); err != nil {
			return fmt.Errorf("ping store writer: %w", err)
		}
	}
	return nil
}

func (s *sqlStore) Close() error {
	var err error
	s.once.Do(func() {
		if s.writer != nil {
			s.writer.close()
			if s.ckpt != nil {
				// After the writer, so the final TRUNCATE finds no writer.
				err = errors.Join(err, s.ckpt.close())
			}
			err = errors.Join(err, s.wdb.Close())
		}
		err = errors.Join(err, s.db.Close())
	})
	return err
}
