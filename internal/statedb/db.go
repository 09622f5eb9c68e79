// Package statedb keeps the modules' host-kept state (module.KV) in one
// bbolt file, one bucket per module, written by group commit: the changes
// of many writers go to disk in one transaction, at most a window after
// they were made, or before a synchronous writer's call returns.
//
// bbolt holds an exclusive lock on the file while it is open, so one
// process at a time owns the state; Open fails with ErrLocked for the
// others. Package host decides when a process opens the file and how a new
// process of a binary upgrade takes it over; see docs/state.md.
//
// The file layout, version 1:
//
//	meta/format          = "hotswap-state 1"
//	modules/<module>/k<key> = value
//
// Every key carries a one-byte prefix, so that the empty key can be stored
// (bbolt refuses empty keys) and other kinds of entries can be added later.
package statedb

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// Limits of what is stored. A change beyond them stays in memory only: it
// is logged, counted (Stats.Skipped) and its key removed from the file, so
// a restart does not bring back an older value. A file holding more is
// refused as corrupt.
const (
	// MaxKeySize is the longest key stored, in bytes (bbolt's limit less
	// the prefix).
	MaxKeySize = bbolt.MaxKeySize - 1
	// MaxValueSize is the largest value stored, in bytes.
	MaxValueSize = 64 << 20
)

// Errors Open and Load return, matched with errors.Is.
var (
	// ErrLocked: another process (or another Host in this one) has the
	// file open.
	ErrLocked = errors.New("in use by another process")
	// ErrCorrupt: the file is not a state file this version can read.
	ErrCorrupt = errors.New("corrupt or not a hotswap state file")
)

// FileError is an error about the state file at Path. It matches
// ErrLocked or ErrCorrupt where one applies.
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string { return fmt.Sprintf("state file %s: %v", e.Path, e.Err) }
func (e *FileError) Unwrap() error { return e.Err }

const formatV1 = "hotswap-state 1"

var (
	bucketMeta    = []byte("meta")
	bucketModules = []byte("modules")
	keyFormat     = []byte("format")
)

const keyPrefix = 'k'

// Options configures a DB. The zero value of each field means its default.
type Options struct {
	// Window is how long a change may wait for the commit that writes it
	// to start, so that the changes made meanwhile share the commit.
	// Defaults to 0: a commit starts as soon as the previous one ended.
	Window time.Duration
	// Sync makes each writer wait (KVSink.Wait) until the commit holding
	// its change ended. Defaults to false: writers never wait.
	Sync bool
	// LockTimeout is how long Open waits for another process to release
	// the file. Defaults to 0: one attempt, then ErrLocked.
	LockTimeout time.Duration
	// Logger receives commit failures and skipped changes. Defaults to
	// discarding.
	Logger *slog.Logger
}

// DB is an open state file. It is safe for concurrent use.
type DB struct {
	path   string
	bolt   *bbolt.DB
	window time.Duration
	sync   bool
	log    *slog.Logger

	mu         sync.Mutex // protects the fields below and every sink's pending changes
	cond       *sync.Cond // on mu; broadcast when attempted changes
	sinks      map[string]*sink
	dirty      bool      // some sink has pending changes
	dirtySince time.Time // when dirty became true
	next       uint64    // the commit the changes made now go into
	attempted  uint64    // the last commit tried, successfully or not
	closed     bool
	stats      Stats

	kick chan struct{} // capacity 1: there is something to commit
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the committer exits
}

// Stats counts what a DB did since Open.
type Stats struct {
	Changes   uint64 // changes handed to the DB's sinks
	Commits   uint64 // transactions written and synced
	Failures  uint64 // commits that failed (their changes are retried)
	Skipped   uint64 // changes beyond MaxKeySize or MaxValueSize, not stored
	LastError string // the last commit failure, "" once a commit succeeds
}

// Open opens (creating it, mode 0600) the state file at path and starts
// its committer. A file that is not a state file, or is corrupt, is refused
// with an error matching ErrCorrupt and left as it is.
func Open(path string, opts Options) (*DB, error) {
	return open(path, opts, bbolt.Options{})
}

// open is Open with bbolt options to start from (tests set MaxSize).
func open(path string, opts Options, bo bbolt.Options) (db *DB, err error) {
	if opts.Window < 0 {
		return nil, fmt.Errorf("statedb: negative Window %v", opts.Window)
	}
	if err := checkFile(path); err != nil {
		return nil, err
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = time.Nanosecond // bbolt: one attempt; 0 would wait forever
	}
	defer guard(path, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	bo.Timeout, bo.FreelistType, bo.NoStatistics = timeout, bbolt.FreelistMapType, true
	b, err := bbolt.Open(path, 0o600, &bo)
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, &FileError{path, ErrLocked}
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, &FileError{path, fmt.Errorf("%w: %v", ErrCorrupt, err)}
	case err != nil:
		return nil, &FileError{path, err}
	}
	if err := initFormat(b); err != nil {
		b.Close()
		return nil, &FileError{path, err}
	}
	db = &DB{path: path, bolt: b, window: opts.Window, sync: opts.Sync, log: opts.Logger,
		sinks: make(map[string]*sink), next: 1,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if db.log == nil {
		db.log = slog.New(slog.DiscardHandler)
	}
	db.cond = sync.NewCond(&db.mu)
	go db.run()
	return db, nil
}

// checkFile refuses a state file that is not a regular file (a symlink
// could point anywhere) or that others may write.
func checkFile(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &FileError{path, err}
	}
	if !fi.Mode().IsRegular() {
		return &FileError{path, fmt.Errorf("%w: not a regular file (%v)", ErrCorrupt, fi.Mode().Type())}
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return &FileError{path, fmt.Errorf("writable by group or others (mode %v); chmod 600 it", fi.Mode().Perm())}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return &FileError{path, fmt.Errorf("owned by uid %d, not by this process's uid %d", st.Uid, os.Geteuid())}
	}
	return nil
}

// guard turns a panic or memory fault inside bbolt, which a corrupt file
// can cause, into an error matching ErrCorrupt.
func guard(path string, err *error) {
	if r := recover(); r != nil {
		*err = &FileError{path, fmt.Errorf("%w: %v", ErrCorrupt, r)}
	}
}

// initFormat marks a new (empty) file with the format, and refuses a file
// marked with another one or holding anything else. It writes nothing to a
// file that has the format, so a file refused later stays as it was.
func initFormat(b *bbolt.DB) error {
	var empty bool
	err := b.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty = tx.ForEach(func([]byte, *bbolt.Bucket) error { return ErrCorrupt }) == nil
			if !empty {
				return fmt.Errorf("%w: no format marker", ErrCorrupt)
			}
			return nil
		}
		if f := meta.Get(keyFormat); string(f) != formatV1 {
			return fmt.Errorf("%w: format %.40q, want %q", ErrCorrupt, f, formatV1)
		}
		if mods := tx.Bucket(bucketModules); mods == nil {
			return fmt.Errorf("%w: no modules bucket", ErrCorrupt)
		}
		return nil
	})
	if err != nil || !empty {
		return err
	}
	return b.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(keyFormat, []byte(formatV1)); err != nil {
			return err
		}
		_, err = tx.CreateBucket(bucketModules)
		return err
	})
}

// Path returns the file's path.
func (db *DB) Path() string { return db.path }

// Load returns every module's stored state. A file that breaks the format
// or the limits is refused with an error matching ErrCorrupt.
func (db *DB) Load() (all map[string]map[string][]byte, err error) {
	defer guard(db.path, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	all = make(map[string]map[string][]byte)
	err = db.bolt.View(func(tx *bbolt.Tx) error {
		mods := tx.Bucket(bucketModules)
		return mods.ForEach(func(name, v []byte) error {
			b := mods.Bucket(name)
			if b == nil {
				return fmt.Errorf("%w: modules/%.64q is not a bucket", ErrCorrupt, name)
			}
			kv := make(map[string][]byte)
			err := b.ForEach(func(k, v []byte) error {
				switch {
				case v == nil:
					return fmt.Errorf("%w: modules/%s/%.64q is a bucket", ErrCorrupt, name, k)
				case len(k) == 0 || k[0] != keyPrefix:
					return fmt.Errorf("%w: modules/%s: key %.64q lacks the prefix", ErrCorrupt, name, k)
				case len(v) > MaxValueSize:
					return fmt.Errorf("%w: modules/%s: value of %.64q is %d bytes, over %d", ErrCorrupt, name, k[1:], len(v), MaxValueSize)
				}
				kv[string(k[1:])] = append([]byte{}, v...)
				return nil
			})
			all[string(name)] = kv
			return err
		})
	})
	if err != nil {
		return nil, &FileError{db.path, err}
	}
	return all, nil
}

// Replace makes all the file's whole contents, in one synced transaction:
// modules not in all are removed. Changes pending in the DB's sinks are
// committed afterwards, on top.
func (db *DB) Replace(all map[string]map[string][]byte) error {
	var skipped int
	err := db.bolt.Update(func(tx *bbolt.Tx) error {
		if err := tx.DeleteBucket(bucketModules); err != nil {
			return err
		}
		mods, err := tx.CreateBucket(bucketModules)
		if err != nil {
			return err
		}
		for name, kv := range all {
			s, err := writeModule(mods, name, false, kv)
			if err != nil {
				return err
			}
			skipped += s
		}
		return nil
	})
	if err != nil {
		return &FileError{db.path, fmt.Errorf("replace contents: %w", err)}
	}
	db.skipped(skipped)
	return nil
}

// writeModule writes one module's changes (nil value: delete) into mods,
// dropping its bucket first if reset. It returns how many changes it
// skipped for breaking the limits, which it logs nowhere: the caller does.
func writeModule(mods *bbolt.Bucket, name string, reset bool, changes map[string][]byte) (skipped int, err error) {
	if name == "" {
		return len(changes), nil // bbolt has no empty bucket name; no artifact names a module ""
	}
	if reset {
		if err := mods.DeleteBucket([]byte(name)); err != nil && !errors.Is(err, berrors.ErrBucketNotFound) {
			return 0, err
		}
	}
	b, err := mods.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return 0, fmt.Errorf("module %s: %w", name, err)
	}
	for k, v := range changes {
		if len(k) > MaxKeySize {
			skipped++
			continue // never stored, so nothing to delete
		}
		key := append([]byte{keyPrefix}, k...) // bbolt keeps it until the commit
		if len(v) > MaxValueSize {
			skipped++
			v = nil
		}
		if v == nil {
			err = b.Delete(key)
		} else {
			err = b.Put(key, v)
		}
		if err != nil {
			return 0, fmt.Errorf("module %s: key %.64q: %w", name, k, err)
		}
	}
	return skipped, nil
}

func (db *DB) skipped(n int) {
	if n == 0 {
		return
	}
	db.mu.Lock()
	db.stats.Skipped += uint64(n)
	db.mu.Unlock()
	db.log.Error("state changes kept in memory only: a module name is empty, a key is over the size limit or a value is",
		logkey.Path, db.path, "changes", n, "max_key_bytes", MaxKeySize, "max_value_bytes", MaxValueSize)
}

// Stats returns what the DB did since Open.
func (db *DB) Stats() Stats {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.stats
}

// Close commits the pending changes, stops the committer and closes the
// file, releasing its lock. Changes made after Close began are not
// stored. It returns the error of the last commit, if it failed, and is
// idempotent.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		<-db.done
		return nil
	}
	db.closed = true
	db.mu.Unlock()
	close(db.stop)
	<-db.done
	err := db.bolt.Close()
	db.mu.Lock()
	if db.stats.LastError != "" {
		err = errors.Join(fmt.Errorf("last commit: %s", db.stats.LastError), err)
	}
	db.mu.Unlock()
	if err != nil {
		return &FileError{db.path, fmt.Errorf("close: %w", err)}
	}
	return nil
}
