package upgrade

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on them with errors.Is; the typed errors
// below carry the details and match these sentinels.
var (
	// ErrUpgradeInProgress is returned by Upgrade while another upgrade of
	// this process (or the one that started this process) is not finished.
	ErrUpgradeInProgress = errors.New("upgrade in progress")
	// ErrChildExited means the new process exited before it was ready.
	ErrChildExited = errors.New("new process exited before it was ready")
	// ErrReadyTimeout means the new process did not say ready in time.
	ErrReadyTimeout = errors.New("new process not ready in time")
	// ErrRolledBack means the new process died during probation, after it
	// had said ready, and this process resumed serving.
	ErrRolledBack = errors.New("new process died during probation; rolled back")
	// ErrVersionMismatch means the two processes speak hand-over protocols of
	// different major versions.
	ErrVersionMismatch = errors.New("hand-over protocol version mismatch")
	// ErrProtocol means a hand-over message was malformed.
	ErrProtocol = errors.New("malformed hand-over message")
	// ErrClosed is returned after Close, or by Upgrade once this process has
	// handed over to a successor.
	ErrClosed = errors.New("upgrader closed")
	// ErrDuplicate means New was called while another Upgrader of this
	// process is open.
	ErrDuplicate = errors.New("an Upgrader already exists in this process")
	// ErrRelativePath means UpgradeBinary was given a relative path.
	ErrRelativePath = errors.New("binary path is relative")
)

// DuplicateError is returned by New while another Upgrader of this process
// is open: two would both answer the upgrade signals and hand the sockets
// over twice. It matches ErrDuplicate.
type DuplicateError struct {
	// Owner names the code that created the open Upgrader.
	Owner string
}

func (e *DuplicateError) Error() string {
	return fmt.Sprintf("an Upgrader already exists in this process (created by %s): use that one "+
		"(with host.Options.Upgrade, take host.Host.Upgrader) or Close it first", e.Owner)
}

// Is reports whether target is ErrDuplicate.
func (e *DuplicateError) Is(target error) bool { return target == ErrDuplicate }

// RelativePathError reports a relative binary path given to UpgradeBinary.
// It matches ErrRelativePath.
type RelativePathError struct {
	Path string
	Dir  string // this process's working directory, where Path would resolve
}

func (e *RelativePathError) Error() string {
	return fmt.Sprintf("binary path %q is relative: this service would look for it in its own working directory %s, "+
		"not the caller's; give an absolute path", e.Path, e.Dir)
}

// Is reports whether target is ErrRelativePath.
func (e *RelativePathError) Is(target error) bool { return target == ErrRelativePath }

// InProgressError is returned when an upgrade is refused because another one
// is running. It matches ErrUpgradeInProgress.
type InProgressError struct {
	// PID of the process being started, or 0 if it is not started yet or the
	// running upgrade is the one that started this process (Phase "parent
	// probation").
	PID   int
	Phase string
}

func (e *InProgressError) Error() string {
	if e.PID != 0 {
		return fmt.Sprintf("upgrade in progress (pid %d, %s)", e.PID, e.Phase)
	}
	return fmt.Sprintf("upgrade in progress (%s)", e.Phase)
}

// Is reports whether target is ErrUpgradeInProgress.
func (e *InProgressError) Is(target error) bool { return target == ErrUpgradeInProgress }

// ChildError describes a new process that did not take over. It unwraps to
// ErrChildExited, ErrReadyTimeout, ErrRolledBack, a *VersionError, a
// protocol error or a context error.
type ChildError struct {
	PID    int    // 0 if the process could not be started
	Binary string // the path that was executed
	// Stage is "prepare", "start", "init" (before ready) or "probation".
	Stage string
	// Exit is how the process ended ("exit status 3", "signal: killed"), or
	// empty if it was still running when the error was made.
	Exit string
	// Stderr is the tail of what the process wrote to its standard error
	// before it said ready (at most Options.StderrTail bytes).
	Stderr string
	Err    error
}

func (e *ChildError) Error() string {
	s := fmt.Sprintf("new process %s", e.Binary)
	if e.PID != 0 {
		s += fmt.Sprintf(" (pid %d)", e.PID)
	}
	s += fmt.Sprintf(" failed during %s: %v", e.Stage, e.Err)
	if e.Exit != "" {
		s += " (" + e.Exit + ")"
	}
	if e.Stderr != "" {
		s += fmt.Sprintf("; stderr tail: %q", e.Stderr)
	}
	return s
}

func (e *ChildError) Unwrap() error { return e.Err }

// VersionError reports a peer that speaks another major version of the
// hand-over protocol. It matches ErrVersionMismatch.
type VersionError struct {
	Local, Remote Version
	Reason        string // the refusing side's message, if any
}

func (e *VersionError) Error() string {
	s := fmt.Sprintf("hand-over protocol version mismatch: this process speaks %v, the other %v", e.Local, e.Remote)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is reports whether target is ErrVersionMismatch.
func (e *VersionError) Is(target error) bool { return target == ErrVersionMismatch }
