package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Defaults for Options.
const (
	// DefaultUpgradeTimeout bounds the time from the start of an upgrade to
	// the new process saying ready.
	DefaultUpgradeTimeout = time.Minute
	// DefaultProbation is how long the old process keeps its sockets after
	// the new process said ready, to resume if the new process dies.
	DefaultProbation = 5 * time.Second
	// DefaultStderrTail is how many trailing bytes of the new process's
	// standard error (before it said ready) a failure report carries.
	DefaultStderrTail = 4096
)

// Options configure an Upgrader. The zero value is usable.
type Options struct {
	// Binary is the executable an upgrade starts. A relative path is
	// resolved by New against the working directory at that time.
	// Defaults to the current executable as reported by os.Executable at
	// upgrade time; on Linux that is the file now at the path this process
	// was started from, so replacing the file and upgrading runs the new
	// binary.
	Binary string
	// Args are the new process's arguments, without argv[0].
	// Defaults to os.Args[1:].
	Args []string
	// Env is appended to os.Environ() for the new process; later entries
	// win. Defaults to nil (the environment of this process).
	Env []string
	// PrepareBinary, if set, is called at the start of every upgrade with
	// the (absolute) path of the binary to start and returns the path to
	// execute. It may copy the binary somewhere it cannot change and verify
	// it; an error aborts the upgrade and this process keeps serving.
	// Defaults to nil: Binary is executed as it is.
	PrepareBinary func(ctx context.Context, path string) (string, error)
	// Snapshot, if set, returns a state blob (at most MaxStateSize bytes)
	// that the new process reads with State before it says ready. It runs
	// once per upgrade, after the new process was started. An error aborts
	// the upgrade. Defaults to nil: no state.
	Snapshot func(ctx context.Context) ([]byte, error)
	// UpgradeTimeout bounds the time from the start of an upgrade until the
	// new process says ready. Defaults to DefaultUpgradeTimeout (1m).
	UpgradeTimeout time.Duration
	// Probation is how long this process keeps its sockets after the new
	// process said ready. If the new process dies within it, this process
	// resumes accepting and the upgrade is reported as rolled back. A
	// negative value disables probation. Defaults to DefaultProbation (5s).
	Probation time.Duration
	// Signals trigger an upgrade when received. Defaults to SIGHUP.
	Signals []os.Signal
	// NoSignals disables signal triggers; only Upgrade starts an upgrade.
	// Defaults to false.
	NoSignals bool
	// PIDFile, if set, is atomically rewritten with the PID of the serving
	// process: by Ready in a process started without a parent, and with the
	// new PID when a new process passes probation. Defaults to "" (none).
	PIDFile string
	// StderrTail is how many trailing bytes of the new process's standard
	// error a ChildError carries. Defaults to DefaultStderrTail (4096).
	StderrTail int
	// OnResult, if set, is called with the result of every upgrade attempt,
	// whatever triggered it, including rollbacks. It is called from the
	// goroutine running the attempt, before Upgrade returns; it must not
	// block for long. Defaults to nil.
	OnResult func(Result)
	// Logger receives one line per upgrade step. Defaults to nil (discard).
	Logger *slog.Logger
}

// withDefaults validates o and fills in the defaults.
func (o Options) withDefaults() (Options, error) {
	if o.UpgradeTimeout < 0 {
		return o, fmt.Errorf("UpgradeTimeout %v is negative", o.UpgradeTimeout)
	}
	if o.StderrTail < 0 {
		return o, fmt.Errorf("StderrTail %d is negative", o.StderrTail)
	}
	if o.Binary != "" && !filepath.IsAbs(o.Binary) {
		abs, err := filepath.Abs(o.Binary)
		if err != nil {
			return o, fmt.Errorf("Binary %q: %w", o.Binary, err)
		}
		o.Binary = abs
	}
	if o.UpgradeTimeout == 0 {
		o.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if o.Probation == 0 {
		o.Probation = DefaultProbation
	}
	if o.StderrTail == 0 {
		o.StderrTail = DefaultStderrTail
	}
	if o.Signals == nil {
		o.Signals = []os.Signal{syscall.SIGHUP}
	}
	if o.Args == nil && len(os.Args) > 0 {
		o.Args = os.Args[1:]
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Outcome is how an upgrade attempt ended.
type Outcome int

const (
	// Failed: the new process never became ready; this process serves.
	Failed Outcome = iota
	// RolledBack: the new process said ready but died during probation;
	// this process resumed serving.
	RolledBack
	// Committed: the new process passed probation and serves alone; this
	// process should drain and exit (Exit is closed).
	Committed
)

func (o Outcome) String() string {
	switch o {
	case Failed:
		return "failed"
	case RolledBack:
		return "rolled back"
	case Committed:
		return "committed"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Result reports one upgrade attempt.
type Result struct {
	Outcome Outcome
	// PID of the new process, 0 if it was never started.
	PID int
	// Binary is the path that was executed (after PrepareBinary).
	Binary string
	// Trigger is "call" for Upgrade or the name of the signal.
	Trigger string
	Started time.Time
	// Ready is the time from Started until the new process said ready;
	// zero if it never did.
	Ready time.Duration
	// Probation is how long the probation window ran until the new process
	// passed it or died; zero if it never started.
	Probation time.Duration
	// Err is nil if and only if Outcome is Committed. It is usually a
	// *ChildError.
	Err error
}
