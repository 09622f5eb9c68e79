// Package guard stands between a WebAssembly binary and wazero. Parse
// checks the binary before wazero decodes it; Instrument rewrites a checked
// module so that the host can stop it and so that its stack and tables stay
// within bounds.
//
// # Checking
//
// wazero sizes its decoded module from the counts a binary declares before
// it reads the entries: a 40-byte module declaring 2³²−1 element segments
// makes it allocate gigabytes. Parse reads every section in bounded memory,
// checks every count against the bytes present (each entry takes at least
// one byte) and against Limits, and every index into a space the
// instrumenter extends, so that the rewrite cannot turn an invalid module
// into a valid one. It decodes every instruction and refuses the ones it
// does not know (threads, tail calls, exceptions, GC) rather than guess
// their length. Typing is left to wazero's compiler.
//
// # Instrumenting
//
// Machine code compiled by wazero cannot be preempted by the Go scheduler:
// a guest that never leaves it holds up every stop-the-world phase of the
// Go garbage collector, and with it the whole process. A guest can only run
// long through a loop or through calls (recursion, or a chain of functions
// each calling the next twice), so the instrumented module charges fuel at
// every loop head and at the entry of every function that calls another
// (or is larger than a small leaf), by weight: about the instructions the
// loop body or function runs before the next check. When FuelPerYield is
// spent it calls an added function, yield, which refills the fuel, runs
// memory.grow 0 (which wazero executes in Go: a point where the goroutine
// can be preempted), and traps with unreachable if the stop flag is set.
// Instructions whose time grows with an operand (memory.fill, memory.copy,
// memory.init) are charged by their byte count before they run.
//
// The functions that call others add their weight (at least 64, counting
// 8 per parameter and local: about their frame's bytes) to a depth global
// on entry and take it back on exit (the body is wrapped in a block typed
// with the function's results, and return becomes a branch to it), and
// yield traps when the depth passed Config.MaxStack, setting SignalStack
// first. The weighted depth bounds both the stack and the work pending on
// it, which runs unchecked as the stack unwinds. The stop flag is also
// read after every call to an imported function, which may block without
// spending fuel.
//
// memory.grow becomes a call to an added function that sets SignalMemory
// when the grow is refused, and table.grow one that refuses growth past
// Config.MaxTableEntries (setting SignalTable) and counts what was added.
// A start section is removed and its function exported as StartExport: the
// host calls it after instantiation, under a deadline.
//
// The instrumented module differs from its input only there: types,
// functions, five globals and the exports are appended (no index shifts), a
// memory of zero pages is added to a module without one, and the code
// section is rewritten.
package guard
