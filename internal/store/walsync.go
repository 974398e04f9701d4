package store

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
)

// walSyncer makes the writer's group commits durable off the writer's path.
//
// Why: with synchronous=FULL SQLite fsyncs the WAL inside every COMMIT, and
// the single writer can do nothing else meanwhile. Under load that fsync
// was a quarter of the writer's wall time (1.2 ms a commit on ext4 while
// the checkpointer writes too), time in which no statement of the next
// batch ran. The writer's connection therefore commits with
// synchronous=NORMAL, which writes the commit's frames into the WAL without
// waiting for the disk, and hands the batch to this syncer; the writer
// starts on the next batch while the syncer fsyncs the WAL and only then
// answers the batch's callers. One fsync covers every batch committed
// before it began, so a slow disk makes batches larger rather than longer.
//
// What is acknowledged is as durable as before: a caller hears "committed"
// only after an fsync of the WAL that began after its COMMIT returned,
// i.e. after SQLite had written every frame of it (SQLite buffers nothing
// of a WAL commit in memory). synchronous=NORMAL keeps the database
// consistent across a power cut by itself (SQLite still syncs the WAL
// header when it restarts the log, and syncs before and after each
// checkpoint); what it gives up, the commits since the last sync, are
// exactly the ones nobody has been told about yet.
//
// An fsync that fails leaves the state of the file's pages unknown (the
// kernel may have dropped them and will not report it twice), so the
// syncer fails for good: the waiting callers get the error, and every later
// write is refused until the process restarts and SQLite recovers from the
// WAL on disk.
type walSyncer struct {
	path string
	log  *slog.Logger
	// fsync makes the WAL durable; tests replace it.
	fsync func() error

	mu      sync.Mutex
	pending []*writeReq
	closed  bool
	wake    chan struct{} // buffered 1: there is something pending
	exited  chan struct{}

	f      *os.File
	fi     os.FileInfo
	failed atomic.Pointer[error]
	syncs  atomic.Uint64
}

func newWALSyncer(path string, log *slog.Logger) *walSyncer {
	s := &walSyncer{path: path, log: log, wake: make(chan struct{}, 1), exited: make(chan struct{})}
	s.fsync = s.syncFile
	go s.loop()
	return s
}

// err is the failure that stopped the syncer, nil while it works.
func (s *walSyncer) err() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// add hands over a committed batch; its callers are answered after the
// next fsync.
func (s *walSyncer) add(batch []*writeReq) {
	s.mu.Lock()
	s.pending = append(s.pending, batch...)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// close syncs and answers what is pending, then stops. The writer calls it
// once it has committed its last batch.
func (s *walSyncer) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.exited
	if s.f != nil {
		s.f.Close()
	}
}

func (s *walSyncer) loop() {
	defer close(s.exited)
	for range s.wake {
		s.mu.Lock()
		batch, closed := s.pending, s.closed
		s.pending = nil
		s.mu.Unlock()
		if len(batch) > 0 {
			err := s.err()
			if err == nil {
				if err = s.fsync(); err != nil {
					err = fmt.Errorf("fsync sqlite wal: %w", err)
					s.failed.CompareAndSwap(nil, &err)
					s.log.Error("store: the WAL could not be made durable; refusing writes until restarted", "err", err)
				} else {
					s.syncs.Add(1)
				}
			}
			for _, r := range batch {
				r.done <- err
			}
		}
		if closed {
			return
		}
	}
}

// syncFile fsyncs the -wal file. Any descriptor of the file will do: fsync
// flushes the file, not what was written through one descriptor. The file
// is opened on first use (it exists once SQLite has committed in WAL mode)
// and again if it was replaced, which SQLite does only after every
// connection has closed it.
func (s *walSyncer) syncFile() error {
	cur, err := os.Stat(s.path)
	if err != nil {
		return err
	}
	if s.f == nil || !os.SameFile(s.fi, cur) {
		if s.f != nil {
			s.f.Close()
			s.f = nil
		}
		f, err := os.Open(s.path)
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		s.f, s.fi = f, fi
	}
	return s.f.Sync()
}
