// Package guest is the SDK for writing hotswap modules in standard Go.
//
// A module is a Go main package compiled to WebAssembly as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o pricing.wasm ./pricing
//
// It registers its handlers from init functions (main is never called in a
// reactor, but the package must still declare an empty func main):
//
//	func init() {
//		guest.Handle("echo", func(in []byte) ([]byte, error) { return in, nil })
//		guest.HandleJSON("quote", quote)
//		guest.SelfTest(func() error { ... })
//	}
//
//	func main() {}
//
// # Calls
//
// The host copies a call's input into an exchange buffer the guest owns and
// makes exactly one call into the guest per request; the guest answers with
// the location of its output, which the host copies out. A handler's input is
// only valid during the call. A handler may return its input, a slice of it,
// or any other slice; the SDK keeps that slice alive until the next call.
//
// A handler that returns an error fails that call only; the caller sees the
// error text. A handler that panics crashes its instance: the host discards
// that instance, fails the call with a trap error carrying the panic message,
// and serves the next call from another instance. Do not recover panics to
// hide bugs; instances are scratch and cheap to replace.
//
// # State
//
// Guest memory is scratch: the host may discard an instance at any time
// (after a trap, a timeout, a memory blow-up, or when a version is swapped
// out). State that must survive lives in the host's key/value store for the
// module (KVGet, KVSet, KVAdd, KVDelete), which needs the "kv" capability.
// A Migrate hook runs once when a new version activates, before it serves.
//
// # Garbage collection
//
// Go's garbage collector only makes progress when the guest yields, and an
// export that returns without yielding never does. Yielding inside every
// call costs more than the call itself, so the SDK never does; instead the
// host calls a maintenance export between calls, off the request path,
// whenever an instance's memory grew or after a number of calls.
//
// Outside GOOS=wasip1 the package compiles to an in-process implementation
// so module code can be unit tested with plain go test (see Invoke).
package guest
