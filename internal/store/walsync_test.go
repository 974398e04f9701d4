package store

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// TestWALSyncBeforeAck: the group commit is visible to readers as soon as
// it has committed, but its callers hear of it only once the WAL has been
// fsynced, however long that takes.
func TestWALSyncBeforeAck(t *testing.T) {
	s := sqliteBackend(t).open(t).(*sqlStore)
	entered, release := make(chan struct{}), make(chan struct{})
	real := s.writer.sync.fsync
	s.writer.sync.fsync = func() error {
		entered <- struct{}{}
		<-release
		return real()
	}
	type result struct {
		res IngestResult
		err error
	}
	done := make(chan result, 1)
	d := delivery(alertIn("sync-1", quick(dev(machine(1), ""))))
	go func() {
		res, err := s.Ingest(context.Background(), d)
		done <- result{res, err}
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the WAL was never synced")
	}
	// Committed (readers see it) but not acknowledged.
	receipt := ReceiptID(d.Source, []string{"sync-1"})
	if det, err := s.Receipt(context.Background(), receipt); err != nil || len(det.Jobs) != 1 {
		t.Fatalf("receipt while the fsync runs: %+v, %v; want the committed delivery", det, err)
	}
	select {
	case r := <-done:
		t.Fatalf("Ingest returned %+v, %v before the WAL was on disk", r.res, r.err)
	default:
	}
	close(release)
	r := <-done
	if r.err != nil || r.res.Receipt != receipt {
		t.Fatalf("Ingest after the fsync = %+v, %v", r.res, r.err)
	}
	if n := s.writer.sync.syncs.Load(); n < 1 {
		t.Errorf("syncs = %d", n)
	}
}

// TestWALSyncFailureStopsWrites: after a failed fsync nothing more is
// acknowledged as written, and readiness says so.
func TestWALSyncFailureStopsWrites(t *testing.T) {
	s := sqliteBackend(t).open(t).(*sqlStore)
	ctx := context.Background()
	mustIngest(t, s, delivery(alertIn("before", quick(dev(machine(1), "")))))
	eio := errors.New("input/output error")
	s.writer.sync.fsync = func() error { return eio }
	if _, err := s.Ingest(ctx, delivery(alertIn("during", quick(dev(machine(2), ""))))); !errors.Is(err, eio) {
		t.Fatalf("Ingest when the fsync fails = %v, want it to wrap %v", err, eio)
	}
	s.writer.sync.fsync = func() error { return nil }
	_, err := s.Ingest(ctx, delivery(alertIn("after", quick(dev(machine(3), "")))))
	if !errors.Is(err, eio) || !strings.Contains(err.Error(), "fsync") {
		t.Fatalf("Ingest after a failed fsync = %v, want a refusal naming the fsync", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, eio) {
		t.Errorf("Ping after a failed fsync = %v, want the failure", err)
	}
	// Reads still work: what was acknowledged can still be looked up.
	if _, err := s.Receipt(ctx, ReceiptID("sentinel", []string{"before"})); err != nil {
		t.Errorf("Receipt after a failed fsync: %v", err)
	}
}

// TestWALSyncFileFollowsTheWAL: the real fsync finds the -wal file, also
// after a TRUNCATE checkpoint emptied it.
func TestWALSyncFileFollowsTheWAL(t *testing.T) {
	b := sqliteBackend(t)
	s := b.open(t).(*sqlStore)
	mustIngest(t, s, delivery(alertIn("w1", quick(dev(machine(1), "")))))
	if _, err := s.ckpt.checkpoint(context.Background(), "TRUNCATE"); err != nil {
		t.Fatal(err)
	}
	mustIngest(t, s, delivery(alertIn("w2", quick(dev(machine(2), "")))))
	if n := s.writer.sync.syncs.Load(); n < 2 {
		t.Errorf("syncs = %d, want one per commit here", n)
	}
	if _, err := os.Stat(b.dsn + "-wal"); err != nil {
		t.Errorf("the -wal file: %v", err)
	}
}
