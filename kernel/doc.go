// Package kernel is hotswap's kernel level: it replaces an eBPF program
// attached to a network interface while traffic flows, keeping the
// program's maps, and never leaves the interface without a program.
//
// A Slot is one attach point: a program name, tcx (ingress or egress) or
// XDP, an interface, optionally in another network namespace. Each Load
// takes an eBPF ELF object with its manifest along the same path as every
// other artifact:
//
//	audit "started" → verify (artifact.Verifier: manifest, ed25519
//	signature, kind "bpf", name, size, digest) → read the object, find the
//	program, check its type → check the serving version's maps are declared
//	the same → load into the kernel, reusing those maps → audit "ok" →
//	attach, or replace the program in the link → health check
//
// The first version is attached through a bpf_link. Every later one
// replaces the program in that link with one BPF_LINK_UPDATE, given the
// program it expects to replace (BPF_F_REPLACE): every packet runs exactly
// one of the two, none runs neither, and a link changed behind the slot's
// back makes the update fail instead of clobbering it. The replaced
// version stays loaded, so Rollback is one more link update. A Health check,
// if set, judges each new version; failing it rolls back automatically and
// the audit log records the verdict's numbers.
//
// Maps carry over by name: each map the serving version has (except the
// compiler's .rodata, .data and .bss sections, which belong to one build)
// must be declared in the new object with the same type, key size, value
// size, size and flags, and the new program is loaded with the live map in
// its place (cilium/ebpf's MapReplacements). A map missing or declared
// differently refuses the version (ErrMissingMap, *MapSchemaError): the
// package never converts state.
//
// Anything refused before the switch leaves the serving version serving,
// and the error names the artifact and the check: *artifact.VerifyError for
// the artifact checks, *LoadError for the rest (with the tail of the
// verifier's log when the kernel refused the program).
//
// What the package does not do: swap a set of tail-called programs at once
// (a prog array is updated slot by slot), replace programs attached without
// a link (kprobes through perf events, tracing programs the kernel cannot
// update in place), or change a map's schema. See docs/ebpf.md.
//
// It needs Linux 6.6 or later for tcx (5.9 for XDP links), CAP_BPF and
// CAP_NET_ADMIN.
package kernel
