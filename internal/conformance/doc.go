// Package conformance holds the guest ABI conformance suite (see
// docs/abi.md): one table of behaviours run against the same module written
// with each guest SDK — Go (package guest), Rust (guest/rust) and C
// (guest/c). The guests live in guests/; each answers the same handlers:
//
//	echo     the input
//	fail     a handler error: "refused: " + input
//	trap     traps, printing "panic: trapped: " + input to stderr
//	loop     a loop that never ends
//	spin     a recursion that never loops and about never ends
//	recurse  recurses as deep as the decimal input says; answers the depth
//	grow     allocates until the memory limit stops it
//	count    adds 1 to the host-kept counter "count"; answers the sum
//	put      input key=value: stores value under key
//	get      the value under the input key; error "missing: " + key
//	del      deletes the input key
//	log      logs the input at level info
//
// Each guest's migrate hook stores the version it replaces under
// "migrated", and its self-test fails with "self-test: answers are wrong"
// while the key "selftest" holds "fail": one build per language serves
// every case, so each compiles once per test process.
//
// The suite needs clang and lld for the C guest and Debian's rustc with
// libstd-rust-dev-wasm32 for the Rust one; without them those languages
// are skipped, unless HOTSWAP_REQUIRE_GUEST_TOOLCHAINS is set (as in CI),
// which makes a missing toolchain a failure.
package conformance
