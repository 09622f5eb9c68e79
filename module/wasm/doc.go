// Package wasm is the module.Backend that runs WebAssembly modules written
// with the guest SDK, on wazero.
//
// Preparing a version checks it, compiles it (from a file-backed
// compilation cache when it was compiled before, so a restart or a swap
// back loads in milliseconds), validates it and pre-warms instances, all
// before it may serve. Before anything compiles it, in milliseconds and
// memory bounded by its size:
//
//   - it is a well-formed module within Limits, its declared memory within
//     MemoryLimit and its tables within MaxTableEntries;
//   - the guest ABI's exports exist with the right types, and the module is
//     a reactor (built with -buildmode=c-shared);
//   - it imports only host functions it was granted (ModuleConfig.Grants).
//
// Then, each step under InitTimeout:
//
//   - it initializes (its start function included) within its limits;
//   - it speaks ABI major ABIMajor and registers RequiredHandlers;
//   - its self-test passes; later its migrate hook, once, at activation.
//
// A version refused after it compiled leaves nothing in the compilation
// cache. The cache directory must belong to the process's user and be
// writable by no one else: the code in it runs unchecked.
//
// # Containment
//
// Every module is rewritten before it compiles: fuel is charged at every
// loop head and function entry, and when it runs out the guest leaves its
// machine code for Go (where the goroutine can be preempted, so the garbage
// collector never waits on a guest) and reads a stop flag; the flag is also
// read after every host call. The host sets the flag to stop a call that
// ran past CallTimeout, whose caller gave up, or whose version closed under
// it; initialization, self-test, migrate and garbage-collection yields stop
// at InitTimeout. Each call's stack is bounded (MaxStack, failing with
// module.ErrStackOverflow), and so are its memory (MemoryLimit,
// module.ErrMemoryLimit) and tables (MaxTableEntries). Failures are
// classified from what the host and the rewritten code record, never from
// what the guest printed, which is only shown. Guest logging is
// rate-limited. See docs/security.md for what a module can and cannot do
// to the process, with measurements.
//
// # Calls
//
// A wazero instance runs one call at a time, so each version keeps a pool of
// instances, created in the background and never on a caller's stack. A call
// copies its input into the guest's exchange buffer and makes one call into
// the guest. A trap, a timeout or a memory blow-up fails that call alone:
// the instance is discarded and replaced, and the version keeps serving. A
// handler's own error (module.ErrGuest) leaves the instance in service.
//
// Go guests only collect garbage when they yield; the pool lets an instance
// yield between calls, off the request path, when its memory grew or every
// MaintainEvery calls.
//
// # Capabilities
//
// A module gets logging, and WASI without files, network, environment or
// arguments. CapKV grants the module's host-kept key/value state, CapClock
// the real clocks and sleeping, CapRandom a cryptographic random source.
//
// A Backend and the Code it prepares are safe for concurrent use.
package wasm
