package statedb

import (
	"math"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// Backoff between attempts while commits fail (disk full, I/O errors).
const (
	minRetry = 50 * time.Millisecond
	maxRetry = time.Second
)

// sink is the KVSink of one module's KV.
type sink struct {
	db   *DB
	name string
	// Protected by db.mu.
	pending map[string][]byte // key → value after its last change; nil: deleted
	reset   bool              // drop the module's stored keys before writing pending
}

// Sink returns the KVSink that stores the changes of module name's KV in
// the file. Changes are coalesced per key until their commit, so memory
// is bounded by the keys changed within one commit, not by the changes.
func (db *DB) Sink(name string) module.KVSink {
	db.mu.Lock()
	defer db.mu.Unlock()
	s := db.sinks[name]
	if s == nil {
		s = &sink{db: db, name: name}
		db.sinks[name] = s
	}
	return s
}

// Changed records c for the next commit. After Close it drops c.
func (s *sink) Changed(c module.KVChange) uint64 {
	db := s.db
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return 0
	}
	db.stats.Changes++
	switch c.Op {
	case module.KVReset:
		s.reset = true
		clear(s.pending)
	case module.KVDelete:
		s.put(c.Key, nil)
	default:
		v := c.Value
		if v == nil {
			v = []byte{} // nil means deleted here
		}
		s.put(c.Key, v)
	}
	ticket := db.next
	kick := !db.dirty
	if kick {
		db.dirty, db.dirtySince = true, time.Now()
	}
	db.mu.Unlock()
	if kick {
		select {
		case db.kick <- struct{}{}:
		default:
		}
	}
	if !db.sync {
		return 0
	}
	return ticket
}

func (s *sink) put(key string, value []byte) {
	if s.pending == nil {
		s.pending = make(map[string][]byte)
	}
	s.pending[key] = value
}

// Wait blocks until the commit of ticket was attempted.
func (s *sink) Wait(ticket uint64) {
	db := s.db
	db.mu.Lock()
	for db.attempted < ticket {
		db.cond.Wait()
	}
	db.mu.Unlock()
}

// run is the committer: one goroutine, so commits never overlap and
// everything changed while one runs goes into the next.
func (db *DB) run() {
	defer close(db.done)
	debug.SetPanicOnFault(true) // a fault reading the mapped file: see write
	last := func() {
		db.commit()
		db.mu.Lock()
		db.attempted = math.MaxUint64 // nothing more will be committed
		db.cond.Broadcast()
		db.mu.Unlock()
	}
	var retry time.Duration
	for {
		select {
		case <-db.kick:
		case <-db.stop:
			last()
			return
		}
		db.mu.Lock()
		wait := time.Until(db.dirtySince.Add(db.window))
		db.mu.Unlock()
		wait = max(wait, retry)
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-db.stop:
				t.Stop()
				last()
				return
			}
		}
		if db.commit() {
			retry = 0
			continue
		}
		retry = min(max(2*retry, minRetry), maxRetry)
		select {
		case db.kick <- struct{}{}:
		default:
		}
	}
}

// batch is one module's changes taken for a commit.
type batch struct {
	s       *sink
	changes map[string][]byte
	reset   bool
}

// commit writes every pending change in one transaction and wakes the
// writers waiting for it. A failed commit's changes go back under the
// newer ones, to be retried; it reports false.
func (db *DB) commit() bool {
	db.mu.Lock()
	seq := db.next
	db.next++
	var work []batch
	for _, s := range db.sinks {
		if s.pending != nil || s.reset {
			work = append(work, batch{s, s.pending, s.reset})
			s.pending, s.reset = nil, false
		}
	}
	db.dirty = false
	db.mu.Unlock()

	var err error
	skipped := 0
	if len(work) > 0 {
		skipped, err = db.write(work)
	}

	db.mu.Lock()
	db.attempted = seq
	if err != nil {
		db.stats.Failures++
		db.stats.LastError = err.Error()
		for _, b := range work {
			b.s.putBack(b)
		}
		if !db.dirty {
			db.dirty, db.dirtySince = true, time.Now()
		}
	} else if len(work) > 0 {
		db.stats.Commits++
		db.stats.LastError = ""
	}
	db.cond.Broadcast()
	db.mu.Unlock()

	if err != nil {
		db.log.Error("commit module state; retrying, the changes stay in memory meanwhile", logkey.Path, db.path, logkey.Err, err)
		return false
	}
	db.skipped(skipped)
	return true
}

// write writes work in one transaction. A panic inside bbolt (a damaged
// page; bbolt rolls the transaction back) is returned as an error matching
// ErrCorrupt rather than taking the service down.
func (db *DB) write(work []batch) (skipped int, err error) {
	defer guard(db.path, &err)
	err = db.bolt.Update(func(tx *bbolt.Tx) error {
		mods := tx.Bucket(bucketModules)
		for _, b := range work {
			n, err := writeModule(mods, b.s.name, b.reset, b.changes)
			if err != nil {
				return err
			}
			skipped += n
		}
		return nil
	})
	return skipped, err
}

// putBack returns a failed batch to s, under the changes made since it was
// taken. Called with db.mu held.
func (s *sink) putBack(b batch) {
	if s.reset {
		return // a newer Restore supersedes everything older
	}
	s.reset = b.reset
	for k, v := range b.changes {
		if _, newer := s.pending[k]; !newer {
			s.put(k, v)
		}
	}
}
