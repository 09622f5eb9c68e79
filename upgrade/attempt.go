package upgrade

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

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
// Options.Binary; PrepareBinary still applies to it. path must be
// absolute: a relative path would be resolved in this service's working
// directory, not in the caller's, so it fails the attempt with an error
// matching ErrRelativePath (and this process keeps serving).
func (u *Upgrader) UpgradeBinary(ctx context.Context, path string) (Result, error) {
	return u.upgrade(ctx, "call", path)
}

func (u *Upgrader) upgrade(ctx context.Context, trigger, binary string) (Result, error) {
	if err := u.begin(); err != nil {
		return Result{Trigger: trigger}, err
	}
	defer u.wg.Done()

	// Close aborts PrepareBinary and Snapshot too (they get this context);
	// the cause tells the attempt why.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-u.closing:
			cancel(ErrClosed)
		case <-ctx.Done():
		}
	}()
	res := u.run(ctx, trigger, binary)
	u.end()

	attrs := []any{"trigger", res.Trigger, "outcome", res.Outcome.String(), logkey.PID, res.PID, "binary", res.Binary, "ready", res.Ready}
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

// begin claims the attempt slot, or says why an upgrade cannot start.
func (u *Upgrader) begin() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.closed || u.stage == stageSucceeded:
		return fmt.Errorf("upgrade: %w", ErrClosed)
	case u.attempt != PhaseIdle:
		return &InProgressError{PID: u.childPID, Phase: u.attempt.String()}
	case u.stage == stageChild:
		return &InProgressError{Phase: PhaseParentProbation.String()}
	}
	u.attempt = PhaseStarting
	u.wg.Add(1)
	return nil
}

// setAttempt moves the running attempt to phase; entering probation pauses
// every socket.
func (u *Upgrader) setAttempt(phase Phase, pid int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if phase == PhaseProbation {
		u.pauseAll(true)
	}
	u.attempt, u.childPID = phase, pid
}

// end releases the attempt slot. After a rollback it resumes the sockets;
// after a commit they stay paused until the service drains and closes them.
func (u *Upgrader) end() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.attempt == PhaseProbation && u.stage != stageSucceeded {
		u.pauseAll(false)
	}
	u.attempt, u.childPID = PhaseIdle, 0
	u.flushUnlinks()
}

// run runs one upgrade attempt from start to end on the calling goroutine, the
// only one that moves u.attempt while it runs (see begin).
func (u *Upgrader) run(ctx context.Context, trigger, binary string) (res Result) {
	res = Result{Trigger: trigger, Started: time.Now(), Outcome: Failed}
	if err := sdNotify(u.notify, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec())); err != nil {
		u.log.Warn("upgrade: notify systemd", logkey.Err, err)
	}
	defer func() {
		if res.Outcome != Committed {
			if err := sdNotify(u.notify, "READY=1"); err != nil {
				u.log.Warn("upgrade: notify systemd", logkey.Err, err)
			}
		}
	}()
	deadline := time.NewTimer(u.opts.UpgradeTimeout)
	defer deadline.Stop()

	bin, err := u.binary(ctx, binary)
	res.Binary = bin
	if err != nil {
		res.Err = err
		return res
	}
	c, err := u.startChild(bin)
	if err != nil {
		res.Err = &ChildError{Binary: bin, Stage: "start", Err: err}
		return res
	}
	res.PID = c.pid
	u.setAttempt(PhaseWaitReady, c.pid)
	u.log.Info("upgrade: started new process", logkey.PID, c.pid, "binary", bin, "trigger", trigger)

	if err := u.initChild(ctx, c, deadline.C); err != nil {
		grace := time.Duration(0)
		if errors.Is(err, ErrVersionMismatch) || errors.Is(err, errRefused) {
			grace = time.Second // it exits by itself; let it say how
		}
		c.kill(grace)
		res.Err = c.error("init", err)
		return res
	}
	res.Ready = time.Since(res.Started)
	u.log.Info("upgrade: new process ready", logkey.PID, c.pid, "ready", res.Ready)

	u.setAttempt(PhaseProbation, c.pid)
	probationStart := time.Now()
	alive := u.probation(c)
	res.Probation = time.Since(probationStart)
	if !alive {
		c.close() // end resumes the sockets

		res.Outcome = RolledBack
		res.Err = c.error("probation", ErrRolledBack)
		return res
	}
	u.commit(c)
	res.Outcome = Committed
	return res
}

// binary returns the path to execute: binary (which must be absolute),
// else Options.Binary, else this executable, passed through PrepareBinary.
func (u *Upgrader) binary(ctx context.Context, binary string) (string, error) {
	bin := cmp.Or(binary, u.opts.Binary)
	if binary != "" && !filepath.IsAbs(binary) {
		wd, _ := os.Getwd()
		return binary, &ChildError{Binary: binary, Stage: "prepare", Err: &RelativePathError{Path: binary, Dir: wd}}
	}
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", &ChildError{Stage: "prepare", Err: fmt.Errorf("find executable: %w", err)}
		}
		bin = exe
	}
	if u.opts.PrepareBinary == nil {
		return bin, nil
	}
	p, err := u.opts.PrepareBinary(ctx, bin)
	if err != nil {
		return bin, &ChildError{Binary: bin, Stage: "prepare", Err: fmt.Errorf("prepare binary: %w", err)}
	}
	return p, nil
}

// initChild sends the hello (with the Snapshot) and waits until the new
// process says ready. An error says why it did not.
func (u *Upgrader) initChild(ctx context.Context, c *child, deadline <-chan time.Time) error {
	var state []byte
	if u.opts.Snapshot != nil {
		var err error
		if state, err = u.opts.Snapshot(ctx); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	sections := map[string][]byte{}
	if keys := u.tickets.snapshot(); keys != nil {
		sections[ticketKeysSection] = keys
	}
	if err := c.sendHello(state, sections); err != nil {
		return err
	}
	for {
		select {
		case f, ok := <-c.msgs:
			switch {
			case !ok:
				// The control socket closed: the process is exiting.
				select {
				case <-c.done:
				case <-deadline:
					return ErrReadyTimeout
				}
				return ErrChildExited
			case f.version.Major != ProtocolMajor:
				return &VersionError{Local: protocolVersion, Remote: f.version, Reason: refuseReason(f)}
			case f.typ == msgRefuse:
				return fmt.Errorf("%w: %s", errRefused, refuseReason(f))
			case f.typ == msgReady:
				return nil
			default:
				return fmt.Errorf("%w: unexpected %s message before ready", ErrProtocol, f.typ)
			}
		case <-c.done:
			return ErrChildExited
		case <-deadline:
			return fmt.Errorf("%w (after %v)", ErrReadyTimeout, u.opts.UpgradeTimeout)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// probation waits out Options.Probation and reports whether the new
// process is still alive. Close ends it early: the new process is ready
// and already accepting, so it serves.
func (u *Upgrader) probation(c *child) (alive bool) {
	if u.opts.Probation <= 0 {
		return true
	}
	t := time.NewTimer(u.opts.Probation)
	defer t.Stop()
	select {
	case <-c.done:
		return false
	case <-t.C:
	case <-u.closing:
	}
	return true
}

// commit hands the sockets over for good: the new process is told it serves
// alone, the pidfile and systemd name it, and Exit closes.
func (u *Upgrader) commit(c *child) {
	u.mu.Lock()
	u.stage = stageSucceeded
	u.mu.Unlock()
	if err := c.commit(); err != nil {
		u.log.Warn("upgrade: tell new process to commit", logkey.PID, c.pid, logkey.Err, err)
	}
	if u.opts.PIDFile != "" {
		if err := writePIDFile(u.opts.PIDFile, c.pid); err != nil {
			u.log.Error("upgrade: pidfile", logkey.Err, err)
		}
	}
	if err := sdNotify(u.notify, fmt.Sprintf("MAINPID=%d\nREADY=1", c.pid)); err != nil {
		u.log.Warn("upgrade: notify systemd", logkey.Err, err)
	}
	u.exitOnce.Do(func() { close(u.exit) })
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
