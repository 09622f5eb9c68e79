package guard

import (
	"encoding/binary"
	"fmt"
)

var header = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

// Names the instrumented module exports for the host. Parse refuses a
// module that exports one of them itself.
const (
	// StopExport is the stop flag: a mutable i32 global the host sets to
	// stop the instance (see package doc).
	StopExport = "hotswap_stop"
	// SignalExport is a mutable i32 global in which the instrumentation
	// records why it stopped or refused something: Signal* bits.
	SignalExport = "hotswap_signal"
	// TableGrowthExport is a mutable i32 global holding the table entries
	// added by table.grow since instantiation.
	TableGrowthExport = "hotswap_table_grown"
	// StartExport is the function of the removed start section, which the
	// host must call right after instantiation.
	StartExport = "hotswap_start"
)

// Bits of the signal global.
const (
	// SignalStack: a call trapped because its stack passed MaxStack.
	SignalStack = 1 << iota
	// SignalMemory: a memory.grow was refused (the memory limit).
	SignalMemory
	// SignalTable: a table.grow was refused (MaxTableEntries).
	SignalTable
)

// FuelPerYield is the work, in weight units (about one instruction each),
// between two exits of an instrumented module to Go.
const FuelPerYield = 1 << 20

// leafWeight is the largest weight of a leaf function (one that calls no
// defined function) that runs without a check of its own: calling it is
// charged to the caller instead.
const leafWeight = 128

// maxWeight caps a weight, keeping sums of weights within an i32.
const maxWeight = 1 << 24

// minFrame is the least a function adds to the stack depth: every frame
// costs wazero some stack, however small the function.
const minFrame = 64

// slotWeight is the weight of a parameter or local: the 8 bytes it takes on
// the stack. With an instruction weighing one (about what it may spill),
// a weight is about a frame's size in bytes.
const slotWeight = 8

// Config sets the bounds the instrumentation enforces.
type Config struct {
	// MaxStack bounds the stack of a call: the sum of the weights of the
	// functions on it, a weight being about the bytes of the function's
	// frame (its instructions plus slotWeight per parameter and local, at
	// least minFrame). Checked as the fuel runs out, and every entry is
	// charged at least its weight, so a stack may pass it by at most
	// FuelPerYield before the call traps. At most 1<<30.
	MaxStack uint32
	// MaxTableEntries bounds the entries of all tables, table.grow
	// included.
	MaxTableEntries uint32
}

// Instrument returns the module rewritten so that the host can stop it and
// so that it stays within cfg; see the package documentation.
func (m *Module) Instrument(cfg Config) ([]byte, error) {
	if cfg.MaxStack == 0 || cfg.MaxStack > 1<<30 {
		return nil, fmt.Errorf("guard: MaxStack %d out of range", cfg.MaxStack)
	}
	w := newWriter(m, cfg)
	return w.module()
}

// writer builds the instrumented module.
type writer struct {
	m   *Module
	cfg Config

	// Indices of what is appended.
	flag, fuel, depth, signal, grown uint32 // globals
	yield, memoryGrow                uint32 // functions
	tableGrow                        []uint32
	// newTypes are the types appended, by signature, with their indices.
	newTypes   []FuncType
	typeIndex  map[string]uint32
	newFuncs   []uint32 // type index of each appended function
	newBodies  [][]byte // their bodies
	weights    []uint32 // of every defined function
	leaf       []bool   // of every defined function: calls no defined function
	indirectOK []bool   // of every defined function: may be called by call_indirect unchecked
}

func newWriter(m *Module, cfg Config) *writer {
	w := &writer{m: m, cfg: cfg, typeIndex: make(map[string]uint32)}
	g := uint32(m.globals)
	w.flag, w.fuel, w.depth, w.signal, w.grown = g, g+1, g+2, g+3, g+4
	return w
}

// typeOf returns the index of a type with signature t, appending one.
func (w *writer) typeOf(t FuncType) uint32 {
	key := t.String()
	if i, ok := w.typeIndex[key]; ok {
		return i
	}
	i := uint32(len(w.m.types) + len(w.newTypes))
	w.newTypes = append(w.newTypes, t)
	w.typeIndex[key] = i
	return i
}

// addFunc appends a function and returns its index.
func (w *writer) addFunc(t FuncType, body []byte) uint32 {
	i := uint32(len(w.m.funcs) + len(w.newFuncs))
	w.newFuncs = append(w.newFuncs, w.typeOf(t))
	w.newBodies = append(w.newBodies, body)
	return i
}

func (w *writer) module() ([]byte, error) {
	m := w.m
	w.helpers()
	w.weigh()

	code := binary.AppendUvarint(nil, uint64(len(m.bodies)+len(w.newBodies)))
	var err error
	for i := range m.bodies {
		var b []byte
		if b, err = w.body(i); err != nil {
			return nil, fmt.Errorf("function %d: %w", m.importedFuncs+i, err)
		}
		code = binary.AppendUvarint(code, uint64(len(b)))
		code = append(code, b...)
	}
	for _, b := range w.newBodies {
		code = binary.AppendUvarint(code, uint64(len(b)))
		code = append(code, b...)
	}

	sections := append([]section(nil), m.sections...)
	var types, funcs, globals, exports []byte
	for _, t := range w.newTypes {
		types = append(types, 0x60)
		types = appendValTypes(types, t.Params)
		types = appendValTypes(types, t.Results)
	}
	for _, t := range w.newFuncs {
		funcs = binary.AppendUvarint(funcs, uint64(t))
	}
	for _, init := range []int64{0, FuelPerYield, 0, 0, 0} { // flag, fuel, depth, signal, grown
		globals = append(globals, byte(I32), 0x01, opI32Const)
		globals = appendSLEB(globals, init)
		globals = append(globals, opEnd)
	}
	exports = exportEntry(exports, StopExport, KindGlobal, w.flag)
	exports = exportEntry(exports, SignalExport, KindGlobal, w.signal)
	exports = exportEntry(exports, TableGrowthExport, KindGlobal, w.grown)
	nexports := 3
	if m.start >= 0 {
		exports = exportEntry(exports, StartExport, KindFunc, uint32(m.start))
		nexports++
		for i, s := range sections {
			if s.id == secStart {
				sections = append(sections[:i:i], sections[i+1:]...)
				break
			}
		}
	}
	sections = extend(sections, secType, len(w.newTypes), types)
	sections = extend(sections, secFunction, len(w.newFuncs), funcs)
	if len(m.memories) == 0 {
		sections = extend(sections, secMemory, 1, []byte{0x01, 0x00, 0x00}) // 0 pages, at most 0
	}
	sections = extend(sections, secGlobal, 5, globals)
	sections = extend(sections, secExport, nexports, exports)
	sections = replace(sections, secCode, code)

	size := len(header)
	for _, s := range sections {
		size += 1 + binary.MaxVarintLen32 + len(s.body)
	}
	out := make([]byte, 0, size)
	out = append(out, header...)
	for _, s := range sections {
		out = append(out, s.id)
		out = binary.AppendUvarint(out, uint64(len(s.body)))
		out = append(out, s.body...)
	}
	return out, nil
}

// helpers appends the functions the instrumented code calls.
func (w *writer) helpers() {
	m := w.m
	// yield runs when the fuel ran out: it refills it, traps if the stack
	// is too deep, leaves for Go (memory.grow runs there; the goroutine can
	// be preempted) and traps if the host set the stop flag.
	var b []byte
	b = append(b, 0x00) // no locals
	b = appendConst(b, opI32Const, FuelPerYield)
	b = appendIdx(b, opGlobalSet, w.fuel)
	b = appendIdx(b, opGlobalGet, w.depth)
	b = appendConst(b, opI32Const, int64(w.cfg.MaxStack))
	b = append(b, opI32GtU, opIf, 0x40)
	b = w.raise(b, SignalStack)
	b = append(b, opUnreachable, opEnd)
	b = append(b, opI32Const, 0x00, opMemoryGrow, 0x00, opDrop)
	b = appendIdx(b, opGlobalGet, w.flag)
	b = append(b, opIf, 0x40, opUnreachable, opEnd, opEnd)
	w.yield = w.addFunc(FuncType{}, b)

	grows := false
	for _, bd := range m.bodies {
		grows = grows || bd.memoryGrow
	}
	if grows {
		// memoryGrow(n) is memory.grow n, recording a refusal.
		b = append(b[:0:0], 0x01, 0x01, byte(I32)) // one i32 local: the result
		b = appendIdx(b, opLocalGet, 0)
		b = append(b, opMemoryGrow, 0x00)
		b = appendIdx(b, opLocalTee, 1)
		b = append(b, opI32Const, 0x7f, 0x46, opIf, 0x40) // i32.eq -1
		b = w.raise(b, SignalMemory)
		b = append(b, opEnd)
		b = appendIdx(b, opLocalGet, 1)
		b = append(b, opEnd)
		w.memoryGrow = w.addFunc(FuncType{Params: []ValType{I32}, Results: []ValType{I32}}, b)
	}

	w.tableGrow = make([]uint32, len(m.tables))
	var grown []bool
	for _, bd := range m.bodies {
		if bd.tableGrow {
			grown = make([]bool, len(m.tables))
		}
	}
	if grown == nil {
		return
	}
	static := m.TableEntries()
	for t := range m.tables {
		// tableGrow(ref, n) is table.grow t, refused when the tables
		// would pass MaxTableEntries. The entries of all tables stay
		// within the limit, so the subtraction cannot wrap.
		b = append(b[:0:0], 0x01, 0x01, byte(I32)) // one i32 local: the result
		b = appendIdx(b, opLocalGet, 1)
		b = appendConst(b, opI32Const, int64(w.cfg.MaxTableEntries))
		b = appendConst(b, opI32Const, int64(static))
		b = appendIdx(b, opGlobalGet, w.grown)
		b = append(b, opI32Add, opI32Sub, opI32GtU, opIf, 0x40)
		b = w.raise(b, SignalTable)
		b = append(b, opI32Const, 0x7f, opReturn, opEnd)
		b = appendIdx(b, opLocalGet, 0)
		b = appendIdx(b, opLocalGet, 1)
		b = append(b, opPrefixFC, fcTableGrow)
		b = binary.AppendUvarint(b, uint64(t))
		b = appendIdx(b, opLocalTee, 2)
		b = append(b, opI32Const, 0x7f, 0x47, opIf, 0x40) // i32.ne -1
		b = appendIdx(b, opGlobalGet, w.grown)
		b = appendIdx(b, opLocalGet, 1)
		b = append(b, opI32Add)
		b = appendIdx(b, opGlobalSet, w.grown)
		b = append(b, opEnd)
		b = appendIdx(b, opLocalGet, 2)
		b = append(b, opEnd)
		w.tableGrow[t] = w.addFunc(FuncType{Params: []ValType{m.tables[t].ref, I32}, Results: []ValType{I32}}, b)
	}
}

// raise appends code setting bit in the signal global.
func (w *writer) raise(b []byte, bit int64) []byte {
	b = appendIdx(b, opGlobalGet, w.signal)
	b = appendConst(b, opI32Const, bit)
	b = append(b, opI32Or)
	return appendIdx(b, opGlobalSet, w.signal)
}

// weigh computes the weight of every defined function: its instructions,
// its parameters and locals (slotWeight each), plus the weight of the
// unchecked leaves it calls.
func (w *writer) weigh() {
	m := w.m
	n := len(m.bodies)
	w.weights = make([]uint32, n)
	w.leaf = make([]bool, n)
	for i, bd := range m.bodies {
		w.leaf[i] = !bd.calls
		w.weights[i] = uint32(min(uint64(bd.instrs)+w.slots(i), maxWeight))
	}
	for i, bd := range m.bodies {
		if bd.calls {
			w.weights[i] = w.scan(i, nil)
		}
	}
}

// unchecked reports whether defined function i runs without a check of its
// own: a small leaf, whose callers are charged for it.
func (w *writer) unchecked(i int) bool { return w.leaf[i] && w.weights[i] <= leafWeight }

// scan decodes body i, returning its weight and appending the weight of
// each loop, in order, to loops.
func (w *writer) scan(i int, loops *[]uint32) uint32 {
	m := w.m
	bd := m.bodies[i]
	r := &codeReader{reader: reader{b: bd.bytes, off: bd.code}, labels: 1}
	var (
		in    instr
		cum   uint64             // weight so far
		open  []int              // per open block: the index of its loop weight, or -1
		start = map[int]uint64{} // cumulative weight at each open loop's head
	)
	for r.labels > 0 && r.err == nil {
		r.next(&in)
		cum++
		switch in.op {
		case opBlock, opIf:
			open = append(open, -1)
		case opLoop:
			k := -1
			if loops != nil {
				k = len(*loops)
				*loops = append(*loops, 0)
				start[k] = cum
			}
			open = append(open, k)
		case opEnd:
			if len(open) > 0 {
				if k := open[len(open)-1]; k >= 0 {
					(*loops)[k] = uint32(min(cum-start[k], maxWeight))
					delete(start, k)
				}
				open = open[:len(open)-1]
			}
		case opCall:
			if f := int(in.idx) - m.importedFuncs; f >= 0 && w.unchecked(f) {
				cum += uint64(w.weights[f])
			}
		case opCallIndirect:
			cum += leafWeight
		}
	}
	return uint32(min(cum+w.slots(i), maxWeight))
}

// slots is the weight of defined function i's parameters and locals: the
// bytes they take on the stack.
func (w *writer) slots(i int) uint64 {
	m := w.m
	params := len(m.FuncType(uint32(m.importedFuncs + i)).Params)
	return slotWeight * (uint64(params) + uint64(m.bodies[i].locals))
}

// body returns the instrumented body of defined function i.
func (w *writer) body(i int) ([]byte, error) {
	m := w.m
	bd := m.bodies[i]
	weight := w.weights[i]
	var loops []uint32
	w.scan(i, &loops)
	typ := m.FuncType(uint32(m.importedFuncs + i))
	tracked := !w.leaf[i] // counted in the stack depth, wrapped in a block
	checked := !w.unchecked(i)
	frame := int64(max(weight, minFrame))

	var out []byte
	// Locals, with one more i32 for the byte counts of bulk instructions.
	r := &codeReader{reader: reader{b: bd.bytes}}
	groups := r.u32()
	scratch := uint32(len(typ.Params)) + bd.locals
	if bd.bulk {
		out = binary.AppendUvarint(out, uint64(groups)+1)
		out = append(out, bd.bytes[r.off:bd.code]...)
		out = append(out, 0x01, byte(I32))
	} else {
		out = append(out, bd.bytes[:bd.code]...)
	}

	// The entry check is the first loop's, when the body starts with one.
	r = &codeReader{reader: reader{b: bd.bytes, off: bd.code}, labels: 1}
	entryLoop := checked && startsWithLoop(bd.bytes[bd.code:])
	if tracked {
		out = appendIdx(out, opGlobalGet, w.depth)
		out = appendConst(out, opI32Const, frame)
		out = append(out, opI32Add)
		out = appendIdx(out, opGlobalSet, w.depth)
	}
	if checked && !entryLoop {
		out = w.check(out, uint32(frame)) // at least what the depth grows by: the bound holds within FuelPerYield
	}
	if tracked {
		out = append(out, opBlock)
		out = w.blockType(out, typ.Results)
	}
	var in instr
	loop := 0
	for r.labels > 0 && r.err == nil {
		at := r.off
		labels := r.labels
		r.next(&in)
		switch {
		case in.op == opReturn && tracked:
			out = appendIdx(out, opBr, uint32(labels-1))
		case in.op == opCall && int(in.idx) < m.importedFuncs,
			in.op == opCallIndirect && m.importsInTables:
			// A host function may block (a guest sleeping in poll_oneoff)
			// without spending fuel: read the stop flag when it returns.
			out = append(out, r.b[at:r.off]...)
			out = appendIdx(out, opGlobalGet, w.flag)
			out = append(out, opIf, 0x40, opUnreachable, opEnd)
		case in.op == opMemoryGrow:
			out = appendIdx(out, opCall, w.memoryGrow)
		case in.op == opPrefixFC && in.sub == fcTableGrow:
			out = appendIdx(out, opCall, w.tableGrow[in.idx])
		case in.bulk() && (in.sub == fcMemoryInit || in.sub == fcMemoryCopy || in.sub == fcMemoryFill):
			// Charge the byte count, on top of the stack, 64 bytes a unit.
			out = appendIdx(out, opLocalTee, scratch)
			out = appendIdx(out, opGlobalGet, w.fuel)
			out = appendIdx(out, opLocalGet, scratch)
			out = append(out, opI32Const, 6, opI32ShrU, opI32Sub)
			out = appendIdx(out, opGlobalSet, w.fuel)
			out = w.test(out)
			out = append(out, r.b[at:r.off]...)
		case in.op == opEnd && r.labels == 0 && tracked:
			// The end of the wrapping block, then the epilogue.
			out = append(out, opEnd)
			out = appendIdx(out, opGlobalGet, w.depth)
			out = appendConst(out, opI32Const, frame)
			out = append(out, opI32Sub)
			out = appendIdx(out, opGlobalSet, w.depth)
			out = append(out, opEnd)
		default:
			out = append(out, r.b[at:r.off]...)
		}
		if in.op == opLoop {
			charge := max(loops[loop], 1)
			if loop == 0 && entryLoop {
				charge = max(charge, uint32(frame))
			}
			out = w.check(out, charge)
			loop++
		}
	}
	if r.err != nil { // Parse decoded the same bytes
		return nil, r.err
	}
	return out, nil
}

// startsWithLoop reports whether code reaches a loop before anything that
// branches, calls or does more than a few cycles of work.
func startsWithLoop(code []byte) bool {
	r := &codeReader{reader: reader{b: code}, labels: 1}
	var in instr
	for i := 0; i < 16 && r.err == nil; i++ {
		r.next(&in)
		switch in.op {
		case opLoop:
			return true
		case opBlock, opNop, opDrop, opLocalGet, opLocalSet, opLocalTee, opGlobalGet, opGlobalSet,
			opI32Const, opI64Const:
		default:
			return false
		}
	}
	return false
}

// check appends the check at a loop head or function entry: charge the
// fuel, and yield when it ran out.
//
//	global.get fuel; i32.const charge; i32.sub; global.set fuel
//	global.get fuel; i32.const 0; i32.lt_s; if; call yield; end
func (w *writer) check(b []byte, charge uint32) []byte {
	b = appendIdx(b, opGlobalGet, w.fuel)
	b = appendConst(b, opI32Const, int64(charge))
	b = append(b, opI32Sub)
	b = appendIdx(b, opGlobalSet, w.fuel)
	return w.test(b)
}

func (w *writer) test(b []byte) []byte {
	b = appendIdx(b, opGlobalGet, w.fuel)
	b = append(b, opI32Const, 0x00, opI32LtS, opIf, 0x40)
	b = appendIdx(b, opCall, w.yield)
	return append(b, opEnd)
}

// blockType appends the type of a block producing results.
func (w *writer) blockType(b []byte, results []ValType) []byte {
	switch len(results) {
	case 0:
		return append(b, 0x40)
	case 1:
		return append(b, byte(results[0]))
	}
	return appendSLEB(b, int64(w.typeOf(FuncType{Results: results})))
}

func appendIdx(b []byte, op byte, idx uint32) []byte {
	return binary.AppendUvarint(append(b, op), uint64(idx))
}

func appendConst(b []byte, op byte, v int64) []byte {
	if op == opI32Const {
		v = int64(int32(v)) // an i32 constant is the value's 32 bits, signed
	}
	return appendSLEB(append(b, op), v)
}

func appendValTypes(b []byte, ts []ValType) []byte {
	b = binary.AppendUvarint(b, uint64(len(ts)))
	for _, t := range ts {
		b = append(b, byte(t))
	}
	return b
}

// appendSLEB appends v in signed LEB128.
func appendSLEB(dst []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(dst, c)
		}
		dst = append(dst, c|0x80)
	}
}

func exportEntry(dst []byte, name string, kind Kind, index uint32) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(name)))
	dst = append(dst, name...)
	dst = append(dst, byte(kind))
	return binary.AppendUvarint(dst, uint64(index))
}

// extend appends n entries to the vector section id, creating the section
// in its place when the module has none. Parse decoded the section, so its
// count is well formed.
func extend(sections []section, id byte, n int, entries []byte) []section {
	if n == 0 {
		return sections
	}
	for i, s := range sections {
		if s.id == id {
			r := reader{b: s.body}
			count := r.u32()
			body := binary.AppendUvarint(nil, uint64(count)+uint64(n))
			body = append(body, s.body[r.off:]...)
			sections[i].body = append(body, entries...)
			return sections
		}
	}
	return insert(sections, id, append(binary.AppendUvarint(nil, uint64(n)), entries...))
}

// replace sets the body of section id, creating it in its place.
func replace(sections []section, id byte, body []byte) []section {
	for i, s := range sections {
		if s.id == id {
			sections[i].body = body
			return sections
		}
	}
	return insert(sections, id, body)
}

func insert(sections []section, id byte, body []byte) []section {
	at := len(sections)
	for i, s := range sections {
		if s.id != secCustom && order[s.id] > order[id] {
			at = i
			break
		}
	}
	return append(sections[:at:at], append([]section{{id, body}}, sections[at:]...)...)
}
