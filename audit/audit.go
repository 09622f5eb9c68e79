package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Defaults for Options.
const (
	DefaultMaxSize = 16 << 20 // bytes in the live file before it is rotated
	DefaultKeep    = 5        // rotated files kept
)

// maxErrorLen bounds Event.Error as written, so one record stays small.
const maxErrorLen = 4 << 10

// Sentinel errors.
var (
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("audit log closed")
	// ErrInvalidEvent: an event lacks its action, target or result.
	ErrInvalidEvent = errors.New("invalid audit event")
	// ErrCorrupt: a line of a log file is not a JSON event (typically the
	// last line of a file cut short by a crash).
	ErrCorrupt = errors.New("corrupt audit log line")
)

// Action is what was done. The constants cover hotswap's own actions; other
// values may be recorded too.
type Action string

// Actions.
const (
	ActionLoad     Action = "load"     // a module version was loaded (prepared, not yet serving)
	ActionSwap     Action = "swap"     // a module version became the serving one
	ActionRollback Action = "rollback" // the previous or last-known-good version became the serving one
	ActionUnload   Action = "unload"   // a module was removed
	ActionUpgrade  Action = "upgrade"  // the process was replaced by a new binary
	ActionVerify   Action = "verify"   // an artifact was verified (or refused) on its own
)

// Result is how an action ended.
type Result string

// Results.
const (
	// ResultOK: the action is allowed and being applied. Record it before
	// the change takes effect; if applying it then fails, record a second
	// event with ResultFailed.
	ResultOK Result = "ok"
	// ResultRefused: a check refused the action (verification, policy,
	// validation, busy); nothing changed.
	ResultRefused Result = "refused"
	// ResultFailed: the action was attempted and failed.
	ResultFailed Result = "failed"
	// ResultStarted: the action was asked for and its work begins. It is
	// recorded before any of that work, so an action cut short by a crash
	// leaves this record and no other with its ID.
	ResultStarted Result = "started"
	// ResultCanceled: the one who asked gave up before the change took
	// effect; nothing changed.
	ResultCanceled Result = "canceled"
)

// Event is one audit record, written as one JSON object per line:
//
//	{"time":"2026-01-02T15:04:05.123456789Z","actor":"uid=1000 pid=4242","action":"swap",
//	 "target":"pricing","from":"sha256:…","to":"sha256:…","result":"ok"}
type Event struct {
	// Time is when it happened. Record sets a zero Time to the current
	// time, in UTC.
	Time time.Time `json:"time"`
	// ID ties together the records of one action: its start, and how it
	// ended.
	ID string `json:"id,omitempty"`
	// Actor is who asked, when known: PeerActor for a control-socket peer,
	// "cli", "watch", "fleet", …
	Actor string `json:"actor,omitempty"`
	// Action is what was done. Required.
	Action Action `json:"action"`
	// Target is what it was done to: a module name, "process", … Required.
	Target string `json:"target"`
	// From and To are the versions ("v2@sha256:…") replaced and put in
	// place, when they apply and are known.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Artifact is the artifact as the one who asked named it (a file name
	// or path), before it was verified.
	Artifact string `json:"artifact,omitempty"`
	// Result is how it ended. Required.
	Result Result `json:"result"`
	// Error says why it was refused or failed. Longer than 4 KiB is cut.
	Error string `json:"error,omitempty"`
	// Detail holds what the action decided on, e.g. the numbers behind a
	// canary's verdict. Longer than 4 KiB is cut.
	Detail string `json:"detail,omitempty"`
}

// PeerActor names the process on the other end of a control connection.
func PeerActor(uid, pid int) string {
	return "uid=" + strconv.Itoa(uid) + " pid=" + strconv.Itoa(pid)
}

// Options configures a Log. The zero value is ready to use.
type Options struct {
	// MaxSize is the size in bytes past which the live file is rotated
	// before the next record. Defaults to DefaultMaxSize (16 MiB).
	MaxSize int64
	// Keep is how many rotated files (path.1 newest … path.Keep oldest) are
	// kept; older ones are deleted. Defaults to DefaultKeep (5).
	Keep int
}

// logFile is what Log needs of an open file; tests wrap *os.File to watch
// its writes and syncs.
type logFile interface {
	io.Writer
	Sync() error
	Stat() (fs.FileInfo, error)
	Close() error
}

// Log is an append-only audit log of JSON lines. Each Record is written with
// one write(2) to a file opened O_APPEND and fsync'd before Record returns.
// When the file would grow past MaxSize it is renamed to path.1 (path.1 to
// path.2, and so on, up to Keep files) and a new one started.
//
// A Log is safe for concurrent use. Several processes may write one path (the
// old and the new process during an upgrade): they take turns through
// flock(2) on path + ".lock", and a writer that finds the file rotated under
// it reopens the path.
type Log struct {
	path    string
	maxSize int64
	keep    int
	open    func(path string) (logFile, error) // os.OpenFile, append-only

	mu     sync.Mutex // protects f and closed, and serializes writers in this process
	f      logFile    // the live file; nil after a failed rotation until reopened
	closed bool
}

// Open opens the audit log at path, creating it (mode 0600) and its
// directory (mode 0700) if needed.
func Open(path string, opts Options) (*Log, error) {
	return open(path, opts, openAppend)
}

func openAppend(path string) (logFile, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

func open(path string, opts Options, openFile func(string) (logFile, error)) (*Log, error) {
	if opts.MaxSize < 0 || opts.Keep < 0 {
		return nil, fmt.Errorf("open audit log: negative MaxSize %d or Keep %d", opts.MaxSize, opts.Keep)
	}
	if opts.MaxSize == 0 {
		opts.MaxSize = DefaultMaxSize
	}
	if opts.Keep == 0 {
		opts.Keep = DefaultKeep
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	l := &Log{path: path, maxSize: opts.MaxSize, keep: opts.Keep, open: openFile}
	unlock, err := lockFile(l.lockPath(), true)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer unlock()
	if err := l.reopen(); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if err := l.endTornLine(); err != nil {
		l.f.Close()
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return l, nil
}

// Path returns the path of the live log file.
func (l *Log) Path() string { return l.path }

func (l *Log) lockPath() string { return l.path + ".lock" }

// Record appends ev to the log and fsyncs it. When Record returns an error
// the event may not be on disk, and the caller must refuse the change it was
// about to make: nothing unaudited runs.
//
//	if err := log.Record(ctx, ev); err != nil {
//		return fmt.Errorf("swap %s: audit: %w", name, err) // the old version keeps serving
//	}
//
// An event without Action, Target or Result is refused with
// ErrInvalidEvent. Cancelling ctx before the write starts aborts Record;
// once the write started it completes.
func (l *Log) Record(ctx context.Context, ev Event) error {
	if ev.Action == "" || ev.Target == "" || ev.Result == "" {
		return fmt.Errorf("record audit event: %w: action %q, target %q, result %q", ErrInvalidEvent, ev.Action, ev.Target, ev.Result)
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	ev.Error, ev.Detail = cut(ev.Error), cut(ev.Detail)
	line, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("record audit event: %w", err)
	}
	line = append(line, '\n')

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("record audit event: %w", ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("record audit event: %w", err)
	}
	unlock, err := lockFile(l.lockPath(), true)
	if err != nil {
		return fmt.Errorf("record audit event: %w", err)
	}
	defer unlock()
	if err := l.write(line); err != nil {
		return fmt.Errorf("record audit event in %s: %w", l.path, err)
	}
	return nil
}

// cut shortens s to maxErrorLen bytes, at a rune boundary, marking the cut.
func cut(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	n := maxErrorLen
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// write appends line, rotating first if needed. The caller holds mu and the
// file lock.
func (l *Log) write(line []byte) error {
	if err := l.followRotation(); err != nil {
		return err
	}
	fi, err := l.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > 0 && fi.Size()+int64(len(line)) > l.maxSize {
		if err := l.rotate(); err != nil {
			return fmt.Errorf("rotate: %w", err)
		}
	}
	if _, err := l.f.Write(line); err != nil {
		return err
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}

// followRotation reopens the path if the file open is no longer the one at
// the path (another writer rotated it) or if no file is open.
func (l *Log) followRotation() error {
	if l.f != nil {
		onDisk, err := os.Stat(l.path)
		if err == nil {
			if open, err := l.f.Stat(); err == nil && os.SameFile(onDisk, open) {
				return nil
			}
		}
	}
	return l.reopen()
}

func (l *Log) reopen() error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	f, err := l.open(l.path)
	if err != nil {
		return err
	}
	l.f = f
	return syncDir(filepath.Dir(l.path))
}

// rotate renames path.(Keep-1) … path.1 one up (dropping path.Keep), path to
// path.1, and starts a new file at path.
func (l *Log) rotate() error {
	l.f.Close()
	l.f = nil
	if err := os.Remove(rotatedPath(l.path, l.keep)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for i := l.keep - 1; i >= 1; i-- {
		if err := os.Rename(rotatedPath(l.path, i), rotatedPath(l.path, i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(l.path, rotatedPath(l.path, 1)); err != nil {
		return err
	}
	return l.reopen()
}

// endTornLine appends a newline if the file does not end with one (a write
// cut short by a crash), so the next record starts on its own line.
func (l *Log) endTornLine() error {
	r, err := os.Open(l.path)
	if err != nil {
		return err
	}
	defer r.Close()
	fi, err := r.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	last := make([]byte, 1)
	if _, err := r.ReadAt(last, fi.Size()-1); err != nil {
		return err
	}
	if last[0] == '\n' {
		return nil
	}
	if _, err := l.f.Write([]byte("\n")); err != nil {
		return err
	}
	return l.f.Sync()
}

// Close closes the log; later Records fail with ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func rotatedPath(path string, i int) string { return path + "." + strconv.Itoa(i) }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
