// Package module keeps named modules whose code can be replaced while they
// serve, following Erlang's rules for hot code loading:
//
//   - every new call goes to the module's active version;
//   - a call keeps the version it started on for its whole duration: a swap
//     never changes the code under a running call;
//   - at most two versions serve: the active one and the previous one, kept
//     warm so that Rollback is a pointer swap; loading a third retires the
//     oldest, which drains (its running calls finish) and then closes;
//   - a retired version closes when no call holds it or when the drain
//     deadline passes; calls it stops then fail with ErrDrained and are
//     counted, never silently dropped;
//   - one change per module at a time: Prepare (or PrepareRollback) holds the
//     module's change slot until Activate or Discard, and another change
//     gets ErrBusy;
//   - a version that fails any check is refused with a *LoadError naming
//     the check, never serves a call, and the active version never notices;
//   - state that must survive swaps lives in the module's KV, owned by the
//     registry rather than by any version, and a migrate hook runs once when
//     a version activates;
//   - a prepared version may first serve a share of the calls beside the
//     active one as a canary (Prepared.Canary), sticky per routing key
//     (Module.CallKey), and is then promoted (activated) or aborted; package
//     canary decides which from the per-version counters (Module.Samples).
//
// A change has two phases. Prepare compiles, validates and pre-warms a
// version without touching anything a call sees; the caller then records
// the change (an audit log) and calls Activate, which runs the migrate hook
// and switches, or Discard. Load and Rollback do both phases at once.
//
// The registry is independent of how code runs: a Backend prepares Code
// (module/wasm runs WebAssembly on wazero). For the trust path in front of
// it — signed artifacts, the local store, the audit log — see package host.
//
// The call path takes no lock: an atomic load of the canary route (nil
// without a canary), an atomic load of the active version and two atomic
// adds on its reference count, plus what the backend does.
package module
