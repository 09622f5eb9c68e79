package wasm

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Defaults for ModuleConfig fields.
const (
	DefaultMemoryLimit   = 256 << 20 // bytes of linear memory per instance
	DefaultCallTimeout   = time.Second
	DefaultInitTimeout   = 10 * time.Second
	DefaultMaxInput      = 16 << 20
	DefaultMaxOutput     = 16 << 20
	DefaultMaintainEvery = 100
)

// Capability is a group of host functions a module may be granted.
type Capability string

// Capabilities. Logging is always granted; nothing grants files, network,
// environment variables or arguments.
const (
	// CapKV grants the module's host-kept key/value state.
	CapKV Capability = "kv"
	// CapClock grants the real wall and monotonic clocks. Without it a guest
	// sees a fixed wall time and a synthetic monotonic clock.
	CapClock Capability = "clock"
	// CapRandom grants a cryptographic random source. Without it a guest's
	// random bytes are deterministic.
	CapRandom Capability = "random"
)

// Options configures a Backend. The zero value of every field means its
// default.
type Options struct {
	// CacheDir holds compiled code so that a module compiled once loads in
	// milliseconds, across restarts too. Defaults to DefaultCacheDir().
	CacheDir string
	// Logger receives guest log lines and backend events. Defaults to
	// discarding.
	Logger *slog.Logger
	// Default applies to modules not listed in Modules.
	Default ModuleConfig
	// Modules configures named modules.
	Modules map[string]ModuleConfig
}

// ModuleConfig configures every version of one module. The zero value of
// every field means its default.
type ModuleConfig struct {
	// Trusted turns runaway protection off. Untrusted modules are rewritten
	// at load to check a stop flag in their loops (a few nanoseconds per
	// call of a typical handler) and must use only instructions the
	// rewriter knows: WebAssembly 1.0, sign extension, saturating
	// conversions, bulk memory, reference types and SIMD (what Go and most
	// compilers emit; threads, tail calls and exceptions are refused at
	// load). A trusted module runs as compiled, but CallTimeout is not
	// enforced, a call's context is only checked before the call starts,
	// and a call still running at its version's drain deadline finishes
	// instead of failing with ErrDrained; so a guest stuck in a loop holds
	// its caller forever, and, since wazero's machine code cannot be
	// preempted, stalls the Go garbage collector and with it the process.
	// Initialization, self-test and migrate are always protected. Defaults
	// to false.
	Trusted bool
	// Grants lists the capabilities the module may import beyond logging.
	// A module importing anything else is refused at load. Defaults to none.
	Grants []Capability
	// MemoryLimit caps each instance's linear memory, in bytes (rounded down
	// to 64 KiB pages). Defaults to DefaultMemoryLimit (256 MiB).
	MemoryLimit uint64
	// CallTimeout stops a call that runs longer, in untrusted mode, failing
	// it with module.ErrTimeout. Defaults to DefaultCallTimeout (1s).
	CallTimeout time.Duration
	// InitTimeout bounds initialization of an instance, the self-test and
	// the migrate hook. Defaults to DefaultInitTimeout (10s).
	InitTimeout time.Duration
	// MinInstances is how many instances a new version pre-warms before it
	// may serve (more if the version it replaces ran more calls at once).
	// Defaults to GOMAXPROCS.
	MinInstances int
	// MaxInstances caps the instances of one version, which is the number of
	// calls it runs at once; further calls wait. Defaults to 4*GOMAXPROCS.
	MaxInstances int
	// MaxInput and MaxOutput cap a call's input and output sizes. Default
	// to DefaultMaxInput and DefaultMaxOutput (16 MiB each).
	MaxInput, MaxOutput int
	// RequiredHandlers must all be registered by the module, or it is
	// refused at load. Defaults to none.
	RequiredHandlers []string
	// MaintainEvery is how many calls an instance serves between two
	// garbage-collection yields; an instance whose memory grew yields after
	// that call. Yields run off the request path. Defaults to
	// DefaultMaintainEvery (100).
	MaintainEvery int
}

func (c ModuleConfig) withDefaults() (ModuleConfig, error) {
	procs := runtime.GOMAXPROCS(0)
	c.MemoryLimit = def(c.MemoryLimit, DefaultMemoryLimit)
	c.CallTimeout = def(c.CallTimeout, DefaultCallTimeout)
	c.InitTimeout = def(c.InitTimeout, DefaultInitTimeout)
	c.MinInstances = def(c.MinInstances, procs)
	c.MaxInstances = def(c.MaxInstances, 4*procs)
	c.MaxInput = def(c.MaxInput, DefaultMaxInput)
	c.MaxOutput = def(c.MaxOutput, DefaultMaxOutput)
	c.MaintainEvery = def(c.MaintainEvery, DefaultMaintainEvery)
	switch {
	case c.MemoryLimit < 1<<16 || c.MemoryLimit > 1<<32:
		return c, fmt.Errorf("MemoryLimit %d is outside [64 KiB, 4 GiB]", c.MemoryLimit)
	case c.CallTimeout < 0 || c.InitTimeout < 0:
		return c, fmt.Errorf("negative timeout")
	case c.MinInstances < 0 || c.MaxInstances < 1:
		return c, fmt.Errorf("MinInstances %d / MaxInstances %d out of range", c.MinInstances, c.MaxInstances)
	case c.MinInstances > c.MaxInstances:
		return c, fmt.Errorf("MinInstances %d exceeds MaxInstances %d", c.MinInstances, c.MaxInstances)
	case c.MaxInput < 0 || c.MaxOutput < 0 || c.MaxOutput > lengthMask:
		return c, fmt.Errorf("MaxInput %d / MaxOutput %d out of range", c.MaxInput, c.MaxOutput)
	case c.MaintainEvery < 0:
		return c, fmt.Errorf("negative MaintainEvery")
	}
	for _, g := range c.Grants {
		switch g {
		case CapKV, CapClock, CapRandom:
		default:
			return c, fmt.Errorf("unknown capability %q", g)
		}
	}
	return c, nil
}

func (c ModuleConfig) granted(cap Capability) bool {
	for _, g := range c.Grants {
		if g == cap {
			return true
		}
	}
	return false
}

func def[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// DefaultCacheDir returns the compilation cache directory used when
// Options.CacheDir is empty: $XDG_CACHE_HOME/hotswap/wasm (or the
// platform's user cache directory), falling back to the temp directory.
func DefaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "hotswap", "wasm")
}
