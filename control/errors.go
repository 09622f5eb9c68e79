package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/kernel"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// Error kinds: what a caller branches on. Each matches the sentinel error
// of the same name with errors.Is.
const (
	KindForbidden     = "forbidden"      // the peer's uid is not on the allow-list; nothing ran
	KindBadRequest    = "bad_request"    // the request was malformed; nothing ran
	KindRejected      = "rejected"       // a check refused the artifact or binary (Check names it); nothing changed
	KindBusy          = "busy"           // another change of the module, or another upgrade, is running
	KindNotFound      = "not_found"      // the module is not loaded
	KindNoPrevious    = "no_previous"    // there is no version to roll back to
	KindUpgradeFailed = "upgrade_failed" // the new process failed before it was ready; this one serves
	KindRolledBack    = "rolled_back"    // the new process died during probation, or a new eBPF program failed its health check; the old one serves again
	KindCanceled      = "canceled"       // the request was canceled before the change took effect
	KindUnavailable   = "unavailable"    // the service cannot do this now (upgrades disabled, shutting down)
	KindUnreachable   = "unreachable"    // the client could not reach the service or read its answer
	KindInternal      = "internal"       // anything else, e.g. the audit log could not be written
	KindAborted       = "aborted"        // the canary was aborted; the stable version serves
	KindNoCanary      = "no_canary"      // the module runs no canary
)

// Sentinel errors, one per kind, for errors.Is on an *Error.
var (
	ErrForbidden     = errors.New("peer not allowed on the control socket")
	ErrBadRequest    = errors.New("bad request")
	ErrRejected      = errors.New("refused by a check")
	ErrBusy          = errors.New("another change is in progress")
	ErrNotFound      = errors.New("module not loaded")
	ErrNoPrevious    = errors.New("no version to roll back to")
	ErrUpgradeFailed = errors.New("new process failed before it was ready")
	ErrRolledBack    = errors.New("new process died during probation; rolled back")
	ErrCanceled      = errors.New("canceled")
	ErrUnavailable   = errors.New("unavailable")
	ErrUnreachable   = errors.New("control socket unreachable")
	ErrInternal      = errors.New("internal error")
	ErrAborted       = errors.New("canary aborted")
	ErrNoCanary      = errors.New("no canary running")
)

var kindErrors = map[string]error{
	KindForbidden:     ErrForbidden,
	KindBadRequest:    ErrBadRequest,
	KindRejected:      ErrRejected,
	KindBusy:          ErrBusy,
	KindNotFound:      ErrNotFound,
	KindNoPrevious:    ErrNoPrevious,
	KindUpgradeFailed: ErrUpgradeFailed,
	KindRolledBack:    ErrRolledBack,
	KindCanceled:      ErrCanceled,
	KindUnavailable:   ErrUnavailable,
	KindUnreachable:   ErrUnreachable,
	KindInternal:      ErrInternal,
	KindAborted:       ErrAborted,
	KindNoCanary:      ErrNoCanary,
}

// Error is a refused or failed operation. It travels in Outcome.Error, and
// the Client returns it. It matches the sentinel of its Kind with errors.Is.
type Error struct {
	// Op is the operation, e.g. "load pricing"; the client sets it.
	Op string `json:"-"`
	// Kind is one of the Kind constants.
	Kind string `json:"kind"`
	// Check names the failed check when Kind is KindRejected: a
	// verification check ("signature", "digest", "policy", …) or a module
	// check ("compile", "init", "selftest", "migrate", …).
	Check string `json:"check,omitempty"`
	// Message says what failed, naming the artifact, version or binary.
	Message string `json:"message"`
	// Stderr is the tail of the new process's standard error, for a failed
	// upgrade.
	Stderr string `json:"stderr,omitempty"`
	// Serving says what still serves, e.g. "pricing@v1" or "pid 4242";
	// empty when nothing was changed or it is unknown.
	Serving string `json:"serving,omitempty"`
}

// Error reads, e.g.: "load pricing refused: pricing@v3: init check failed:
// …; pricing@v2 keeps serving".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(" ")
	}
	switch e.Kind {
	case KindForbidden, KindBadRequest, KindRejected, KindBusy, KindNotFound, KindNoPrevious, KindNoCanary:
		b.WriteString("refused: ")
	case KindCanceled:
		b.WriteString("canceled: ")
	default:
		b.WriteString("failed: ")
	}
	b.WriteString(e.Message)
	if e.Serving != "" {
		b.WriteString("; ")
		b.WriteString(e.Serving)
		b.WriteString(" keeps serving")
	}
	if e.Stderr != "" {
		b.WriteString("\nstandard error of the new process (tail):\n")
		b.WriteString(strings.TrimRight(e.Stderr, "\n"))
	}
	return b.String()
}

// Is reports whether target is the sentinel of e's Kind.
func (e *Error) Is(target error) bool { return kindErrors[e.Kind] == target }

// classify turns an error of the host into the Error a caller acts on.
func classify(err error) *Error {
	e := &Error{Kind: KindInternal, Message: err.Error()}
	var (
		ve *artifact.VerifyError
		le *module.LoadError
		ke *kernel.LoadError
		ce *upgrade.ChildError
	)
	switch {
	case errors.As(err, &ve):
		e.Kind, e.Check = KindRejected, string(ve.Check)
		e.Message = fmt.Sprintf("%s: %s check failed: %v", ve.Artifact, ve.Check, ve.Err)
	case errors.As(err, &le):
		e.Kind, e.Check = KindRejected, le.Check
		e.Message = fmt.Sprintf("%s@%s: %s check failed: %v", le.Module, le.Version, le.Check, le.Err)
	case errors.As(err, &ke):
		e.Kind, e.Check = KindRejected, string(ke.Check)
	case errors.Is(err, kernel.ErrUnhealthy):
		e.Kind = KindRolledBack
	case errors.Is(err, module.ErrBusy), errors.Is(err, upgrade.ErrUpgradeInProgress):
		e.Kind = KindBusy
	case errors.Is(err, canary.ErrAborted):
		e.Kind = KindAborted
	case errors.Is(err, host.ErrNoCanary):
		e.Kind = KindNoCanary
	case errors.Is(err, canary.ErrInvalidPolicy):
		e.Kind = KindBadRequest
	case errors.Is(err, module.ErrNoPrevious):
		e.Kind = KindNoPrevious
	case errors.Is(err, module.ErrNotFound):
		e.Kind = KindNotFound
	case errors.Is(err, upgrade.ErrRolledBack):
		e.Kind = KindRolledBack
	case errors.As(err, &ce) && !errors.Is(err, context.Canceled) && !errors.Is(err, upgrade.ErrClosed):
		e.Kind = KindUpgradeFailed
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		e.Kind = KindCanceled
	case errors.Is(err, module.ErrClosed), errors.Is(err, upgrade.ErrClosed):
		e.Kind = KindUnavailable
	}
	if errors.As(err, &ce) {
		// The stderr tail travels on its own, not quoted in the message.
		c := *ce
		e.Stderr, c.Stderr = ce.Stderr, ""
		if e.Kind != KindRejected {
			e.Message = c.Error()
		}
	}
	return e
}

// canceled is the Error of a request its caller gave up on before the
// answer came. The service sees the connection close: a change it had not
// yet made is abandoned and audited as canceled; one it had made stands.
func canceled(err error) *Error {
	return &Error{Kind: KindCanceled, Message: fmt.Sprintf("%v before the service answered; "+
		"a change not yet made was abandoned (see hotswap status and hotswap history)", err)}
}

// unreachable is the Error of a request that did not get an answer.
func unreachable(socket string, err error) *Error {
	msg := fmt.Sprintf("cannot reach the service at %s: %v", socket, err)
	if errors.Is(err, os.ErrNotExist) {
		msg += " (is the service running? see --socket and $" + SocketEnv + ")"
	}
	return &Error{Kind: KindUnreachable, Message: msg}
}
