package guard

// Opcodes the checker and the instrumenter treat specially.
const (
	opUnreachable  = 0x00
	opNop          = 0x01
	opBlock        = 0x02
	opLoop         = 0x03
	opIf           = 0x04
	opElse         = 0x05
	opEnd          = 0x0b
	opBr           = 0x0c
	opBrIf         = 0x0d
	opBrTable      = 0x0e
	opReturn       = 0x0f
	opCall         = 0x10
	opCallIndirect = 0x11
	opDrop         = 0x1a
	opSelectT      = 0x1c
	opLocalGet     = 0x20
	opLocalSet     = 0x21
	opLocalTee     = 0x22
	opGlobalGet    = 0x23
	opGlobalSet    = 0x24
	opTableGet     = 0x25
	opTableSet     = 0x26
	opMemorySize   = 0x3f
	opMemoryGrow   = 0x40
	opI32Const     = 0x41
	opI64Const     = 0x42
	opF32Const     = 0x43
	opF64Const     = 0x44
	opI32Eqz       = 0x45
	opI32LtS       = 0x48
	opI32GtU       = 0x4b
	opI32Add       = 0x6a
	opI32Sub       = 0x6b
	opI32Or        = 0x72
	opI32ShrU      = 0x76
	opRefNull      = 0xd0
	opRefFunc      = 0xd2
	opPrefixFC     = 0xfc
	opPrefixFD     = 0xfd
)

// Sub-opcodes of the 0xFC prefix.
const (
	fcMemoryInit = 8
	fcDataDrop   = 9
	fcMemoryCopy = 10
	fcMemoryFill = 11
	fcTableInit  = 12
	fcElemDrop   = 13
	fcTableCopy  = 14
	fcTableGrow  = 15
	fcTableSize  = 16
	fcTableFill  = 17
)

// instr is one decoded instruction: its opcode and the immediates the
// checker and the instrumenter look at.
type instr struct {
	op  byte
	sub uint32 // of a 0xFC or 0xFD instruction
	// idx is the first index immediate: function, type, local, global,
	// table, element, data segment or label. idx2 is the second: the table
	// of call_indirect, the table of table.init, the source of table.copy.
	idx, idx2 uint32
	// bt is the block type of block, loop and if: a type index when ≥ 0,
	// else an empty or value type (see blockTypeResults).
	bt int64
	// mem reports that the instruction needs a memory.
	mem bool
}

// bulk reports whether the instruction's running time grows with an operand
// (its last, a byte or entry count).
func (in *instr) bulk() bool {
	if in.op != opPrefixFC {
		return false
	}
	switch in.sub {
	case fcMemoryInit, fcMemoryCopy, fcMemoryFill, fcTableInit, fcTableCopy, fcTableFill:
		return true
	}
	return false
}

// codeReader decodes the instructions of a function body.
type codeReader struct {
	reader
	// labels is how many labels are in scope: the function's own block
	// and every block, loop and if open around the next instruction.
	labels int
}

// next decodes the next instruction into in. Branch labels are checked
// against the labels in scope, since the instrumenter wraps the body in one
// more block: a label one past the function's own would otherwise become
// valid and skip the epilogue.
func (r *codeReader) next(in *instr) {
	*in = instr{op: r.byte()}
	switch op := in.op; {
	case op == opBlock || op == opLoop || op == opIf:
		in.bt = r.sleb(33)
		if in.bt < 0 && r.err == nil {
			switch byte(in.bt & 0x7f) {
			case 0x40, 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
				if in.bt >= -64 {
					break
				}
				fallthrough
			default:
				r.failf(ErrUnsupported, "block type %d", in.bt)
			}
		}
		r.labels++
	case op == opEnd:
		r.labels--
	case op == opBr || op == opBrIf:
		in.idx = r.label()
	case op == opBrTable:
		n := r.count(1, maxInt, "br_table labels")
		for range n {
			r.label()
		}
		r.label()
	case op == opCall:
		in.idx = r.u32()
	case op == opCallIndirect:
		in.idx = r.u32()
		in.idx2 = r.u32()
	case op == opSelectT:
		if n := r.u32(); n != 1 && r.err == nil {
			r.failf(ErrMalformed, "select with %d types", n)
		}
		r.valtype()
	case op >= opLocalGet && op <= opTableSet:
		in.idx = r.u32()
	case op >= 0x28 && op <= 0x3e: // loads and stores
		r.memarg()
		in.mem = true
	case op == opMemorySize || op == opMemoryGrow:
		r.memidx()
		in.mem = true
	case op == opI32Const:
		r.sleb(32)
	case op == opI64Const:
		r.sleb(64)
	case op == opF32Const:
		r.bytes(4)
	case op == opF64Const:
		r.bytes(8)
	case op == opUnreachable || op == opNop || op == opElse || op == opReturn || op == opDrop || op == 0x1b ||
		(op >= opI32Eqz && op <= 0xc4) || op == 0xd1:
		// No immediates: unreachable, nop, else, return, drop, select,
		// numeric, sign extension, ref.is_null.
	case op == opRefNull:
		r.reftype()
	case op == opRefFunc:
		in.idx = r.u32()
	case op == opPrefixFC:
		r.prefixedFC(in)
	case op == opPrefixFD:
		r.prefixedFD(in)
	default:
		// Tail calls, exceptions, atomics, GC and typed function
		// references: none of these can be bounded without decoding them.
		r.failf(ErrUnsupported, "opcode %#02x", op)
	}
}

const maxInt = int(^uint(0) >> 1)

func (r *codeReader) label() uint32 {
	l := r.u32()
	if r.err == nil && uint64(l) >= uint64(r.labels) {
		r.failf(ErrMalformed, "branch to label %d with %d in scope", l, r.labels)
	}
	return l
}

// valtype reads a number, vector or reference type.
func (r *reader) valtype() ValType {
	t := ValType(r.byte())
	switch t {
	case I32, I64, F32, F64, V128, FuncRef, ExternRef:
	default:
		if r.err == nil {
			r.failf(ErrUnsupported, "value type %#02x", byte(t))
		}
	}
	return t
}

func (r *reader) reftype() ValType {
	t := ValType(r.byte())
	if t != FuncRef && t != ExternRef && r.err == nil {
		r.failf(ErrUnsupported, "reference type %#02x", byte(t))
	}
	return t
}

func (r *reader) memarg() {
	if align := r.u32(); align >= 0x40 && r.err == nil {
		r.failf(ErrUnsupported, "memory index in memarg (multiple memories)")
	}
	r.u32()
}

func (r *reader) memidx() {
	if idx := r.byte(); idx != 0 && r.err == nil {
		r.failf(ErrUnsupported, "memory index %d (multiple memories)", idx)
	}
}

// prefixedFC reads the rest of a 0xFC instruction: saturating conversions,
// bulk memory and table operations.
func (r *codeReader) prefixedFC(in *instr) {
	switch in.sub = r.u32(); in.sub {
	case 0, 1, 2, 3, 4, 5, 6, 7: // trunc_sat
	case fcMemoryInit: // data, memory
		in.idx = r.u32()
		r.memidx()
		in.mem = true
	case fcDataDrop:
		in.idx = r.u32()
	case fcMemoryCopy:
		r.memidx()
		r.memidx()
		in.mem = true
	case fcMemoryFill:
		r.memidx()
		in.mem = true
	case fcTableInit: // element, table
		in.idx = r.u32()
		in.idx2 = r.u32()
	case fcElemDrop:
		in.idx = r.u32()
	case fcTableCopy: // destination, source
		in.idx = r.u32()
		in.idx2 = r.u32()
	case fcTableGrow, fcTableSize, fcTableFill:
		in.idx = r.u32()
	default:
		if r.err == nil {
			r.failf(ErrUnsupported, "opcode 0xfc %d", in.sub)
		}
	}
}

// prefixedFD reads the rest of a fixed-width SIMD (0xFD) instruction.
func (r *codeReader) prefixedFD(in *instr) {
	switch sub := r.u32(); {
	case r.err != nil:
	case sub <= 11 || sub == 92 || sub == 93: // loads, stores, load zero
		r.memarg()
		in.mem = true
	case sub == 12 || sub == 13: // v128.const, i8x16.shuffle
		r.bytes(16)
	case sub >= 21 && sub <= 34: // extract_lane, replace_lane
		r.byte()
	case sub >= 84 && sub <= 91: // load_lane, store_lane
		r.memarg()
		r.byte()
		in.mem = true
	case sub <= 255 && !fdUnassigned(sub):
	default:
		r.failf(ErrUnsupported, "opcode 0xfd %d", sub)
	}
}

// fdUnassigned reports whether sub is no fixed-width SIMD instruction.
func fdUnassigned(sub uint32) bool {
	switch sub {
	case 154, 162, 165, 166, 175, 176, 178, 179, 180, 187, 194, 197, 198, 207, 208, 210, 211, 212, 226, 238:
		return true
	}
	return false
}
