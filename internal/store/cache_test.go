package store

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// writerCacheKiB reads the writer connection's cache_size (negative: KiB).
func writerCacheKiB(t *testing.T, s *sqlStore) (cacheKiB, dbKiB int64) {
	t.Helper()
	err := s.write(context.Background(), func(ctx context.Context, tx q) error {
		var size int64
		if err := tx.row(ctx, "SELECT cache_size, page_count * page_size >> 10 FROM pragma_cache_size(), pragma_page_count(), pragma_page_size()").
			Scan(&size, &dbKiB); err != nil {
			return err
		}
		if size >= 0 {
			return fmt.Errorf("cache_size %d: want a size in KiB (negative)", size)
		}
		cacheKiB = -size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return cacheKiB, dbKiB
}

// TestWriterCacheGrowsWithDatabase: the writer's page cache starts small,
// follows the database's size, and stops at its maximum; reopened on a
// large database it starts small again and grows a step at a time.
func TestWriterCacheGrowsWithDatabase(t *testing.T) {
	// every 0: the writer looks after each transaction.
	cache := cacheConfig{minKiB: 64, maxKiB: 512, ratio: 2, stepKiB: 128}
	path := filepath.Join(t.TempDir(), "cache.db")
	s, err := open(context.Background(), "sqlite", path, Deps{}, sqliteTuning{ckpt: testCheckpointConfig(), cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	if got, _ := writerCacheKiB(t, s); got != 64 {
		t.Fatalf("cache at start: %d KiB, want 64", got)
	}
	prev := int64(64)
	sizes := []int64{prev}
	for i := 0; prev < 512; i++ {
		if i == 5000 {
			t.Fatalf("after %d ingests the cache is %d KiB, want 512 (sizes seen %v)", i, prev, sizes)
		}
		if _, err := s.Ingest(context.Background(), delivery(alertIn(fmt.Sprintf("cache-%d", i), quick(dev(machine(i), ""))))); err != nil {
			t.Fatal(err)
		}
		got, dbKiB := writerCacheKiB(t, s)
		if got == prev {
			continue
		}
		switch {
		case got < prev:
			t.Fatalf("the cache shrank from %d to %d KiB", prev, got)
		case got-prev > int64(cache.stepKiB):
			t.Fatalf("the cache grew from %d to %d KiB at once, want steps of at most %d", prev, got, cache.stepKiB)
		case got > dbKiB/2 && got > 64:
			t.Fatalf("the cache is %d KiB for a database of %d KiB, want at most half of it", got, dbKiB)
		}
		prev = got
		sizes = append(sizes, got)
	}
	// It stops at its maximum however large the database gets.
	for i := range 200 {
		if _, err := s.Ingest(context.Background(), delivery(alertIn(fmt.Sprintf("more-%d", i), quick(dev(machine(i), ""))))); err != nil {
			t.Fatal(err)
		}
	}
	got, dbKiB := writerCacheKiB(t, s)
	if got != 512 {
		t.Fatalf("cache %d KiB with a %d KiB database, want its maximum 512", got, dbKiB)
	}
	t.Logf("%d cache sizes from 64 to 512 KiB; database %d KiB", len(sizes), dbKiB)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened: the database alone would call for the maximum at once.
	s, err = open(context.Background(), "sqlite", path, Deps{}, sqliteTuning{ckpt: testCheckpointConfig(), cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, want := range []int64{64, 192, 320, 448, 512, 512} {
		if got, _ := writerCacheKiB(t, s); got != want {
			t.Fatalf("reopened, after %d transactions: cache %d KiB, want %d", i, got, want)
		}
	}
}
