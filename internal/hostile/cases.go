// Package hostile generates hostile WebAssembly modules, as bytes, for the
// tests that check a host contains them: decoder bombs, modules past every
// structural limit, modules that would fool the instrumentation, and
// modules speaking the guest ABI whose initialization, start function,
// self-test, migrate hook, yield or handlers run away, recurse without
// bound, exhaust memory or tables, flood the log or print misleading text.
// Each Case names what the host must answer.
package hostile

import (
	"encoding/binary"

	"github.com/hotswapgo/hotswap/module"
)

// Want is what a host must answer to a Case.
type Want struct {
	// Check is the check the *module.LoadError refusing the module names,
	// or "" when the module loads.
	Check string
	// Err is the sentinel the load fails with, or, for a module that
	// loads, the one calling Handler fails with (nil: the call succeeds).
	Err error
	// Handler is the handler to call once the module loads.
	Handler string
	// DropsLogs: the call logs far more lines than a rate limit allows; the
	// host must drop them and count them.
	DropsLogs bool
	// DiscardsOnYield: the module's garbage-collection yield runs away; the
	// host must discard the instance and keep serving.
	DiscardsOnYield bool
}

// Case is one hostile module.
type Case struct {
	Name  string
	What  string // what the module does
	Bytes []byte
	Want  Want
	// Grants lists the capabilities (as module/wasm names them) the module
	// must be granted to get as far as Want says.
	Grants []string
}

// The limits the cases exceed: above the module/wasm defaults.
const (
	overFunctions    = 100_001
	overNesting      = 10_000
	overBodyBytes    = 300 << 10
	overModuleBytes  = 33 << 20
	overTableEntries = 1 << 27 // 134,217,728 entries, 1 GiB of references
	overMemoryPages  = 65_536  // 4 GiB
)

// Cases returns every hostile module. Building them takes well under a
// second and about 40 MB.
func Cases() []Case {
	var cs []Case
	cs = append(cs, bombs()...)
	cs = append(cs, overLimits()...)
	cs = append(cs, tricks()...)
	cs = append(cs, loadTime()...)
	cs = append(cs, callTime()...)
	return cs
}

func validate(name, what string, b []byte) Case {
	return Case{Name: name, What: what, Bytes: b, Want: Want{Check: "validate", Err: module.ErrInvalidModule}}
}

func limit(name, what string, b []byte) Case {
	return Case{Name: name, What: what, Bytes: b, Want: Want{Check: "limits", Err: module.ErrLimitExceeded}}
}

const huge = 1<<32 - 1

// bombs are modules of a few bytes declaring 2³²−1 entries of some vector,
// which a decoder sizing its allocation from the count would allocate
// gigabytes for.
func bombs() []Case {
	h := Header()
	typ := Section(1, Vec([]byte{0x60, 0x00, 0x00}))
	fn := Section(3, Vec(U(0)))
	table := Section(4, Vec([]byte{FuncRef, 0x00, 0x01}))
	mem := Section(5, Vec([]byte{0x00, 0x01}))
	return []Case{
		validate("bomb-types", "type section declaring 2³²−1 types", cat(h, Section(1, U(huge)))),
		validate("bomb-params", "function type declaring 2³²−1 parameters", cat(h, Section(1, U(1), []byte{0x60}, U(huge)))),
		validate("bomb-imports", "import section declaring 2³²−1 imports", cat(h, Section(2, U(huge)))),
		validate("bomb-functions", "function section declaring 2³²−1 functions", cat(h, typ, Section(3, U(huge)))),
		validate("bomb-tables", "table section declaring 2³²−1 tables", cat(h, Section(4, U(huge)))),
		validate("bomb-globals", "global section declaring 2³²−1 globals", cat(h, Section(6, U(huge)))),
		validate("bomb-exports", "export section declaring 2³²−1 exports", cat(h, Section(7, U(huge)))),
		validate("bomb-elements", "element section declaring 2³²−1 segments (the 40-byte crash)",
			cat(h, typ, fn, table, Section(9, U(huge)))),
		validate("bomb-element-entries", "element segment declaring 2³²−1 function indices",
			cat(h, typ, fn, table, Section(9, U(1), []byte{0x00}, I32Const(0), []byte{End}, U(huge)))),
		validate("bomb-code", "code section declaring 2³²−1 bodies", cat(h, typ, fn, Section(10, U(huge)))),
		validate("bomb-local-groups", "function body declaring 2³²−1 groups of locals",
			cat(h, typ, fn, Section(10, U(1), U(6), U(huge), []byte{End}))),
		limit("bomb-locals", "function body declaring 2³²−1 locals in one group",
			cat(h, typ, fn, Section(10, U(1), U(8), U(1), U(huge), []byte{I32, End}))),
		validate("bomb-data", "data section declaring 2³²−1 segments (the 36-byte crash)", cat(h, mem, Section(11, U(huge)))),
		validate("bomb-data-bytes", "data segment declaring 2³²−1 bytes",
			cat(h, mem, Section(11, U(1), []byte{0x01}, U(huge)))),
		validate("bomb-export-name", "export name of 2³²−1 bytes", cat(h, Section(7, U(1), U(huge)))),
		validate("bomb-section-size", "section declaring 2³²−1 bytes", cat(h, []byte{0x00}, U(huge), Name("x"))),
		validate("bomb-function-names", "name section declaring 2³²−1 function names",
			cat(h, Section(0, Name("name"), []byte{0x01}, U(5), U(huge)))),
		validate("bomb-local-names", "name section declaring 2³²−1 functions with local names",
			cat(h, Section(0, Name("name"), []byte{0x02}, U(5), U(huge)))),
		validate("bomb-br-table", "br_table declaring 2³²−1 labels",
			cat(h, typ, fn, Section(10, U(1), U(10), U(0), I32Const(0), []byte{BrTable}, U(huge), []byte{End}))),
	}
}

// overLimits are well-formed modules past a structural limit.
func overLimits() []Case {
	var cs []Case

	var b Builder
	b.Table(FuncRef, overTableEntries, -1)
	cs = append(cs, limit("huge-table", "table of 134,217,728 entries (1 GiB outside the memory limit)", b.Bytes()))

	b = Builder{}
	b.Memory(overMemoryPages, -1)
	cs = append(cs, limit("huge-memory", "memory of 65,536 pages declared (4 GiB)", b.Bytes()))

	b = Builder{}
	t := U(uint64(b.Type(nil, nil)))
	fns, codes := make([][]byte, overFunctions), make([][]byte, overFunctions)
	for i := range fns {
		fns[i], codes[i] = t, []byte{2, 0, End}
	}
	cs = append(cs, limit("many-functions", "100,001 functions",
		cat(b.Bytes(), Section(3, Vec(fns...)), Section(10, Vec(codes...)))))

	b = Builder{}
	b.Func(nil, nil, nil, Repeat([]byte{Block, Void}, overNesting), Repeat([]byte{End}, overNesting))
	cs = append(cs, limit("deep-nesting", "10,000 nested blocks", b.Bytes()))

	b = Builder{}
	b.Func(nil, nil, nil, Repeat([]byte{0x01}, overBodyBytes)) // nops
	cs = append(cs, limit("huge-body", "a function of 300 KiB", b.Bytes()))

	b = Builder{}
	b.Custom("padding", make([]byte, overModuleBytes))
	cs = append(cs, limit("huge-module", "33 MiB of custom section", b.Bytes()))
	return cs
}

// tricks are modules that would become valid, or would reach the
// instrumentation's globals and helpers, if the rewrite did not check
// them first; or that use what the rewrite cannot bound.
func tricks() []Case {
	var cs []Case
	one := func(name, what string, code ...[]byte) {
		var b Builder
		b.Memory(1, -1)
		b.Global(I32, true, I32Const(0))
		b.Table(FuncRef, 1, -1)
		b.Func(nil, nil, nil, code...)
		cs = append(cs, validate(name, what, b.Bytes()))
	}
	one("trick-global", "sets global 1, which only the stop flag would be", I32Const(1), Op(GlobalSet, 1))
	one("trick-call", "calls function 1, which only the yield helper would be", Op(Call, 1))
	one("trick-label", "branches to a label past the function's, which the epilogue's block would make valid",
		Op(Br, 1))
	one("trick-local", "reads local 0 of a function without locals, which the scratch local would make valid",
		Op(LocalGet, 0), []byte{Drop})
	one("trick-type", "call_indirect of type 5, which appended types would make valid",
		I32Const(0), Op(CallIndirect, 5, 0))
	one("tail-call", "return_call, which the rewrite cannot bound", Op(0x12, 0))
	one("atomics", "atomic.fence (threads)", []byte{0xfe, 0x03, 0x00})
	one("exceptions", "try (exceptions)", []byte{0x06, Void, End})

	var b Builder
	b.Memory(1, -1)
	b.Export("hotswap_stop", KindMemory, 0)
	cs = append(cs, validate("reserved-export", "exports the name of the host's stop flag", b.Bytes()))

	b = Builder{}
	b.memories = append(b.memories, []byte{0x03, 0x01, 0x01}) // shared
	cs = append(cs, validate("shared-memory", "a shared memory (threads)", b.Bytes()))

	b = Builder{}
	b.Memory(1, -1)
	b.Memory(1, -1)
	cs = append(cs, validate("two-memories", "two memories", b.Bytes()))

	cs = append(cs, validate("not-wasm", "a shell script", []byte("#!/bin/sh\necho pwned\n")))
	return cs
}

// loadTime are modules refused after they compiled: by what they do when
// they start, or by their answers to the host's checks.
func loadTime() []Case {
	var cs []Case
	add := func(name, what, check string, want error, g *Guest, grants ...string) {
		cs = append(cs, Case{Name: name, What: what, Bytes: g.Bytes(), Want: Want{Check: check, Err: want}, Grants: grants})
	}

	// Refused before compile, however large.
	var b Builder
	t := U(uint64(b.Type(nil, nil)))
	const n = 20_000
	fns, codes := make([][]byte, n), make([][]byte, n)
	body := Repeat(cat(I32Const(1), []byte{Drop}), 100)
	for i := range fns {
		fns[i], codes[i] = t, cat(U(uint64(len(body)+2)), []byte{0}, body, []byte{End})
	}
	cs = append(cs, Case{Name: "foreign-module", What: "a 4 MB module without the guest ABI (refused before compile)",
		Bytes: cat(b.Bytes(), Section(3, Vec(fns...)), Section(10, Vec(codes...))),
		Want:  Want{Check: "exports", Err: module.ErrMissingExport}})

	b = Builder{}
	b.Memory(1, -1)
	b.Export("_start", KindFunc, b.Func(nil, nil, nil))
	cs = append(cs, Case{Name: "wasi-command", What: "a WASI command, not a reactor", Bytes: b.Bytes(),
		Want: Want{Check: "exports", Err: module.ErrMissingExport}})

	g := &Guest{Mistype: "hotswap_call"}
	cs = append(cs, Case{Name: "mistyped-export", What: "hotswap_call of type () -> ()", Bytes: g.Bytes(),
		Want: Want{Check: "exports", Err: module.ErrMissingExport}})

	g = &Guest{}
	g.ImportFunc("env", "system", []byte{I32}, []byte{I32})
	add("import-env", "imports env.system", "capabilities", module.ErrCapabilityDenied, g)
	g = &Guest{}
	g.ImportFunc("hotswap", "kv_set", []byte{I32, I32, I32, I32}, nil)
	add("import-ungranted", "imports hotswap.kv_set without the kv grant", "capabilities", module.ErrCapabilityDenied, g)
	g = &Guest{}
	g.ImportFunc("wasi_snapshot_preview1", "fd_write", []byte{I32}, nil)
	add("import-mistyped", "imports WASI fd_write with the wrong type", "capabilities", module.ErrMissingExport, g)
	g = &Guest{}
	g.Import("env", "g", KindGlobal, []byte{I32, 0x00})
	add("import-global", "imports a global", "capabilities", module.ErrCapabilityDenied, g)

	g = &Guest{ABI: 2 << 16}
	add("abi-major-2", "speaks ABI 2.0", "abi", module.ErrABIMismatch, g)

	// Runaway code in every step of a load. A loop-free exponential
	// recursion never reaches a loop head; it must be stopped all the same.
	g = &Guest{}
	g.Init = Code(I32Const(64), Op(Call, uint64(expRecursion(&g.Builder))))
	add("init-exponential", "_initialize recurses 2⁶⁴ times without a loop", "init", module.ErrTimeout, g)
	g = &Guest{}
	g.Init = spin()
	add("init-loop", "_initialize loops forever", "init", module.ErrTimeout, g)
	g = &Guest{}
	g.Init = Op(Call, uint64(unbounded(&g.Builder)))
	add("init-unbounded", "_initialize recurses without end", "init", module.ErrStackOverflow, g)
	g = &Guest{}
	g.Start(g.Func(nil, nil, nil, I32Const(64), Op(Call, uint64(expRecursion(&g.Builder)))))
	add("start-exponential", "the start function recurses 2⁶⁴ times without a loop", "init", module.ErrTimeout, g)
	g = &Guest{}
	g.Start(g.Func(nil, nil, nil, spin()))
	add("start-loop", "the start function loops forever", "init", module.ErrTimeout, g)
	g = &Guest{}
	g.Start(g.Func(nil, nil, nil, []byte{Unreachable}))
	add("start-trap", "the start function traps", "init", module.ErrInitFailed, g)
	g = &Guest{}
	g.Start(g.Func(nil, nil, nil, growMemoryUntilRefused()))
	add("start-memory", "the start function grows memory until refused, then traps", "init", module.ErrMemoryLimit, g)
	g = &Guest{}
	g.Exchange = Code(spin(), I32Const(0))
	add("exchange-loop", "hotswap_exchange loops forever", "init", module.ErrTimeout, g)
	g = &Guest{}
	g.Handlers = Code(I32Const(64), Op(Call, uint64(expRecursion(&g.Builder))), OK())
	add("handlers-exponential", "hotswap_handlers recurses 2⁶⁴ times", "exports", module.ErrTimeout, g)
	g = &Guest{}
	g.Handlers = I64Const(0x7fff_0000<<32 | 1000)
	add("handlers-outside", "hotswap_handlers points outside memory", "exports", module.ErrTrapped, g)
	g = &Guest{}
	g.SelfTest = Code(I32Const(64), Op(Call, uint64(expRecursion(&g.Builder))), OK())
	add("selftest-exponential", "the self-test recurses 2⁶⁴ times without a loop", "selftest", module.ErrTimeout, g)
	g = &Guest{}
	g.SelfTest = Code(Op(Call, uint64(unbounded(&g.Builder))), OK())
	add("selftest-unbounded", "the self-test recurses without end", "selftest", module.ErrStackOverflow, g)
	g = &Guest{}
	g.Migrate = Code(I32Const(64), Op(Call, uint64(expRecursion(&g.Builder))), OK())
	add("migrate-exponential", "the migrate hook recurses 2⁶⁴ times without a loop", "migrate", module.ErrTimeout, g)
	g = &Guest{}
	g.Migrate = Code(spin(), OK())
	add("migrate-loop", "the migrate hook loops forever", "migrate", module.ErrTimeout, g)
	return cs
}

// callTime are modules that load and then misbehave in a call.
func callTime() []Case {
	var cs []Case
	add := func(name, what string, want error, g *Guest, grants ...string) {
		cs = append(cs, Case{Name: name, What: what, Bytes: g.Bytes(), Want: Want{Handler: "h", Err: want}, Grants: grants})
	}
	g := &Guest{}
	g.Handle("h", nil, I32Const(64), Op(Call, uint64(expRecursion(&g.Builder))), OK())
	add("call-exponential", "recurses 2⁶⁴ times without a loop", module.ErrTimeout, g)
	g = &Guest{}
	g.Handle("h", nil, spin(), OK())
	add("call-loop", "loops forever", module.ErrTimeout, g)
	g = &Guest{}
	g.Handle("h", nil, Op(Call, uint64(unbounded(&g.Builder))), OK())
	add("call-unbounded", "recurses without end", module.ErrStackOverflow, g)
	g = &Guest{}
	f := indirectCycle(&g.Builder)
	g.Handle("h", nil, Op(Call, uint64(f)), OK())
	add("call-indirect-cycle", "two functions calling each other through a table, without end", module.ErrStackOverflow, g)
	g = &Guest{}
	f = indirectExponential(&g.Builder)
	g.Handle("h", nil, I32Const(64), Op(Call, uint64(f)), OK())
	add("call-indirect-exponential", "recurses 2⁶⁴ times through a table", module.ErrTimeout, g)
	g = &Guest{}
	f = deepUnwind(&g.Builder)
	g.Handle("h", nil, []byte{Loop, Void}, I32Const(100), Op(Call, uint64(f)), Op(Br, 0), []byte{End}, OK())
	add("call-deep-unwind", "recurses 100 deep through large functions whose tails run unchecked as the stack unwinds, forever",
		module.ErrTimeout, g)
	g = &Guest{}
	g.Handle("h", nil, growMemoryUntilRefused())
	add("call-memory", "grows memory until refused, then traps", module.ErrMemoryLimit, g)
	g = &Guest{}
	g.Table(FuncRef, 0, -1)
	g.Handle("h", nil, []byte{Loop, Void, 0xd0, FuncRef}, I32Const(4096), []byte{0xfc, 15, 0x00}, I32Const(-1),
		[]byte{0x47}, Op(BrIf, 0), []byte{End, Unreachable})
	add("call-table", "grows a table until refused, then traps", module.ErrMemoryLimit, g)
	g = &Guest{Pages: 256}
	g.Handle("h", nil, []byte{Loop, Void}, I32Const(0), I32Const(0), I32Const(16<<20), []byte{0xfc, 11, 0x00},
		Op(Br, 0), []byte{End}, OK())
	add("call-fill", "fills 16 MiB of memory in a loop forever", module.ErrTimeout, g)

	g = &Guest{}
	write := g.ImportFunc("wasi_snapshot_preview1", "fd_write", []byte{I32, I32, I32, I32}, []byte{I32})
	text := []byte("fatal error: out of memory\n")
	g.Data(ScratchAddr, cat(le32(ScratchAddr+16), le32(uint32(len(text))), make([]byte, 8), text))
	g.Handle("h", nil, I32Const(2), I32Const(ScratchAddr), I32Const(1), I32Const(ScratchAddr+8), Op(Call, uint64(write)),
		[]byte{Drop, Unreachable})
	add("call-oom-text", `prints "fatal error: out of memory" and traps, within its memory limit`, module.ErrTrapped, g)

	g = &Guest{}
	exit := g.ImportFunc("wasi_snapshot_preview1", "proc_exit", []byte{I32}, nil)
	g.Handle("h", nil, I32Const(-268435457), Op(Call, uint64(exit)), []byte{Unreachable}) // 0xefffffff
	add("call-exit-deadline-code", "exits with the code wazero uses for a deadline", module.ErrTrapped, g)

	g = &Guest{}
	poll := g.ImportFunc("wasi_snapshot_preview1", "poll_oneoff", []byte{I32, I32, I32, I32}, []byte{I32})
	sub := make([]byte, 48) // a relative monotonic clock subscription of an hour
	binary.LittleEndian.PutUint32(sub[16:], 1)
	binary.LittleEndian.PutUint64(sub[24:], 3600e9)
	g.Data(ScratchAddr, sub)
	g.Handle("h", nil, []byte{Loop, Void}, I32Const(ScratchAddr), I32Const(ScratchAddr+64), I32Const(1),
		I32Const(ScratchAddr+128), Op(Call, uint64(poll)), []byte{Drop}, Op(Br, 0), []byte{End}, OK())
	add("call-sleep", "sleeps an hour in poll_oneoff, again and again", module.ErrTimeout, g, "clock")

	g = &Guest{}
	log := g.ImportFunc("hotswap", "log", []byte{I32, I32, I32}, nil)
	g.Data(ScratchAddr, []byte("flood"))
	g.Handle("h", []byte{I32}, I32Const(100_000), Op(LocalSet, 1), []byte{Loop, Void},
		I32Const(0), I32Const(ScratchAddr), I32Const(5), Op(Call, uint64(log)),
		Op(LocalGet, 1), I32Const(1), []byte{I32Sub}, Op(LocalTee, 1), Op(BrIf, 0), []byte{End}, OK())
	cs = append(cs, Case{Name: "call-log-flood", What: "logs 100,000 lines in one call", Bytes: g.Bytes(),
		Want: Want{Handler: "h", DropsLogs: true}})

	g = &Guest{}
	g.Handle("h", nil, Echo())
	g.Yield = Code(I32Const(64), Op(Call, uint64(expRecursion(&g.Builder))), OK())
	cs = append(cs, Case{Name: "yield-exponential", What: "its garbage-collection yield recurses 2⁶⁴ times", Bytes: g.Bytes(),
		Want: Want{Handler: "h", DiscardsOnYield: true}})

	g = &Guest{}
	g.Exchange = I32Const(0x7fff_0000)
	g.Handle("h", nil, Echo())
	add("exchange-outside", "its exchange buffer lies outside its memory", module.ErrTrapped, g)
	return cs
}

// spin loops forever.
func spin() []byte { return Code([]byte{Loop, Void}, Op(Br, 0), []byte{End}) }

// expRecursion adds f(n): if n == 0 return; f(n-1); f(n-1). No loop: 2ⁿ
// calls.
func expRecursion(b *Builder) uint32 {
	f := b.Declare([]byte{I32}, nil)
	dec := Code(Op(LocalGet, 0), I32Const(1), []byte{I32Sub}, Op(Call, uint64(f)))
	b.Body(f, nil, Op(LocalGet, 0), []byte{I32Eqz, If, Void, Return, End}, dec, dec)
	return f
}

// unbounded adds f() calling itself.
func unbounded(b *Builder) uint32 {
	f := b.Declare(nil, nil)
	b.Body(f, nil, Op(Call, uint64(f)))
	return f
}

// indirectCycle adds f and g calling each other through a table, and
// returns f.
func indirectCycle(b *Builder) uint32 {
	t := b.Type(nil, nil)
	b.Table(FuncRef, 2, 2)
	f, g := b.Declare(nil, nil), b.Declare(nil, nil)
	b.Body(f, nil, I32Const(1), Op(CallIndirect, uint64(t), 0))
	b.Body(g, nil, I32Const(0), Op(CallIndirect, uint64(t), 0))
	b.Elem(0, f, g)
	return f
}

// indirectExponential adds f(n) calling itself twice through a table with
// n-1 until n is 0, and returns f.
func indirectExponential(b *Builder) uint32 {
	t := b.Type([]byte{I32}, nil)
	b.Table(FuncRef, 1, 1)
	f := b.Declare([]byte{I32}, nil)
	dec := Code(Op(LocalGet, 0), I32Const(1), []byte{I32Sub}, I32Const(0), Op(CallIndirect, uint64(t), 0))
	b.Body(f, nil, Op(LocalGet, 0), []byte{I32Eqz, If, Void, Return, End}, dec, dec)
	b.Elem(0, f)
	return f
}

// deepUnwind adds f(n): if n > 0 f(n-1); then 10,000 instructions.
func deepUnwind(b *Builder) uint32 {
	f := b.Declare([]byte{I32}, nil)
	b.Body(f, nil, Op(LocalGet, 0), []byte{If, Void}, Op(LocalGet, 0), I32Const(1), []byte{I32Sub}, Op(Call, uint64(f)),
		[]byte{End}, Repeat(cat(I32Const(1), []byte{Drop}), 5_000))
	return f
}

// growMemoryUntilRefused grows memory 16 MiB at a time until memory.grow
// fails, then traps.
func growMemoryUntilRefused() []byte {
	return Code([]byte{Loop, Void}, I32Const(256), []byte{MemoryGrow, 0x00}, I32Const(-1), []byte{0x47}, Op(BrIf, 0),
		[]byte{End, Unreachable})
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
