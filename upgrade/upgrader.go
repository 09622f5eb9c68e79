package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// Protocol environment and descriptor layout of a process started by an
// upgrade: the control socket is descriptor 3, the named files follow.
const (
	envParent   = "HOTSWAP_UPGRADE_PARENT" // value: parent pid
	controlFD   = 3
	firstFileFD = 4
	// reservedPrefix starts the names of files and hand-over sections the
	// package passes for itself; user names may not use it.
	reservedPrefix = "hotswap/"
	stderrName     = reservedPrefix + "stderr"
)

// stage is where this process stands in its life as a server. It only
// moves forward: child → main → succeeded.
type stage uint8

const (
	// stageChild: an upgrade started this process and the parent has not
	// committed yet; it may still resume serving, so this process may not
	// upgrade and must not unlink socket paths it closes.
	stageChild stage = iota
	// stageMain: this process serves alone and may upgrade.
	stageMain
	// stageSucceeded: a successor passed probation and owns the sockets.
	stageSucceeded
)

// Phase is where this process stands in binary upgrades, as Upgrader.Phase
// reports it. The first four are the phases of an attempt this process
// runs, in order; the last two belong to a process on either side of a
// hand-over.
type Phase uint8

const (
	// PhaseIdle: no upgrade runs; this process serves alone.
	PhaseIdle Phase = iota
	// PhaseStarting: an attempt prepares the new binary (PrepareBinary:
	// verify, copy into the store) and starts the new process.
	PhaseStarting
	// PhaseWaitReady: the new process runs and has the hand-over; the
	// attempt waits until it says ready (bounded by UpgradeTimeout).
	PhaseWaitReady
	// PhaseProbation: the new process is ready and accepts; this process
	// stopped accepting but keeps its sockets until Probation ends, and
	// resumes if the new process dies.
	PhaseProbation
	// PhaseParentProbation: an upgrade started this process, and its
	// parent is still in probation (it may yet resume serving).
	PhaseParentProbation
	// PhaseHandedOver: a new process passed probation and owns the
	// sockets; this process drains and exits (Exit is closed).
	PhaseHandedOver
)

var phaseNames = [...]string{"idle", "starting", "waiting for ready", "probation", "parent probation", "handed over"}

// String returns the phase as status and metrics name it: "idle",
// "starting", "waiting for ready", "probation", "parent probation" or
// "handed over".
func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return "phase(" + strconv.Itoa(int(p)) + ")"
}

// Phases lists every Phase in order, e.g. for a metric with one series
// per phase.
func Phases() []Phase {
	return []Phase{PhaseIdle, PhaseStarting, PhaseWaitReady, PhaseProbation, PhaseParentProbation, PhaseHandedOver}
}

// Upgrader hands this process's sockets, files and state to a new process
// of the same service and tells the caller whether it took over. Create one
// per process with New, early in main; New refuses a second one while the
// first is open. An Upgrader is safe for concurrent use.
//
// The code is split by concern: the socket registry (sockets.go), the
// upgrade attempt run by the old process (attempt.go) and its view of the
// new process (child.go), the new process's link to its parent
// (parent.go), and descriptor helpers (fds.go).
type Upgrader struct {
	opts   Options
	log    *slog.Logger
	notify string // NOTIFY_SOCKET, or empty

	// Set in New, read-only afterwards.
	parent   *parentLink       // non-nil if an upgrade started this process
	state    []byte            // the parent's Snapshot
	sections map[string][]byte // the package's own hand-over sections
	tickets  *ticketKeys       // TLS session ticket keys, see ShareSessionTickets

	mu        sync.Mutex // protects stage, attempt, childPID, ready, closed, files, inherited and unlinks
	stage     stage
	attempt   Phase // PhaseIdle to PhaseProbation; only the goroutine running the attempt changes it
	childPID  int   // the running attempt's new process
	ready     bool  // Ready was called
	closed    bool  // Close was called
	files     map[string]handed
	inherited map[string]*os.File // received from the parent, not yet claimed
	unlinks   []string            // unix paths closed while another process may own them

	closing  chan struct{} // closed by Close
	exit     chan struct{} // closed on commit or Close
	exitOnce sync.Once
	sigC     chan os.Signal
	wg       sync.WaitGroup // attempts, the signal loop, the parent link reader
}

// processGuard is the package's only state: an Upgrader takes what exists
// once per process (descriptor 3 and the inherited descriptors, the
// hand-over variable, the upgrade signals, the pidfile), so New refuses a
// second Upgrader while one is open.
var processGuard struct {
	mu    sync.Mutex // protects owner
	owner string     // where the open Upgrader was created; "" if none
}

// acquireProcess marks this process as having an Upgrader, or returns a
// *DuplicateError naming where the open one was created.
func acquireProcess() error {
	processGuard.mu.Lock()
	defer processGuard.mu.Unlock()
	if processGuard.owner != "" {
		return &DuplicateError{Owner: processGuard.owner}
	}
	processGuard.owner = callerOutsidePackage()
	return nil
}

func releaseProcess() {
	processGuard.mu.Lock()
	processGuard.owner = ""
	processGuard.mu.Unlock()
}

// callerOutsidePackage names the first two frames of the stack outside
// this package: who called New (and through whom, as in host.New).
func callerOutsidePackage() string {
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	var names []string
	for len(names) < 2 {
		f, more := frames.Next()
		if !strings.Contains(f.Function, "/hotswap/upgrade.") {
			names = append(names, fmt.Sprintf("%s (%s:%d)", f.Function, f.File, f.Line))
		}
		if !more {
			break
		}
	}
	if len(names) == 0 {
		return "unknown caller"
	}
	return strings.Join(names, " called from ")
}

// New creates the Upgrader of this process. If this process was started by
// an upgrade, New reads the hand-over message from the parent: the inherited
// sockets and files become available to Listen, ListenPacket and File, and
// the state blob to State. If the parent speaks another major version of the
// hand-over protocol, New refuses it, tells the parent why, and returns an
// error matching ErrVersionMismatch; the caller should exit non-zero (the
// parent keeps serving).
//
// Only one Upgrader may be open in a process: while one is, New returns a
// *DuplicateError (matching ErrDuplicate). A service that embeds a
// host.Host with Options.Upgrade uses the host's Upgrader.
//
// New installs the signal triggers (SIGHUP by default). Call Close when done.
func New(opts Options) (*Upgrader, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("new upgrader: %w", err)
	}
	if err := acquireProcess(); err != nil {
		return nil, fmt.Errorf("new upgrader: %w", err)
	}
	u := &Upgrader{
		opts:      opts,
		log:       opts.Logger,
		notify:    os.Getenv("NOTIFY_SOCKET"),
		stage:     stageMain,
		files:     make(map[string]handed),
		inherited: make(map[string]*os.File),
		closing:   make(chan struct{}),
		exit:      make(chan struct{}),
	}
	if v, ok := os.LookupEnv(envParent); ok {
		// Not for our own children, nor for anything this process runs.
		os.Unsetenv(envParent)
		if ppid, _ := strconv.Atoi(v); ppid == os.Getppid() {
			if err := u.attachParent(); err != nil {
				releaseProcess()
				return nil, fmt.Errorf("new upgrader: %w", err)
			}
		} else {
			u.log.Warn("upgrade: ignoring hand-over variable of another parent", "var", envParent, "value", v, "ppid", os.Getppid())
		}
	}
	u.tickets = newTicketKeys(u.sections[ticketKeysSection], u.log)
	if !opts.NoSignals {
		u.sigC = make(chan os.Signal, 1)
		signal.Notify(u.sigC, opts.Signals...)
		u.wg.Add(1)
		go u.signalLoop()
	}
	return u, nil
}

// Phase returns where this process stands in binary upgrades and, from
// PhaseWaitReady to PhaseProbation, the new process's pid (else 0). It is
// a snapshot for status pages and metrics: the phase may move on at once.
func (u *Upgrader) Phase() (Phase, int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.stage == stageSucceeded:
		return PhaseHandedOver, 0
	case u.attempt != PhaseIdle:
		return u.attempt, u.childPID
	case u.stage == stageChild:
		return PhaseParentProbation, 0
	}
	return PhaseIdle, 0
}

// HasParent reports whether an upgrade started this process.
func (u *Upgrader) HasParent() bool { return u.parent != nil }

// TakingOver reports whether an upgrade started this process and its
// parent has not committed it yet: until then the parent may resume
// serving (if this process dies during probation), and this process may
// not upgrade.
func (u *Upgrader) TakingOver() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stage == stageChild
}

// State returns the state blob the parent's Snapshot produced, or nil if
// this process has no parent or the parent sent none.
func (u *Upgrader) State() []byte { return u.state }

// Exit is closed when this process should stop serving: a new process
// passed probation and took over, or Close was called. Drain and exit then.
func (u *Upgrader) Exit() <-chan struct{} { return u.exit }

// Ready tells whoever waits that this process serves. In a process started
// by an upgrade it tells the parent, which then starts probation; the
// parent writes the pidfile and notifies systemd when probation passes. In a
// process without a parent it writes the pidfile and sends READY=1 and
// MAINPID to systemd if NOTIFY_SOCKET is set.
//
// Ready closes inherited files nobody claimed. Call it once all sockets and
// files are set up; later calls do nothing.
func (u *Upgrader) Ready() error {
	u.mu.Lock()
	if u.ready {
		u.mu.Unlock()
		return nil
	}
	u.ready = true
	for name, f := range u.inherited {
		u.log.Info("upgrade: closing inherited file nobody claimed", "name", name)
		f.Close()
	}
	clear(u.inherited)
	standalone := u.stage != stageChild
	u.mu.Unlock()

	if standalone {
		return u.becomeMain()
	}
	u.parent.ready(u.log)
	return nil
}

// becomeMain writes the pidfile and tells systemd this process is the main
// one.
func (u *Upgrader) becomeMain() error {
	var errs []error
	if u.opts.PIDFile != "" {
		errs = append(errs, writePIDFile(u.opts.PIDFile, os.Getpid()))
	}
	errs = append(errs, sdNotify(u.notify, fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid())))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ready: %w", err)
	}
	return nil
}

// signalLoop starts an upgrade for every signal received, refusing (with a
// log line) those that arrive while one runs.
func (u *Upgrader) signalLoop() {
	defer u.wg.Done()
	for {
		select {
		case s := <-u.sigC:
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				// Errors are logged and passed to OnResult by upgrade.
				if _, err := u.upgrade(context.Background(), s.String(), ""); errors.Is(err, ErrUpgradeInProgress) {
					u.log.Warn("upgrade: signal ignored", "signal", s.String(), logkey.Err, err)
				}
			}()
		case <-u.closing:
			return
		}
	}
}

// Close stops the signal triggers and ends this Upgrader. A new process
// still starting is killed; one in probation is committed at once (it is
// ready and already accepting). Inherited files nobody claimed are closed,
// and the pidfile is removed if it names this process and no successor
// took over. Close does not close the listeners and files it returned: the
// caller does. Close closes Exit, lets New create another Upgrader in this
// process, and is idempotent.
func (u *Upgrader) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	close(u.closing)
	u.mu.Unlock()

	if u.sigC != nil {
		signal.Stop(u.sigC)
	}
	if u.parent != nil {
		u.parent.conn.Close() // ends the link reader
	}
	u.wg.Wait()

	u.mu.Lock()
	for _, f := range u.inherited {
		f.Close()
	}
	clear(u.inherited)
	succeeded := u.stage == stageSucceeded
	u.mu.Unlock()
	if u.parent != nil {
		u.parent.closeStderr()
	}
	var err error
	if u.opts.PIDFile != "" && !succeeded {
		err = removePIDFile(u.opts.PIDFile, os.Getpid())
	}
	u.exitOnce.Do(func() { close(u.exit) })
	releaseProcess()
	return err
}
