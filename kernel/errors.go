package kernel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hotswapgo/hotswap/module"
)

// Conditions shared with the module level: errors.Is gives the same answer
// whichever level refused.
var (
	// ErrBusy: another load or rollback of the same slot is under way.
	ErrBusy = module.ErrBusy
	// ErrNoPrevious: rollback was asked for but no previous version is kept.
	ErrNoPrevious = module.ErrNoPrevious
	// ErrClosed: the slot is closed.
	ErrClosed = module.ErrClosed
)

// Conditions of the kernel level. A *LoadError matches the one for its
// Check; a *HealthError matches ErrUnhealthy.
var (
	// ErrMalformedObject: the payload is not an eBPF ELF object that can be
	// read.
	ErrMalformedObject = errors.New("not a readable eBPF object")
	// ErrMissingProgram: the object has no program of the slot's name.
	ErrMissingProgram = errors.New("program missing from the object")
	// ErrWrongType: the program's type or attach type is not the slot's.
	ErrWrongType = errors.New("wrong program type or attach type")
	// ErrMissingMap: the object lacks a map that the serving version keeps
	// state in.
	ErrMissingMap = errors.New("map missing from the object")
	// ErrIncompatibleMap: a map the serving version keeps state in is
	// declared with another type, key or value size, size or flags.
	ErrIncompatibleMap = errors.New("map schema differs from the serving version's")
	// ErrVerifierRejected: the kernel's verifier refused the program.
	ErrVerifierRejected = errors.New("kernel verifier rejected the program")
	// ErrUnhealthy: the health check failed after a swap, and the slot went
	// back to the version it replaced.
	ErrUnhealthy = errors.New("health check failed after the swap")
)

// Check names one step of preparing a version.
type Check string

// The checks a load runs after the artifact was verified, in order.
const (
	CheckObject   Check = "object"   // read the ELF object: ErrMalformedObject
	CheckProgram  Check = "program"  // the slot's program is present: ErrMissingProgram
	CheckType     Check = "type"     // its program and attach type: ErrWrongType
	CheckMaps     Check = "maps"     // the serving version's maps: ErrMissingMap, ErrIncompatibleMap
	CheckVerifier Check = "verifier" // the kernel's verifier accepts the program: ErrVerifierRejected
	CheckLoad     Check = "load"     // create the maps and load the program (other kernel errors)
	CheckAttach   Check = "attach"   // attach or update the link
)

// LoadError is returned when a version is refused after its artifact was
// verified. It names the artifact, the slot and the failed check; the
// version that was serving keeps serving. errors.Is matches it against the
// sentinel of its check and anything Err wraps.
type LoadError struct {
	Artifact string // what the caller called the artifact (its file name)
	Slot     string // the slot's name
	Check    Check  // the check that failed
	Err      error  // what was wrong
	// VerifierLog is the tail of the verifier's log, for CheckVerifier.
	VerifierLog []string
}

func (e *LoadError) Error() string {
	msg := fmt.Sprintf("eBPF object %s refused for %s: %s check failed: %v", e.Artifact, e.Slot, e.Check, e.Err)
	if len(e.VerifierLog) > 0 {
		msg += "\nverifier log (tail):\n\t" + strings.Join(e.VerifierLog, "\n\t")
	}
	return msg
}

func (e *LoadError) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel of e's check.
func (e *LoadError) Is(target error) bool {
	switch e.Check {
	case CheckObject:
		return target == ErrMalformedObject
	case CheckProgram:
		return target == ErrMissingProgram
	case CheckType:
		return target == ErrWrongType
	case CheckVerifier:
		return target == ErrVerifierRejected
	}
	// CheckMaps has two causes; Err wraps the sentinel.
	return false
}

// MapSchemaError says how a map of a new version differs from the one the
// serving version keeps state in. It matches ErrIncompatibleMap.
type MapSchemaError struct {
	Map      string // the map's name
	Field    string // "type", "key_size", "value_size", "max_entries" or "flags"
	Old, New string // the field's value in the serving version and in the new one
}

func (e *MapSchemaError) Error() string {
	return fmt.Sprintf("map %s: %s is %s in the serving version, %s in the new one", e.Map, e.Field, e.Old, e.New)
}

func (e *MapSchemaError) Is(target error) bool { return target == ErrIncompatibleMap }

// HealthError is returned when the health check failed after a swap; the
// slot rolled back to the version it replaced. It matches ErrUnhealthy.
type HealthError struct {
	Slot        string
	Version     string // the version that failed the check
	Err         error  // the check's verdict
	RollbackErr error  // non-nil if going back failed too: then Version still serves
}

func (e *HealthError) Error() string {
	msg := fmt.Sprintf("%s %s failed its health check: %v", e.Slot, e.Version, e.Err)
	if e.RollbackErr != nil {
		return msg + "; rolling back failed, it still serves: " + e.RollbackErr.Error()
	}
	return msg + "; rolled back to the version it replaced"
}

func (e *HealthError) Unwrap() []error { return []error{e.Err, e.RollbackErr} }

func (e *HealthError) Is(target error) bool { return target == ErrUnhealthy }
