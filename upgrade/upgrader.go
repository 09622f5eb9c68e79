package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// Protocol environment and descriptor layout of a process started by an
// upgrade: the control socket is descriptor 3, the named files follow.
const (
	envParent   = "HOTSWAP_UPGRADE_PARENT" // value: parent pid
	controlFD   = 3
	firstFileFD = 4
	// reservedPrefix starts the names of files the package passes for
	// itself; user names may not use it.
	reservedPrefix = "hotswap/"
	stderrName     = reservedPrefix + "stderr"
)

// Options configure an Upgrader. The zero value is usable.
type Options struct {
	// Binary is the executable an upgrade starts. Defaults to the current
	// executable as reported by os.Executable at upgrade time; on Linux that
	// is the file now at the path this process was started from, so
	// replacing the file and upgrading runs the new binary.
	Binary string
	// Args are the new process's arguments, without argv[0].
	// Defaults to os.Args[1:].
	Args []string
	// Env is appended to os.Environ() for the new process; later entries
	// win. Defaults to nil (the environment of this process).
	Env []string
	// PrepareBinary, if set, is called at the start of every upgrade with
	// the path of the binary to start and returns the path to execute. It
	// may copy the binary somewhere it cannot change and verify it; an error
	// aborts the upgrade and this process keeps serving.
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
	// Err is nil if and only if Outcome is Committed. It is usually a
	// *ChildError.
	Err error
}

// Upgrader hands this process's sockets, files and state to a new process
// of the same service and tells the caller whether it took over. Create one
// per process with New, early in main. An Upgrader is safe for concurrent
// use.
type Upgrader struct {
	opts   Options
	log    *slog.Logger
	notify string // NOTIFY_SOCKET, or empty

	// Set in New, read-only afterwards.
	parent *parentLink // non-nil if an upgrade started this process
	state  []byte

	mu        sync.Mutex // protects everything up to closed
	phase     string     // "" when idle, else the running attempt's phase
	childPID  int        // the running attempt's new process
	files     map[string]handed
	inherited map[string]*os.File // received from the parent, not yet claimed
	// handedOver is set once a new process passed probation: it owns the
	// sockets, so this process must not unlink socket paths.
	handedOver bool
	parentDone bool // child only: the parent committed or went away
	ready      bool
	unlinks    []string // unix paths closed while a new process may own them
	closed     bool

	closing  chan struct{} // closed by Close
	exit     chan struct{} // closed on hand-over or Close
	exitOnce sync.Once
	sigC     chan os.Signal
	wg       sync.WaitGroup // attempts, the signal loop, the parent link reader
}

// handed is a socket or file that is passed to every new process.
type handed interface {
	syscallConn() (syscall.RawConn, error)
	pause(bool)
}

// New creates the Upgrader of this process. If this process was started by
// an upgrade, New reads the hand-over message from the parent: the inherited
// sockets and files become available to Listen, ListenPacket and File, and
// the state blob to State. If the parent speaks another major version of the
// hand-over protocol, New refuses it, tells the parent why, and returns an
// error matching ErrVersionMismatch; the caller should exit non-zero (the
// parent keeps serving).
//
// New installs the signal triggers (SIGHUP by default). Call Close when done.
func New(opts Options) (*Upgrader, error) {
	if opts.UpgradeTimeout < 0 {
		return nil, fmt.Errorf("new upgrader: UpgradeTimeout %v is negative", opts.UpgradeTimeout)
	}
	if opts.StderrTail < 0 {
		return nil, fmt.Errorf("new upgrader: StderrTail %d is negative", opts.StderrTail)
	}
	if opts.UpgradeTimeout == 0 {
		opts.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if opts.Probation == 0 {
		opts.Probation = DefaultProbation
	}
	if opts.StderrTail == 0 {
		opts.StderrTail = DefaultStderrTail
	}
	if opts.Signals == nil {
		opts.Signals = []os.Signal{syscall.SIGHUP}
	}
	if opts.Args == nil && len(os.Args) > 0 {
		opts.Args = os.Args[1:]
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u := &Upgrader{
		opts:      opts,
		log:       log,
		notify:    os.Getenv("NOTIFY_SOCKET"),
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
				return nil, fmt.Errorf("new upgrader: %w", err)
			}
		} else {
			log.Warn("upgrade: ignoring hand-over variable of another parent", "var", envParent, "value", v, "ppid", os.Getppid())
		}
	}
	if !opts.NoSignals {
		u.sigC = make(chan os.Signal, 1)
		signal.Notify(u.sigC, opts.Signals...)
		u.wg.Add(1)
		go u.signalLoop()
	}
	return u, nil
}

// HasParent reports whether an upgrade started this process.
func (u *Upgrader) HasParent() bool { return u.parent != nil }

// State returns the state blob the parent's Snapshot produced, or nil if
// this process has no parent or the parent sent none.
func (u *Upgrader) State() []byte { return u.state }

// Exit is closed when this process should stop serving: a new process
// passed probation and took over, or Close was called. Drain and exit then.
func (u *Upgrader) Exit() <-chan struct{} { return u.exit }

// Listen returns a stream listener (tcp, tcp4, tcp6, unix) for addr: the one
// inherited under the name network+":"+addr if the parent passed it, else a
// new one. The listener is handed to every new process. ctx bounds the
// creation of a new listener only.
//
// Closing the listener closes this process's descriptor; a unix socket path
// is removed only when no new process owns the socket.
func (u *Upgrader) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	name := network + ":" + addr
	f, err := u.claim(name)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	var ln net.Listener
	if f != nil {
		ln, err = net.FileListener(f)
		f.Close()
	} else {
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	l := &listener{Listener: ln, u: u, name: name}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false) // the last owner unlinks, see forget
		l.unlink = unixPath(ul.Addr())
	}
	u.register(name, l)
	u.log.Debug("upgrade: listening", "name", name, "inherited", f != nil)
	return l, nil
}

// ListenPacket returns a packet socket (udp, udp4, udp6, unixgram) for addr:
// the one inherited under the name network+":"+addr, else a new one. While
// this process is in probation, ReadFrom blocks so that the new process
// receives the datagrams; it returns again if the upgrade rolls back.
func (u *Upgrader) ListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error) {
	name := network + ":" + addr
	f, err := u.claim(name)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	var pc net.PacketConn
	if f != nil {
		pc, err = net.FilePacketConn(f)
		f.Close()
	} else {
		var lc net.ListenConfig
		pc, err = lc.ListenPacket(ctx, network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	p := &packetConn{PacketConn: pc, u: u, name: name}
	if uc, ok := pc.(*net.UnixConn); ok {
		p.unlink = unixPath(uc.LocalAddr())
	}
	u.register(name, p)
	return p, nil
}

// File returns the file inherited under name, or else calls open and hands
// the file it returns to every new process. The caller owns the returned
// file; closing it stops handing it over. name may not start with "hotswap/".
func (u *Upgrader) File(name string, open func() (*os.File, error)) (*os.File, error) {
	f, err := u.claim(name)
	if err != nil {
		return nil, fmt.Errorf("file %s: %w", name, err)
	}
	if f == nil {
		if f, err = open(); err != nil {
			return nil, fmt.Errorf("file %s: %w", name, err)
		}
	}
	u.register(name, fileEntry{f})
	return f, nil
}

type fileEntry struct{ f *os.File }

func (e fileEntry) syscallConn() (syscall.RawConn, error) { return e.f.SyscallConn() }
func (fileEntry) pause(bool)                              {}

func (u *Upgrader) claim(name string) (*os.File, error) {
	if name == "" || strings.HasPrefix(name, reservedPrefix) {
		return nil, fmt.Errorf("invalid name %q: empty or reserved prefix %q", name, reservedPrefix)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, ErrClosed
	}
	if _, ok := u.files[name]; ok {
		return nil, fmt.Errorf("%q is already registered", name)
	}
	f := u.inherited[name]
	delete(u.inherited, name)
	return f, nil
}

func (u *Upgrader) register(name string, h handed) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.files[name] = h
	if u.phase == "probation" {
		h.pause(true)
	}
}

// forget is called when a handed socket is closed. It unlinks path unless
// another process may own the socket: a successor that passed probation, a
// new process being started, or (in a new process) a parent in probation.
func (u *Upgrader) forget(name, path string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.files, name)
	if path == "" || u.handedOver {
		return
	}
	if u.phase != "" || (u.parent != nil && !u.parentDone) {
		u.unlinks = append(u.unlinks, path)
		return
	}
	u.removeSocket(path)
}

// removeSocket unlinks a unix socket path. u.mu is held.
func (u *Upgrader) removeSocket(path string) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		u.log.Warn("upgrade: remove unix socket", "path", path, "err", err)
	}
}

func unixPath(a net.Addr) string {
	if a == nil || a.String() == "" || a.String()[0] == '@' {
		return "" // unnamed or abstract: nothing to unlink
	}
	return a.String()
}

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
	standalone := u.parent == nil || u.parentDone
	u.mu.Unlock()

	if standalone {
		return u.becomeMain()
	}
	p := u.parent
	if p.stderr != nil {
		// From now on our stderr goes where the parent's goes, not into the
		// pipe the parent reads during init (which closes when it exits).
		if err := syscall.Dup3(int(p.stderr.Fd()), 2, 0); err != nil {
			u.log.Warn("upgrade: redirect stderr", "err", err)
		}
		p.stderr.Close()
	}
	if err := writeFrame(p.conn, protocolVersion, msgReady, nil); err != nil {
		// The parent is gone; the link reader makes us standalone.
		u.log.Warn("upgrade: tell parent ready", "err", err)
	}
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

// Upgrade starts a new process of this service, hands it the sockets,
// files and state, waits until it says ready, then keeps this process's
// sockets through the probation window. It returns when the upgrade is
// decided:
//
//   - Committed, nil error: the new process serves; Exit is closed and this
//     process should drain and exit.
//   - RolledBack: the new process died during probation; this process
//     resumed accepting. The error matches ErrRolledBack.
//   - Failed: the new process exited, refused, or was not ready within
//     UpgradeTimeout; it was killed if needed and this process kept
//     serving. The error (a *ChildError) holds the tail of its stderr.
//
// Only one upgrade runs at a time: a concurrent call returns at once with an
// error matching ErrUpgradeInProgress. A process started by an upgrade
// cannot upgrade until its parent's probation ended.
//
// Cancelling ctx (or calling Close) aborts the upgrade only until the new
// process is ready: PrepareBinary and Snapshot see the cancellation, the new
// process is killed and this process keeps serving. After that, probation
// runs to its end regardless of ctx; it is bounded by Probation (Close ends
// it early by committing).
func (u *Upgrader) Upgrade(ctx context.Context) (Result, error) {
	return u.upgrade(ctx, "call", "")
}

// UpgradeBinary is Upgrade with the binary at path instead of
// Options.Binary; PrepareBinary still applies to it.
func (u *Upgrader) UpgradeBinary(ctx context.Context, path string) (Result, error) {
	return u.upgrade(ctx, "call", path)
}

func (u *Upgrader) upgrade(ctx context.Context, trigger, binary string) (Result, error) {
	u.mu.Lock()
	switch {
	case u.closed || u.handedOver:
		u.mu.Unlock()
		return Result{Trigger: trigger}, fmt.Errorf("upgrade: %w", ErrClosed)
	case u.phase != "":
		err := &InProgressError{PID: u.childPID, Phase: u.phase}
		u.mu.Unlock()
		return Result{Trigger: trigger}, err
	case u.parent != nil && !u.parentDone:
		u.mu.Unlock()
		return Result{Trigger: trigger}, &InProgressError{Phase: "parent probation"}
	}
	u.phase = "starting"
	u.wg.Add(1)
	u.mu.Unlock()
	defer u.wg.Done()

	// Close aborts PrepareBinary and Snapshot too (they get this context).
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-u.closing:
			cancel()
		case <-actx.Done():
		}
	}()
	res := u.attempt(actx, trigger, binary)

	u.mu.Lock()
	u.phase, u.childPID = "", 0
	if !u.handedOver {
		for _, p := range u.unlinks {
			u.removeSocket(p)
		}
	}
	u.unlinks = nil
	u.mu.Unlock()

	attrs := []any{"trigger", res.Trigger, "outcome", res.Outcome.String(), "pid", res.PID, "binary", res.Binary, "ready", res.Ready}
	switch res.Outcome {
	case Committed:
		u.log.Info("upgrade: new process took over", attrs...)
	case RolledBack:
		u.log.Error("upgrade: rolled back, new process died during probation; this process serves again", append(attrs, "err", res.Err)...)
	default:
		u.log.Error("upgrade: failed; this process keeps serving", append(attrs, "err", res.Err)...)
	}
	if u.opts.OnResult != nil {
		u.opts.OnResult(res)
	}
	return res, res.Err
}

func (u *Upgrader) setPhase(phase string, pid int) {
	u.mu.Lock()
	u.phase, u.childPID = phase, pid
	u.mu.Unlock()
}

// attempt runs one upgrade. Only one runs at a time (see upgrade).
func (u *Upgrader) attempt(ctx context.Context, trigger, binary string) (res Result) {
	res = Result{Trigger: trigger, Started: time.Now(), Outcome: Failed}
	if err := sdNotify(u.notify, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec())); err != nil {
		u.log.Warn("upgrade: notify systemd", "err", err)
	}
	defer func() {
		if res.Outcome != Committed {
			if err := sdNotify(u.notify, "READY=1"); err != nil {
				u.log.Warn("upgrade: notify systemd", "err", err)
			}
		}
	}()
	deadline := time.NewTimer(u.opts.UpgradeTimeout)
	defer deadline.Stop()

	bin := binary
	if bin == "" {
		bin = u.opts.Binary
	}
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			res.Err = &ChildError{Stage: "prepare", Err: fmt.Errorf("find executable: %w", err)}
			return res
		}
		bin = exe
	}
	res.Binary = bin
	if u.opts.PrepareBinary != nil {
		p, err := u.opts.PrepareBinary(ctx, bin)
		if err != nil {
			res.Err = &ChildError{Binary: bin, Stage: "prepare", Err: fmt.Errorf("prepare binary: %w", err)}
			return res
		}
		bin = p
		res.Binary = p
	}

	c, err := u.startChild(bin)
	if err != nil {
		res.Err = &ChildError{Binary: bin, Stage: "start", Err: err}
		return res
	}
	res.PID = c.pid
	u.setPhase("init", c.pid)
	u.log.Info("upgrade: started new process", "pid", c.pid, "binary", bin, "trigger", trigger)

	fail := func(stage string, err error) Result {
		grace := time.Duration(0)
		if errors.Is(err, ErrVersionMismatch) || errors.Is(err, errRefused) {
			grace = time.Second // it exits by itself; let it say how
		}
		c.kill(grace)
		res.Err = c.error(stage, err)
		return res
	}

	var state []byte
	if u.opts.Snapshot != nil {
		if state, err = u.opts.Snapshot(ctx); err != nil {
			return fail("init", fmt.Errorf("snapshot: %w", err))
		}
	}
	if err := c.sendHello(state); err != nil {
		return fail("init", err)
	}

	// Wait for ready.
	for ready := false; !ready; {
		select {
		case f, ok := <-c.msgs:
			switch {
			case !ok:
				// The control socket closed: the process is exiting.
				select {
				case <-c.done:
				case <-deadline.C:
					return fail("init", ErrReadyTimeout)
				}
				return fail("init", ErrChildExited)
			case f.version.Major != ProtocolMajor:
				return fail("init", &VersionError{Local: protocolVersion, Remote: f.version, Reason: refuseReason(f)})
			case f.typ == msgRefuse:
				return fail("init", fmt.Errorf("%w: %s", errRefused, refuseReason(f)))
			case f.typ == msgReady:
				ready = true
			default:
				return fail("init", fmt.Errorf("%w: unexpected %s message before ready", ErrProtocol, f.typ))
			}
		case <-c.done:
			return fail("init", ErrChildExited)
		case <-deadline.C:
			return fail("init", fmt.Errorf("%w (after %v)", ErrReadyTimeout, u.opts.UpgradeTimeout))
		case <-ctx.Done():
			select {
			case <-u.closing:
				return fail("init", ErrClosed)
			default:
			}
			return fail("init", ctx.Err())
		case <-u.closing:
			return fail("init", ErrClosed)
		}
	}
	res.Ready = time.Since(res.Started)
	u.log.Info("upgrade: new process ready", "pid", c.pid, "ready", res.Ready)

	// Probation: stop accepting, keep the sockets.
	u.mu.Lock()
	u.phase = "probation"
	for _, h := range u.files {
		h.pause(true)
	}
	u.mu.Unlock()
	if u.opts.Probation > 0 {
		t := time.NewTimer(u.opts.Probation)
		select {
		case <-c.done:
			t.Stop()
			u.mu.Lock()
			for _, h := range u.files {
				h.pause(false)
			}
			u.mu.Unlock()
			res.Outcome = RolledBack
			res.Err = c.error("probation", ErrRolledBack)
			return res
		case <-t.C:
		case <-u.closing:
			t.Stop() // shutting down: the new process is ready, let it serve
		}
	}

	// Commit.
	u.mu.Lock()
	u.handedOver = true
	u.mu.Unlock()
	res.Outcome = Committed
	if err := c.commit(); err != nil {
		u.log.Warn("upgrade: tell new process to commit", "pid", c.pid, "err", err)
	}
	if u.opts.PIDFile != "" {
		if err := writePIDFile(u.opts.PIDFile, c.pid); err != nil {
			u.log.Error("upgrade: pidfile", "err", err)
		}
	}
	if err := sdNotify(u.notify, fmt.Sprintf("MAINPID=%d\nREADY=1", c.pid)); err != nil {
		u.log.Warn("upgrade: notify systemd", "err", err)
	}
	u.exitOnce.Do(func() { close(u.exit) })
	return res
}

var errRefused = errors.New("refused hand-over")

func refuseReason(f frame) string {
	const max = 512
	r := []rune(string(f.payload))
	if len(r) > max {
		r = r[:max]
	}
	return string(r)
}

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
					u.log.Warn("upgrade: signal ignored", "signal", s.String(), "err", err)
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
// caller does. Close closes Exit and is idempotent.
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
	handedOver := u.handedOver
	u.mu.Unlock()
	if u.parent != nil && u.parent.stderr != nil {
		u.parent.stderr.Close()
	}
	var err error
	if u.opts.PIDFile != "" && !handedOver {
		err = removePIDFile(u.opts.PIDFile, os.Getpid())
	}
	u.exitOnce.Do(func() { close(u.exit) })
	return err
}

// parentLink is a new process's end of the hand-over.
type parentLink struct {
	conn    *net.UnixConn
	version Version  // the parent's
	stderr  *os.File // the parent's standard error, or nil
}

// attachParent reads the parent's hello on descriptor 3 and takes the
// inherited descriptors.
func (u *Upgrader) attachParent() error {
	syscall.CloseOnExec(controlFD)
	cf := os.NewFile(controlFD, "hotswap-control")
	fc, err := net.FileConn(cf)
	cf.Close()
	if err != nil {
		return fmt.Errorf("attach to parent: control socket: %w", err)
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return fmt.Errorf("attach to parent: control socket is a %T", fc)
	}
	refuse := func(err error) error {
		writeFrame(conn, protocolVersion, msgRefuse, []byte(err.Error()))
		conn.Close()
		return fmt.Errorf("attach to parent: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(u.opts.UpgradeTimeout))
	f, err := readFrame(conn)
	if err != nil {
		conn.Close()
		return fmt.Errorf("attach to parent: read hello: %w", err)
	}
	conn.SetReadDeadline(time.Time{})
	if f.version.Major != ProtocolMajor {
		return refuse(&VersionError{Local: protocolVersion, Remote: f.version})
	}
	if f.typ != msgHello {
		return refuse(fmt.Errorf("%w: got %s, want hello", ErrProtocol, f.typ))
	}
	h, err := decodeHello(f.payload)
	if err != nil {
		return refuse(err)
	}
	link := &parentLink{conn: conn, version: f.version}
	for i, name := range h.names {
		fd := firstFileFD + i
		if _, err := fcntl(fd, syscall.F_GETFD); err != nil {
			return refuse(fmt.Errorf("%w: file %q: descriptor %d: %v", ErrProtocol, name, fd, err))
		}
		syscall.CloseOnExec(fd)
		file := os.NewFile(uintptr(fd), name)
		if name == stderrName {
			link.stderr = file
			continue
		}
		u.inherited[name] = file
	}
	u.parent = link
	u.state = h.state
	u.wg.Add(1)
	go u.readParent()
	u.log.Info("upgrade: started by parent", "ppid", h.parentPID, "files", len(u.inherited), "state_bytes", len(h.state))
	return nil
}

// readParent waits for the parent's commit, or for the parent to go away.
func (u *Upgrader) readParent() {
	defer u.wg.Done()
	f, err := readFrame(u.parent.conn)
	for err == nil && f.typ != msgCommit {
		// Nothing else is defined after ready; a newer minor version may
		// send more, which we ignore.
		f, err = readFrame(u.parent.conn)
	}
	committed := err == nil
	u.mu.Lock()
	u.parentDone = true
	ready, closed := u.ready, u.closed
	pending := u.unlinks
	u.unlinks = nil
	if u.phase != "" {
		pending = nil // our own attempt handles them
	}
	for _, p := range pending {
		u.removeSocket(p)
	}
	u.mu.Unlock()
	if committed {
		u.parent.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if err := writeFrame(u.parent.conn, protocolVersion, msgCommitted, nil); err != nil {
			u.log.Warn("upgrade: acknowledge commit", "err", err)
		}
	}
	u.parent.conn.Close()
	switch {
	case committed:
		u.log.Info("upgrade: parent committed; this process serves alone")
	case closed:
	case ready:
		// The parent went away during probation without committing: it
		// crashed. We serve, so we are the main process now.
		u.log.Warn("upgrade: parent went away before commit; taking over", "err", err)
		if err := u.becomeMain(); err != nil {
			u.log.Error("upgrade: take over", "err", err)
		}
	default:
		u.log.Warn("upgrade: parent went away before ready", "err", err)
	}
}

func fcntl(fd, cmd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// handedFiles duplicates every handed socket and file, sorted by name.
func (u *Upgrader) handedFiles() (names []string, files []*os.File, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	names = make([]string, 0, len(u.files)+1)
	for name := range u.files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		rc, err := u.files[name].syscallConn()
		var f *os.File
		if err == nil {
			f, err = dupFile(rc, name)
		}
		if err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("hand over %s: %w", name, err)
		}
		files = append(files, f)
	}
	if rc, err := os.Stderr.SyscallConn(); err == nil {
		if f, err := dupFile(rc, stderrName); err == nil {
			names = append(names, stderrName)
			files = append(files, f)
		}
	}
	return names, files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
