package wasm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Defaults for ModuleConfig fields.
const (
	DefaultMemoryLimit     = 256 << 20 // bytes of linear memory per instance
	DefaultMaxTableEntries = 1 << 20   // table entries per instance
	DefaultMaxStack        = 1 << 23   // weight of a call's stack, see ModuleConfig.MaxStack
	DefaultCallTimeout     = time.Second
	DefaultInitTimeout     = 10 * time.Second
	DefaultMaxInput        = 16 << 20
	DefaultMaxOutput       = 16 << 20
	DefaultMaintainEvery   = 100
	DefaultLogLimit        = 1000 // guest log lines per second
)

// NoCallTimeout, as ModuleConfig.CallTimeout, runs calls without a
// deadline. They still stop when their caller's context ends, when their
// version is closed under them, and for the garbage collector.
const NoCallTimeout time.Duration = -1

// Defaults for Limits fields, with ample room for Go guests: a trivial Go
// guest is ~2.7 MB with ~1,850 functions, ~32,000 data segments, 1 element
// segment, one table of ~6,000 entries, at most 20 locals and 550 nested
// blocks in a function and a largest body of ~29 KB.
const (
	DefaultMaxModuleBytes     = 32 << 20
	DefaultMaxFunctions       = 100_000
	DefaultMaxTypes           = 10_000
	DefaultMaxParams          = 1_000
	DefaultMaxImports         = 1_000
	DefaultMaxExports         = 10_000
	DefaultMaxGlobals         = 10_000
	DefaultMaxTables          = 100
	DefaultMaxDataSegments    = 1_000_000
	DefaultMaxElementSegments = 10_000
	DefaultMaxLocals          = 10_000
	DefaultMaxBodyBytes       = 256 << 10
	DefaultMaxNesting         = 8_192
)

// Capability is a group of host functions a module may be granted.
type Capability string

// Capabilities. Logging is always granted; nothing grants files, network,
// environment variables or arguments.
const (
	// CapKV grants the module's host-kept key/value state.
	CapKV Capability = "kv"
	// CapClock grants the real wall and monotonic clocks, and sleeping.
	// Without it a guest sees a fixed wall time and a synthetic monotonic
	// clock, and its sleeps return at once. A sleep returns at least every
	// 10ms, so that a call asleep can be stopped; Go guests sleep again.
	CapClock Capability = "clock"
	// CapRandom grants a cryptographic random source. Without it a guest's
	// random bytes are deterministic.
	CapRandom Capability = "random"
)

// Options configures a Backend. The zero value of every field means its
// default.
type Options struct {
	// CacheDir holds compiled code so that a module compiled once loads in
	// milliseconds, across restarts too. The code in it is run without any
	// further check, so it must be a directory of the effective user that
	// its group and others cannot write (New refuses it otherwise); put it
	// in the service's state directory. Defaults to DefaultCacheDir().
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
//
// Every module is rewritten at load (see the package documentation) so
// that its calls can be stopped, its stack and tables are bounded and the
// Go garbage collector can stop it; a module using instructions the
// rewriter does not know (threads, tail calls, exceptions, GC types) is
// refused.
type ModuleConfig struct {
	// Grants lists the capabilities the module may import beyond logging.
	// A module importing anything else is refused at load. Defaults to none.
	Grants []Capability
	// MemoryLimit caps each instance's linear memory, in bytes (rounded down
	// to 64 KiB pages); a module declaring more is refused at load, and a
	// call that needs more fails with module.ErrMemoryLimit. Defaults to
	// DefaultMemoryLimit (256 MiB).
	MemoryLimit uint64
	// MaxTableEntries caps the entries of each instance's tables (8 bytes
	// each): a module declaring more is refused at load, and table.grow
	// past it fails. Defaults to DefaultMaxTableEntries (1,048,576).
	MaxTableEntries uint32
	// MaxStack bounds the stack of a call, as the sum over the functions on
	// it of each one's weight: its instructions plus 8 per parameter and
	// local, at least 64, which is about the bytes its frame takes. A call
	// past it fails with module.ErrStackOverflow; the bound is checked as
	// the call's fuel runs out, so a stack may pass it by up to 2^20 before.
	// The default lets a Go guest's function of typical size recurse 30,000
	// deep and keeps wazero's stack for a call to about 8 MiB. At most 1<<30.
	// Defaults to DefaultMaxStack (8,388,608).
	MaxStack uint32
	// CallTimeout stops a call that runs longer, failing it with
	// module.ErrTimeout; NoCallTimeout turns the deadline off. Defaults to
	// DefaultCallTimeout (1s).
	CallTimeout time.Duration
	// InitTimeout bounds initialization of an instance (its start function
	// included), the self-test, the migrate hook and each garbage
	// collection yield. Defaults to DefaultInitTimeout (10s).
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
	// LogLimit is how many lines per second the module's guests may log
	// (with bursts of as many); further lines are dropped and counted in
	// module.CodeStats.DroppedLogLines. Defaults to DefaultLogLimit (1000).
	LogLimit int
	// Limits bounds the structure of the module's binary, checked before
	// it is compiled. Each zero field defaults.
	Limits Limits
}

// Limits bounds the structure of a module's binary: what wazero would
// otherwise allocate, or spend time on, when it compiles or instantiates
// the module. A module past any of them is refused at load in
// milliseconds, before it is compiled, with a *module.LoadError of check
// "limits" matching module.ErrLimitExceeded. The zero value of every field
// means its default.
type Limits struct {
	// ModuleBytes caps the size of the binary. Defaults to
	// DefaultMaxModuleBytes (32 MiB).
	ModuleBytes int
	// Functions caps imported and defined functions. Defaults to
	// DefaultMaxFunctions (100,000).
	Functions int
	// Types caps function types. Defaults to DefaultMaxTypes (10,000).
	Types int
	// Params caps the parameters, and the results, of one function type.
	// Defaults to DefaultMaxParams (1,000).
	Params int
	// Imports caps imports. Defaults to DefaultMaxImports (1,000).
	Imports int
	// Exports caps exports. Defaults to DefaultMaxExports (10,000).
	Exports int
	// Globals caps imported and defined globals. Defaults to
	// DefaultMaxGlobals (10,000).
	Globals int
	// Tables caps tables. Defaults to DefaultMaxTables (100).
	Tables int
	// DataSegments caps data segments. Defaults to DefaultMaxDataSegments
	// (1,000,000).
	DataSegments int
	// ElementSegments caps element segments. Defaults to
	// DefaultMaxElementSegments (10,000).
	ElementSegments int
	// Locals caps the locals of one function. Defaults to DefaultMaxLocals
	// (10,000).
	Locals int
	// BodyBytes caps the size of one function's code. Defaults to
	// DefaultMaxBodyBytes (256 KiB).
	BodyBytes int
	// Nesting caps the blocks, loops and ifs open at once in a function.
	// Defaults to DefaultMaxNesting (8,192).
	Nesting int
}

func (l Limits) withDefaults() (Limits, error) {
	l.ModuleBytes = def(l.ModuleBytes, DefaultMaxModuleBytes)
	l.Functions = def(l.Functions, DefaultMaxFunctions)
	l.Types = def(l.Types, DefaultMaxTypes)
	l.Params = def(l.Params, DefaultMaxParams)
	l.Imports = def(l.Imports, DefaultMaxImports)
	l.Exports = def(l.Exports, DefaultMaxExports)
	l.Globals = def(l.Globals, DefaultMaxGlobals)
	l.Tables = def(l.Tables, DefaultMaxTables)
	l.DataSegments = def(l.DataSegments, DefaultMaxDataSegments)
	l.ElementSegments = def(l.ElementSegments, DefaultMaxElementSegments)
	l.Locals = def(l.Locals, DefaultMaxLocals)
	l.BodyBytes = def(l.BodyBytes, DefaultMaxBodyBytes)
	l.Nesting = def(l.Nesting, DefaultMaxNesting)
	for _, v := range []int{l.ModuleBytes, l.Functions, l.Types, l.Params, l.Imports, l.Exports, l.Globals, l.Tables,
		l.DataSegments, l.ElementSegments, l.Locals, l.BodyBytes, l.Nesting} {
		if v < 0 {
			return l, fmt.Errorf("negative limit in %+v", l)
		}
	}
	return l, nil
}

func (c ModuleConfig) withDefaults() (ModuleConfig, error) {
	procs := runtime.GOMAXPROCS(0)
	c.MemoryLimit = def(c.MemoryLimit, DefaultMemoryLimit)
	c.MaxTableEntries = def(c.MaxTableEntries, DefaultMaxTableEntries)
	c.MaxStack = def(c.MaxStack, DefaultMaxStack)
	c.CallTimeout = def(c.CallTimeout, DefaultCallTimeout)
	c.InitTimeout = def(c.InitTimeout, DefaultInitTimeout)
	c.MinInstances = def(c.MinInstances, procs)
	c.MaxInstances = def(c.MaxInstances, 4*procs)
	c.MaxInput = def(c.MaxInput, DefaultMaxInput)
	c.MaxOutput = def(c.MaxOutput, DefaultMaxOutput)
	c.MaintainEvery = def(c.MaintainEvery, DefaultMaintainEvery)
	c.LogLimit = def(c.LogLimit, DefaultLogLimit)
	var err error
	if c.Limits, err = c.Limits.withDefaults(); err != nil {
		return c, err
	}
	switch {
	case c.MemoryLimit < 1<<16 || c.MemoryLimit > 1<<32:
		return c, fmt.Errorf("MemoryLimit %d is outside [64 KiB, 4 GiB]", c.MemoryLimit)
	case c.MaxStack > 1<<30:
		return c, fmt.Errorf("MaxStack %d exceeds 1<<30", c.MaxStack)
	case c.MaxTableEntries > 1<<30:
		return c, fmt.Errorf("MaxTableEntries %d exceeds 1<<30", c.MaxTableEntries)
	case (c.CallTimeout < 0 && c.CallTimeout != NoCallTimeout) || c.InitTimeout < 0:
		return c, fmt.Errorf("negative timeout (use NoCallTimeout for calls without a deadline)")
	case c.MinInstances < 0 || c.MaxInstances < 1:
		return c, fmt.Errorf("MinInstances %d / MaxInstances %d out of range", c.MinInstances, c.MaxInstances)
	case c.MinInstances > c.MaxInstances:
		return c, fmt.Errorf("MinInstances %d exceeds MaxInstances %d", c.MinInstances, c.MaxInstances)
	case c.MaxInput < 0 || c.MaxOutput < 0 || c.MaxOutput > lengthMask:
		return c, fmt.Errorf("MaxInput %d / MaxOutput %d out of range", c.MaxInput, c.MaxOutput)
	case c.MaintainEvery < 0:
		return c, fmt.Errorf("negative MaintainEvery")
	case c.LogLimit < 0:
		return c, fmt.Errorf("negative LogLimit")
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
// Options.CacheDir is empty: hotswap/wasm in the user's cache directory
// ($XDG_CACHE_HOME, or ~/.cache on Linux). It fails when there is none
// rather than fall back to a shared temporary directory, where anyone could
// plant compiled code.
func DefaultCacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no user cache directory (%w); set Options.CacheDir", err)
	}
	if dir == "" {
		return "", errors.New("no user cache directory; set Options.CacheDir")
	}
	return filepath.Join(dir, "hotswap", "wasm"), nil
}
