package module

import (
	"errors"
	"fmt"
)

// Conditions callers branch on. Load, Rollback and Call return richer typed
// errors (*LoadError, *CallError) that match these with errors.Is.
var (
	// ErrNotFound: no version of the module is loaded.
	ErrNotFound = errors.New("module not loaded")
	// ErrBusy: another load or rollback of the same module is under way.
	ErrBusy = errors.New("another load or rollback of this module is in progress")
	// ErrNoPrevious: rollback was asked for but no previous version is kept.
	ErrNoPrevious = errors.New("no previous version to roll back to")
	// ErrClosed: the registry is closed.
	ErrClosed = errors.New("registry closed")

	// ErrRejected: a version failed a check before activation and never
	// served. The *LoadError that carries it names the check.
	ErrRejected = errors.New("version rejected")
	// ErrABIMismatch: the module speaks an ABI major this host does not.
	ErrABIMismatch = errors.New("unsupported ABI version")
	// ErrMissingExport: a required export or handler is absent or has the
	// wrong signature.
	ErrMissingExport = errors.New("missing or mistyped export")
	// ErrCapabilityDenied: the module imports a host function that was not
	// granted to it.
	ErrCapabilityDenied = errors.New("capability not granted")
	// ErrInitFailed: the module's initialization failed.
	ErrInitFailed = errors.New("initialization failed")
	// ErrSelfTestFailed: the module's self-test reported an error.
	ErrSelfTestFailed = errors.New("self-test failed")
	// ErrMigrateFailed: the module's migrate hook reported an error.
	ErrMigrateFailed = errors.New("migrate hook failed")
	// ErrInvalidModule: the artifact is not a valid module for the backend.
	ErrInvalidModule = errors.New("invalid module")

	// ErrNoHandler: the active version has no handler of that name.
	ErrNoHandler = errors.New("no such handler")
	// ErrGuest: the handler returned an error; the instance is fine.
	ErrGuest = errors.New("handler returned an error")
	// ErrTrapped: the guest trapped, panicked or exited; its instance was
	// discarded and the version keeps serving.
	ErrTrapped = errors.New("guest trapped")
	// ErrTimeout: the guest ran past its deadline and was stopped.
	ErrTimeout = errors.New("guest ran past its deadline")
	// ErrMemoryLimit: the guest needed more memory than its limit.
	ErrMemoryLimit = errors.New("guest memory limit exceeded")
	// ErrTooLarge: a call's input or output exceeded the configured limit.
	ErrTooLarge = errors.New("input or output exceeds the size limit")
	// ErrDrained: the call was still running on a retired version when the
	// drain deadline passed, so its instance was closed under it.
	ErrDrained = errors.New("version retired before the call finished")
	// ErrStackOverflow: the guest's call stack passed its bound (deep or
	// unbounded recursion); its instance was discarded and the version
	// keeps serving.
	ErrStackOverflow = errors.New("guest call stack exceeded its bound")
	// ErrLimitExceeded: the module declares more of something (functions,
	// table entries, memory pages, bytes, …) than the backend's limits
	// allow. The *LoadError that carries it names what.
	ErrLimitExceeded = errors.New("module exceeds a limit")
)

// LoadError reports why a version was refused. The version never served a
// call; the version that was active before keeps serving.
type LoadError struct {
	Module  string
	Version string
	// Check names the step that failed: "limits", "validate", "exports",
	// "capabilities", "compile", "init", "abi", "selftest", "prewarm",
	// "migrate", …
	Check string
	Err   error
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("load %s@%s: %s check failed: %v", e.Module, e.Version, e.Check, e.Err)
}

func (e *LoadError) Unwrap() error { return e.Err }

// Is makes every LoadError match ErrRejected.
func (e *LoadError) Is(target error) bool { return target == ErrRejected }

// CallError reports a failed call. Kind is one of the call sentinels
// (ErrGuest, ErrTrapped, ErrTimeout, …) and matches with errors.Is.
type CallError struct {
	Module  string
	Version string
	Handler string
	Kind    error
	// Detail is the guest's error text, or for a trap the tail of the
	// guest's stderr and the runtime's message.
	Detail string
}

func (e *CallError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("call %s@%s %s: %v", e.Module, e.Version, e.Handler, e.Kind)
	}
	return fmt.Sprintf("call %s@%s %s: %v: %s", e.Module, e.Version, e.Handler, e.Kind, e.Detail)
}

func (e *CallError) Unwrap() error { return e.Kind }

// Fail builds the error a Code returns for a failed call: kind is one of the
// call sentinels, detail the diagnostics. The registry fills in the module,
// version and handler.
func Fail(kind error, detail string) error { return &CallError{Kind: kind, Detail: detail} }

// Reject builds the error a Backend returns when a check fails during
// Prepare. The registry fills in the module and version.
func Reject(check string, err error) error { return &LoadError{Check: check, Err: err} }

// BusyError reports a change refused because the module is being changed
// already; Canary names the version under canary when a canary is what
// holds the module. It matches ErrBusy.
type BusyError struct {
	// Op is the change refused, e.g. "load pricing@v3", "rollback pricing".
	Op     string
	Module string
	// Canary is the version under canary, "" when another load or rollback
	// holds the module.
	Canary string
}

func (e *BusyError) Error() string {
	if e.Canary == "" {
		return e.Op + ": " + ErrBusy.Error()
	}
	return fmt.Sprintf("%s: %s@%s is under canary (promote or abort it first)", e.Op, e.Module, e.Canary)
}

// Is makes every BusyError match ErrBusy.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }
