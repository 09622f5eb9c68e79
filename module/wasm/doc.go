// Package wasm is the module.Backend that runs WebAssembly modules written
// with the guest SDK, on wazero.
//
// Preparing a version compiles it (from a file-backed compilation cache when
// it was compiled before, so a restart or a swap back loads in
// milliseconds), validates it and pre-warms instances, all before it may
// serve:
//
//   - the guest ABI's exports exist with the right types, and the module is
//     a reactor (built with -buildmode=c-shared);
//   - it imports only host functions it was granted (ModuleConfig.Grants);
//   - it initializes within InitTimeout and its memory limit;
//   - it speaks ABI major ABIMajor and registers RequiredHandlers;
//   - its self-test passes; later its migrate hook, once, at activation.
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
// Untrusted modules (the default) run with runaway protection: a watchdog
// stops calls that run past CallTimeout, and cancelling a call's context
// stops it. Trusted modules (ModuleConfig.Trusted) run without it and are
// slightly cheaper per call; see the field's doc for what that gives up.
//
// Go guests only collect garbage when they yield; the pool lets an instance
// yield between calls, off the request path, when its memory grew or every
// MaintainEvery calls.
//
// # Capabilities
//
// A module gets logging, and WASI without files, network, environment or
// arguments. CapKV grants the module's host-kept key/value state, CapClock
// the real clocks, CapRandom a cryptographic random source.
//
// A Backend and the Code it prepares are safe for concurrent use.
package wasm
