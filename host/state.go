package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/internal/statedb"
	"github.com/hotswapgo/hotswap/module"
)

// StateFileName is the file in the state directory that keeps the modules'
// host-kept state (module.KV). See docs/state.md.
const StateFileName = "state.db"

// Durability says when a change to a module's host-kept state (module.KV)
// is on disk, in StateDir/state.db. Every mode serves reads and writes
// from memory and hands the state to the new process of a binary upgrade.
type Durability int

const (
	// DurabilityWindow: a write returns at once; the commit that writes it
	// starts at most Options.CommitWindow after it (or when the commit in
	// progress ends, if later), so a crash loses at most the writes of the
	// last window plus one commit.
	DurabilityWindow Durability = iota
	// DurabilitySync: a write returns once the commit holding it is on
	// disk (synced); writers waiting at the same time share one commit. A
	// crash loses no acknowledged write while the disk works.
	DurabilitySync
	// DurabilityMemory: no file; a restart or a crash loses the state.
	DurabilityMemory
)

func (d Durability) String() string {
	switch d {
	case DurabilityWindow:
		return "window"
	case DurabilitySync:
		return "sync"
	case DurabilityMemory:
		return "memory"
	}
	return fmt.Sprintf("Durability(%d)", int(d))
}

// DefaultCommitWindow is how long, at most, a change waits for the commit
// that writes it under DurabilityWindow.
const DefaultCommitWindow = 20 * time.Millisecond

// Errors about the state file, matched with errors.Is.
var (
	// ErrStateLocked: another process, or another Host, uses the state
	// directory's state file.
	ErrStateLocked = statedb.ErrLocked
	// ErrStateCorrupt: the state file is corrupt or not a state file. It
	// is never replaced: move it away to start with empty state.
	ErrStateCorrupt = statedb.ErrCorrupt
)

// How a process started by an upgrade takes the state file over.
const (
	// startLockWait is how long a process started fresh waits for the
	// state file's lock, for a predecessor that is still closing it.
	startLockWait = time.Second
	// takeoverPoll is how often a new process tries to take the file over
	// while its parent keeps it.
	takeoverPoll = 20 * time.Millisecond
	// takeoverWarn is how often the waiting new process says so.
	takeoverWarn = time.Minute
	// handoverWait bounds how long an upgrade waits for this process to
	// take the file over before it hands the state on.
	handoverWait = 10 * time.Second
)

// StateStatus describes where the modules' host-kept state is kept.
type StateStatus struct {
	Durability Durability
	// CommitWindow applies to DurabilityWindow.
	CommitWindow time.Duration
	// Path is the state file, "" under DurabilityMemory.
	Path string
	// TakingOver is set in a process started by an upgrade while its
	// parent still keeps the state file: the writes of this process are
	// in memory only until it took the file over.
	TakingOver bool
	// Counters since the file was opened (or taken over).
	Changes, Commits, Failures, Skipped uint64
	// LastError is the last failed commit's error, "" once one succeeds
	// or when the takeover failed: then it says why.
	LastError string
}

// kvState keeps the modules' KVs and their state file: it opens the file
// and restores every module from it at start, attaches the file's sinks
// to each KV, and in a process started by an upgrade takes the file over
// once the parent closed it.
type kvState struct {
	path       string
	durability Durability
	window     time.Duration
	log        *slog.Logger
	// Set before open, read-only afterwards.
	reg             *module.Registry
	parentKeepsFile bool // the handed-over state says the parent keeps the file

	mu         sync.Mutex // protects kvs, db, journaling, takeErr, closed
	kvs        map[string]*module.KV
	db         *statedb.DB // the open file; nil before, under DurabilityMemory, while taking over and after close
	journaling bool        // taking over: new KVs journal their changes
	takeErr    error       // why taking the file over failed
	closed     bool

	taken  chan struct{}      // closed once no takeover is pending
	cancel context.CancelFunc // stops the takeover
	wg     sync.WaitGroup     // the takeover goroutine
}

func newKVState(opts Options, log *slog.Logger) (*kvState, error) {
	if opts.Durability < DurabilityWindow || opts.Durability > DurabilityMemory {
		return nil, fmt.Errorf("host: unknown Durability %d", int(opts.Durability))
	}
	if opts.CommitWindow < 0 {
		return nil, fmt.Errorf("host: negative CommitWindow %v", opts.CommitWindow)
	}
	s := &kvState{
		path:       filepath.Join(opts.StateDir, StateFileName),
		durability: opts.Durability,
		window:     cmpOr(opts.CommitWindow, DefaultCommitWindow),
		log:        log,
		kvs:        make(map[string]*module.KV),
		taken:      make(chan struct{}),
		cancel:     func() {},
	}
	if s.durability != DurabilityWindow {
		s.window = 0
	}
	return s, nil
}

// newKV makes the KV of a module the registry creates (module.Options.State).
func (s *kvState) newKV(name string) *module.KV {
	kv := module.NewKV()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kvs[name] = kv
	switch {
	case s.db != nil:
		kv.Rebase(nil, s.db.Sink(name))
	case s.journaling:
		kv.StartJournal()
	}
	return kv
}

// open makes the state durable once the registry exists and, in a process
// started by an upgrade (child), the handed-over state was restored:
// started fresh, it loads every module's state from the file; started by
// an upgrade from a parent that keeps the file, it journals the changes
// and takes the file over in the background once the parent closed it;
// started by one whose parent kept no file, the handed-over state replaces
// the file's.
func (s *kvState) open(reg *module.Registry, child bool) error {
	s.reg = reg
	if s.durability == DurabilityMemory {
		close(s.taken)
		return nil
	}
	if child && s.parentKeepsFile {
		s.mu.Lock()
		s.journaling = true
		for _, kv := range s.kvs {
			kv.StartJournal()
		}
		s.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel = cancel
		s.wg.Add(1)
		go s.takeOver(ctx)
		return nil
	}
	defer close(s.taken)
	db, err := s.openFile(startLockWait)
	if err != nil {
		if errors.Is(err, statedb.ErrLocked) {
			err = fmt.Errorf("%w (is another host serving from %s?)", err, filepath.Dir(s.path))
		}
		return fmt.Errorf("host: open module state: %w", err)
	}
	var base map[string]map[string][]byte
	if child {
		base = s.snapshots()
		err = db.Replace(base)
	} else {
		base, err = db.Load()
	}
	if err != nil {
		db.Close()
		return fmt.Errorf("host: open module state: %w", err)
	}
	s.attach(db, base)
	return nil
}

func (s *kvState) openFile(lockWait time.Duration) (*statedb.DB, error) {
	return statedb.Open(s.path, statedb.Options{Window: s.window, Sync: s.durability == DurabilitySync,
		LockTimeout: lockWait, Logger: s.log})
}

// snapshots returns a copy of every module's state.
func (s *kvState) snapshots() map[string]map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make(map[string]map[string][]byte, len(s.kvs))
	for name, kv := range s.kvs {
		all[name] = kv.Snapshot()
	}
	return all
}

// attach makes base (the file's contents) every module's state, with the
// changes journaled meanwhile replayed on top, and from now on writes
// every change to db.
func (s *kvState) attach(db *statedb.DB, base map[string]map[string][]byte) {
	for name := range base {
		s.reg.Module(name) // creates the KV, through newKV
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, kv := range s.kvs {
		kv.Rebase(base[name], db.Sink(name))
	}
	s.db, s.journaling = db, false
}

// takeOver waits until the parent released the state file, then loads it
// and replays this process's journaled changes on top. It runs until it
// took the file over, failed, or ctx ended (Close).
func (s *kvState) takeOver(ctx context.Context) {
	defer s.wg.Done()
	defer close(s.taken)
	start := time.Now()
	tick := time.NewTicker(takeoverPoll)
	defer tick.Stop()
	warn := start.Add(takeoverWarn)
	for {
		db, err := s.openFile(0)
		if err == nil {
			var base map[string]map[string][]byte
			if base, err = db.Load(); err == nil {
				s.attach(db, base)
				s.log.Info("took the module state file over from the previous process", logkey.Path, s.path, "waited", time.Since(start))
				return
			}
			db.Close()
		}
		if !errors.Is(err, statedb.ErrLocked) {
			s.mu.Lock()
			s.takeErr = err
			s.mu.Unlock()
			s.log.Error("cannot take the module state file over: module state stays in memory only", logkey.Path, s.path, logkey.Err, err)
			return
		}
		if now := time.Now(); now.After(warn) {
			s.log.Warn("still waiting for the previous process to release the module state file; writes since this process started are in memory only",
				logkey.Path, s.path, "waited", now.Sub(start).Round(time.Second))
			warn = now.Add(takeoverWarn)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// handover waits (bounded by ctx and handoverWait) until this process
// keeps the state file, if it is to, so that an upgrade hands the state
// on from a settled place. It reports whether this process keeps the file.
func (s *kvState) handover(ctx context.Context) (keepsFile bool, err error) {
	t := time.NewTimer(handoverWait)
	defer t.Stop()
	select {
	case <-s.taken:
	case <-ctx.Done():
		return false, fmt.Errorf("module state: %w", ctx.Err())
	case <-t.C:
		return false, fmt.Errorf("module state: this process has not taken %s over from its parent yet (waited %v); retry once the parent exited",
			s.path, handoverWait)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db != nil, nil
}

// close stops the takeover, commits what is pending and closes the file.
// Changes made afterwards are kept in memory only.
func (s *kvState) close() error {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	db := s.db
	s.db, s.closed = nil, true
	s.mu.Unlock()
	if db == nil {
		return nil
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("close module state: %w", err)
	}
	return nil
}

func (s *kvState) status() StateStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := StateStatus{Durability: s.durability, CommitWindow: s.window, TakingOver: s.journaling && s.takeErr == nil && !s.closed}
	if s.durability != DurabilityMemory {
		st.Path = s.path
	}
	if s.db != nil {
		ds := s.db.Stats()
		st.Changes, st.Commits, st.Failures, st.Skipped, st.LastError = ds.Changes, ds.Commits, ds.Failures, ds.Skipped, ds.LastError
	}
	if s.takeErr != nil {
		st.LastError = s.takeErr.Error()
	}
	return st
}

// StateStatus describes where the modules' host-kept state is kept and
// how its commits went.
func (h *Host) StateStatus() StateStatus { return h.state.status() }
