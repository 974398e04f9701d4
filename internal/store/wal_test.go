package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scanhook/scanhook/internal/domain"
	"github.com/scanhook/scanhook/internal/testutil"
)

// walIngests and walBound size the WAL tests: without any checkpoint this
// many ingests leave a WAL several times walBound, with the checkpointer
// (tuned small below) it never gets near it.
const (
	walIngests = 2000
	walBound   = 4 << 20
)

// testCheckpointConfig is the default shape scaled down, so a few thousand
// ingests cross every threshold.
func testCheckpointConfig() checkpointConfig {
	return checkpointConfig{
		poll:      5 * time.Millisecond,
		interval:  50 * time.Millisecond,
		walLimit:  256 << 10,
		restartAt: 1 << 20,
		idle:      200 * time.Millisecond,
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// ingestWatchingWAL runs walIngests ingests from 16 goroutines while
// sampling the -wal file, and returns the largest size seen and the first
// and last receipts.
func ingestWatchingWAL(t *testing.T, s Store, walPath string) (maxWAL int64, receipts []string) {
	t.Helper()
	var (
		seq     atomic.Int64
		peak    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		stop    = make(chan struct{})
		sampled = make(chan struct{})
	)
	go func() {
		defer close(sampled)
		for {
			if fi, err := os.Stat(walPath); err == nil && fi.Size() > peak.Load() {
				peak.Store(fi.Size())
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	for range 16 {
		wg.Go(func() {
			for {
				n := seq.Add(1)
				if n > walIngests {
					return
				}
				res, err := s.Ingest(context.Background(), delivery(alertIn(fmt.Sprintf("wal-%d", n), quick(dev(machine(int(n)), "")))))
				if err != nil {
					t.Error(err)
					return
				}
				if n == 1 || n == walIngests {
					mu.Lock()
					receipts = append(receipts, res.Receipt)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	if fi, err := os.Stat(walPath); err == nil && fi.Size() > peak.Load() {
		peak.Store(fi.Size())
	}
	return peak.Load(), receipts
}

// TestSQLiteWALStaysBounded: with auto-checkpointing off on the writer, the
// background checkpointer keeps the WAL small during a sustained ingest,
// copies it all back once the writer is idle (so the next write restarts
// it in place), empties it on Close, and loses nothing.
func TestSQLiteWALStaysBounded(t *testing.T) {
	dsn := filepath.Join(t.TempDir(), "wal.db")
	walPath := dsn + "-wal"
	s, err := open(context.Background(), "sqlite", dsn, Deps{}, sqliteTuning{ckpt: testCheckpointConfig(), cache: defaultCacheConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	peak, receipts := ingestWatchingWAL(t, s, walPath)
	t.Logf("%d ingests: largest -wal file %d KiB", walIngests, peak>>10)
	if peak > walBound {
		t.Errorf("-wal file reached %d bytes during the run, want at most %d", peak, walBound)
	}

	// Idle: a checkpoint copies every frame back, while reads go on; the
	// file keeps its size.
	idled := s.ckpt.idled.Load()
	testutil.WaitFor(t, "an idle checkpoint to copy the WAL back", func() bool {
		if _, err := s.Receipt(context.Background(), receipts[0]); err != nil {
			t.Fatalf("Receipt while idle: %v", err)
		}
		return s.ckpt.idled.Load() != idled
	})
	idleSize := fileSize(t, walPath)
	if idleSize == 0 {
		t.Fatal("the idle checkpoint truncated the WAL; the next burst would grow it again")
	}

	// Everything is in the database file: the next write starts the log
	// over in place instead of appending to it, and Close truncates it.
	// Restarting may also cut a file larger than journal_size_limit back
	// to that limit, so the size may drop; it must not grow.
	mustIngest(t, s, delivery(alertIn("after-idle", quick(dev(machine(walIngests+1), "")))))
	if n := fileSize(t, walPath); n > idleSize {
		t.Errorf("-wal file grew from %d to %d bytes with one ingest after idle; want the log restarted in place", idleSize, n)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := fileSize(t, walPath); n != 0 {
		t.Errorf("-wal file is %d bytes after Close, want 0", n)
	}

	s2, err := open(context.Background(), "sqlite", dsn, Deps{}, sqliteTuning{ckpt: testCheckpointConfig(), cache: defaultCacheConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, r := range receipts {
		if _, err := s2.Receipt(context.Background(), r); err != nil {
			t.Errorf("Receipt(%s) after reopen: %v", r, err)
		}
	}
	st, err := s2.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := st.JobsByState[domain.JobQueued]; got != walIngests+1 {
		t.Errorf("queued jobs after reopen = %d, want %d", got, walIngests+1)
	}
}

// TestSQLiteWALGrowsWithoutCheckpointer is the control for the test above:
// the same load with auto-checkpointing off and no checkpointer pushes the
// WAL past walBound, so the bound there is the checkpointer's doing.
func TestSQLiteWALGrowsWithoutCheckpointer(t *testing.T) {
	dsn := filepath.Join(t.TempDir(), "wal.db")
	cfg := testCheckpointConfig()
	cfg.off = true
	s, err := open(context.Background(), "sqlite", dsn, Deps{}, sqliteTuning{ckpt: cfg, cache: defaultCacheConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	peak, _ := ingestWatchingWAL(t, s, dsn+"-wal")
	t.Logf("%d ingests without checkpoints: -wal file %d KiB", walIngests, peak>>10)
	if peak <= walBound {
		t.Errorf("-wal file reached only %d bytes without checkpoints, want more than %d (the bound is not testing anything)", peak, walBound)
	}
}
