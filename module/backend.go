package module

import (
	"context"
	"time"
)

// A Backend turns artifacts into runnable Code. module/wasm is the main
// implementation. The registry owns its backend: Registry.Close closes it.
//
// Implementations must be safe for concurrent use; the registry never runs
// two Prepare calls for the same module at once.
type Backend interface {
	// Prepare compiles, validates and pre-warms one version. It must return
	// a *LoadError (see Reject) naming the failed check for any artifact
	// that must not serve, and it must not return Code that failed a check.
	// Cancelling ctx aborts the preparation.
	Prepare(ctx context.Context, spec Spec) (Code, error)
	// Close releases what the backend holds once every Code it returned
	// is closed.
	Close(ctx context.Context) error
}

// Spec describes the version a Backend prepares.
type Spec struct {
	Module  string
	Version string
	// Artifact is the payload, already verified by the caller.
	Artifact []byte
	// Digest is the artifact's hex sha256: a backend may reuse what it
	// prepared from the same bytes before.
	Digest string
	// State is the module's host-kept state, shared by all its versions.
	State *KV
	// Warm is the most calls the active version has run at once; a backend
	// that pools instances pre-warms at least this many so the switch does
	// not slow calls down.
	Warm int
}

// Code is one prepared version. It is safe for concurrent use.
type Code interface {
	// AppendCall runs handler with in and appends its output to dst.
	// Errors are *CallError values built with Fail.
	AppendCall(ctx context.Context, dst []byte, handler string, in []byte) ([]byte, error)
	// Migrate runs the version's migrate hook once, before it serves,
	// with the version it replaces ("" for the first).
	Migrate(ctx context.Context, from string) error
	// Stats reports the version's resources.
	Stats() CodeStats
	// Close releases the version. The registry calls it once, after the
	// version drained or its drain deadline passed; calls still running
	// then must fail with ErrDrained.
	Close(ctx context.Context) error
}

// CodeStats is what a Code reports about itself.
type CodeStats struct {
	Instances     int    // live instances, busy or idle
	IdleInstances int    // instances ready for a call
	MemoryBytes   uint64 // guest linear memory over all instances
	Calls         uint64 // calls completed, successfully or not; Module.Samples and canaries count calls here
	Failures      uint64 // calls that returned an error
	Discarded     uint64 // instances thrown away after a trap, timeout or memory blow-up
	PrepareTime   time.Duration
	// TableEntries is the entries of the guest tables over all instances
	// (8 bytes each), outside MemoryBytes.
	TableEntries uint64
	// DroppedLogLines counts guest log lines dropped by a rate limit.
	DroppedLogLines uint64
}

// A Retainer is a Backend whose code outlives its versions: Go plugins
// stay mapped until the process exits (golang/go#20461). It reports what it
// holds, so a host can show it without depending on the backend's package.
type Retainer interface {
	Retained() Retained
}

// Retained describes the code a Retainer holds.
type Retained struct {
	// Versions lists the code held, in the order it was loaded.
	Versions []RetainedVersion `json:"versions"`
	// Max is how many the backend may hold before it refuses loads.
	Max int `json:"max"`
	// MappedBytes is the sum over Versions.
	MappedBytes uint64 `json:"mapped_bytes"`
}

// RetainedVersion is one piece of code a Retainer holds.
type RetainedVersion struct {
	Module string `json:"module"`
	// Version is the first version loaded from this code.
	Version string `json:"version"`
	Digest  string `json:"digest"`
	// MappedBytes is the size of the code's file mappings.
	MappedBytes uint64 `json:"mapped_bytes"`
	// InUse reports whether a loaded version (active, previous, canary or
	// draining) still runs this code; code not in use takes no calls.
	InUse    bool      `json:"in_use"`
	LoadedAt time.Time `json:"loaded_at"`
	// Failed is why the code was loaded but cannot serve; empty if it can.
	Failed string `json:"failed,omitempty"`
}
