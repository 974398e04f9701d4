package pglimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/scanhook/scanhook/internal/defender"
)

// The tests need SCANHOOK_TEST_POSTGRES (a pgx connection string to a
// database the test role may create schemas in); each test gets a fresh
// schema, so its limiters share a table no other test sees.
const pgEnv = "SCANHOOK_TEST_POSTGRES"

// testDB is one fresh schema: every limiter opened on it is a "replica" of
// one application.
type testDB struct {
	dsn   string // with search_path set to the schema
	admin *pgxpool.Pool
}

func newTestDB(t testing.TB) *testDB {
	t.Helper()
	base := os.Getenv(pgEnv)
	if base == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set, and CI is: the PostgreSQL tests must run in CI", pgEnv)
		}
		t.Skipf("%s is not set: skipping the PostgreSQL limiter tests (set it to a postgres:// URL to run them)", pgEnv)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	schema := "pglimit_test_" + hex.EncodeToString(rnd[:])
	ctx := context.Background()
	root, err := pgxpool.New(ctx, base)
	if err != nil {
		t.Fatalf("connect %s: %v", pgEnv, err)
	}
	if _, err := root.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		root.Close()
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := root.Exec(context.Background(), `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
		root.Close()
	})
	dsn := withSearchPath(t, base, schema)
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(admin.Close)
	return &testDB{dsn: dsn, admin: admin}
}

func withSearchPath(t testing.TB, dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("parse %s: %v", pgEnv, err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// open starts one replica's limiter with its own pool.
func (db *testDB) open(t testing.TB, opts Options) *Limiter {
	t.Helper()
	l, err := Open(context.Background(), db.dsn, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// call is one row of pglimit_calls.
type call struct {
	id       int64
	family   string
	admitted time.Time
	done     *time.Time
	owner    string
}

func (db *testDB) calls(t testing.TB) []call {
	t.Helper()
	rows, err := db.admin.Query(context.Background(), `SELECT id, family, admitted_at, done_at, owner FROM pglimit_calls ORDER BY admitted_at, id`)
	if err != nil {
		t.Fatalf("read calls: %v", err)
	}
	defer rows.Close()
	var out []call
	for rows.Next() {
		var c call
		if err := rows.Scan(&c.id, &c.family, &c.admitted, &c.done, &c.owner); err != nil {
			t.Fatalf("scan call: %v", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read calls: %v", err)
	}
	return out
}

// maxOccupancy reads the table the way the limiter must have: at each
// admission, the calls admitted before it that were still in flight or had
// completed within length. It returns the most any admission saw (so the
// window held that many plus the new call).
func maxOccupancy(calls []call, length time.Duration) int {
	most := 0
	for i, x := range calls {
		n := 0
		for _, y := range calls[:i] {
			if y.family != x.family || !y.admitted.Before(x.admitted) {
				continue
			}
			if y.done == nil || y.done.After(x.admitted.Add(-length)) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}

// maxInWindow is the most instants of ts inside any window (t-length, t].
func maxInWindow(ts []time.Time, length time.Duration) int {
	s := append([]time.Time(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i].Before(s[j]) })
	most, lo := 0, 0
	for hi := range s {
		for !s[lo].After(s[hi].Add(-length)) {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

const scan = defender.ScanActions
