// Package stopflag rewrites a WebAssembly module so that another goroutine
// can stop it: it adds a mutable i32 global, the stop flag, exported as
// Export, which the module checks every YieldEvery loop iterations, trapping
// with unreachable once it is nonzero. A module can only run forever
// through a loop or through recursion, and recursion ends when the stack
// runs out, so setting the flag stops any call within YieldEvery loop
// iterations.
//
// Machine code compiled by wazero cannot be preempted by the Go scheduler,
// so a guest looping without ever leaving it would hold up every
// stop-the-world phase of the Go garbage collector, and with it the whole
// process (including the goroutine that would set the flag). So the check
// is counted: every loop head decrements a second added global, the fuel,
// and when it reaches zero the module refills it, executes memory.grow 0,
// which wazero runs in Go (a point where the goroutine can be preempted),
// and then reads the flag. When the module has no memory, a memory of zero
// pages is added for that.
//
// Compared with wazero's own runaway protection (WithCloseOnContextDone),
// which leaves the machine code for Go at every loop head and starts a
// goroutine per call to watch the call's context, this costs a decrement
// and a branch per loop iteration, one exit to Go per YieldEvery iterations
// and nothing per call.
//
// The instrumented module differs from its input only in these places: the
// global section (two globals appended, so no index shifts), the export
// section (one export appended), the memory section if the module had no
// memory, and the code section (the check inserted after every loop
// instruction; function body and section sizes re-encoded).
// A start section, whose function would run inside instantiation where no
// flag can be set yet, is removed and its function exported as StartExport
// instead; the host must call it right after instantiation.
package stopflag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Export is the name under which the stop flag global is exported.
const Export = "hotswap_stop"

// YieldEvery is how many loop iterations run between two exits to Go and
// reads of the stop flag.
const YieldEvery = 1024

// StartExport is the name under which the function of a removed start
// section is exported.
const StartExport = "hotswap_start"

var header = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

// Section IDs.
const (
	secCustom = 0
	secImport = 2
	secMemory = 5
	secGlobal = 6
	secExport = 7
	secStart  = 8
	secCode   = 10
)

// order is the position each known section must appear in, by ID.
var order = map[byte]int{1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}

// ErrUnsupported is matched by the error Instrument returns for a module
// that uses an instruction or encoding it does not know.
var ErrUnsupported = errors.New("unsupported by the stop-flag instrumenter")

// ErrMalformed is matched by the error Instrument returns for bytes that are
// not a well-formed WebAssembly module.
var ErrMalformed = errors.New("malformed WebAssembly module")

type section struct {
	id   byte
	body []byte
}

// Instrument returns a copy of the WebAssembly binary bin with the stop
// flag added. It decodes every instruction and refuses instructions outside
// the instruction sets it knows (MVP, sign extension, saturating
// conversions, bulk memory, reference types, fixed-width SIMD) with an
// error matching ErrUnsupported, rather than guess their length. It does not
// validate the module beyond what it must decode; compile the result to do
// that.
func Instrument(bin []byte) ([]byte, error) {
	if len(bin) < len(header) || !bytes.Equal(bin[:len(header)], header) {
		return nil, fmt.Errorf("%w: no WebAssembly 1.0 header", ErrMalformed)
	}
	var sections []section
	r := reader{b: bin, off: len(header)}
	last := 0
	for !r.done() {
		id := r.byte()
		size := r.u32()
		body := r.bytes(int(size))
		if r.err != nil {
			return nil, r.err
		}
		if id != secCustom {
			pos, ok := order[id]
			if !ok {
				return nil, fmt.Errorf("%w: section id %d", ErrUnsupported, id)
			}
			if pos <= last {
				return nil, fmt.Errorf("%w: section %d out of order or repeated", ErrMalformed, id)
			}
			last = pos
		}
		sections = append(sections, section{id, body})
	}

	var (
		importedGlobals, definedGlobals uint32
		memories                        uint32
		start                           = -1 // index of the start section
		startFunc                       uint32
	)
	for i, s := range sections {
		var err error
		switch s.id {
		case secImport:
			importedGlobals, memories, err = countImports(s.body)
		case secMemory:
			sr := reader{b: s.body}
			memories += sr.u32()
			err = sr.err
		case secGlobal:
			sr := reader{b: s.body}
			definedGlobals = sr.u32()
			err = sr.err
		case secExport:
			err = checkExports(s.body)
		case secStart:
			sr := reader{b: s.body}
			startFunc = sr.u32()
			if err = sr.err; err == nil && !sr.done() {
				err = fmt.Errorf("%w: start section has trailing bytes", ErrMalformed)
			}
			start = i
		}
		if err != nil {
			return nil, fmt.Errorf("section %d: %w", s.id, err)
		}
	}
	if uint64(importedGlobals)+uint64(definedGlobals) >= math.MaxUint32-1 {
		return nil, fmt.Errorf("%w: too many globals", ErrMalformed)
	}
	flag := importedGlobals + definedGlobals
	fuel := flag + 1

	// The new globals: mutable i32s, the flag initialized to 0, the fuel to
	// YieldEvery.
	globals := []byte{0x7f, 0x01, 0x41, 0x00, 0x0b, 0x7f, 0x01, 0x41}
	globals = appendSLEB(globals, YieldEvery)
	globals = append(globals, 0x0b)
	exports := exportEntry(nil, Export, 0x03, flag)
	if start >= 0 {
		exports = exportEntry(exports, StartExport, 0x00, startFunc)
		sections = append(sections[:start:start], sections[start+1:]...)
	}
	if memories == 0 {
		sections = extend(sections, secMemory, 1, []byte{0x01, 0x00, 0x00}) // 0 pages, at most 0
	}
	sections = extend(sections, secGlobal, 2, globals)
	sections = extend(sections, secExport, 1+b2u(start >= 0), exports)

	out := make([]byte, 0, len(bin)+len(bin)/8)
	out = append(out, header...)
	for _, s := range sections {
		body := s.body
		if s.id == secCode {
			var err error
			if body, err = instrumentCode(s.body, check(flag, fuel)); err != nil {
				return nil, fmt.Errorf("section %d: %w", s.id, err)
			}
		}
		out = append(out, s.id)
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	return out, nil
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

func exportEntry(dst []byte, name string, kind byte, index uint32) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(name)))
	dst = append(dst, name...)
	dst = append(dst, kind)
	return binary.AppendUvarint(dst, uint64(index))
}

// extend appends n entries to the vector section id, creating the section
// in its place when the module has none. The section was decoded before, so
// its count is well formed.
func extend(sections []section, id byte, n uint32, entries []byte) []section {
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
	body := append(binary.AppendUvarint(nil, uint64(n)), entries...)
	at := len(sections)
	for i, s := range sections {
		if s.id != secCustom && order[s.id] > order[id] {
			at = i
			break
		}
	}
	return append(sections[:at:at], append([]section{{id, body}}, sections[at:]...)...)
}

// check returns the code inserted at every loop head:
//
//	global.get fuel; i32.const 1; i32.sub; global.set fuel
//	global.get fuel; i32.eqz
//	if
//	  i32.const YieldEvery; global.set fuel
//	  i32.const 0; memory.grow 0; drop   ;; runs in Go: preemptible
//	  global.get flag; if; unreachable; end
//	end
func check(flag, fuel uint32) []byte {
	getFuel := binary.AppendUvarint([]byte{0x23}, uint64(fuel))
	setFuel := binary.AppendUvarint([]byte{0x24}, uint64(fuel))
	var b []byte
	b = append(b, getFuel...)
	b = append(b, 0x41, 0x01, 0x6b)
	b = append(b, setFuel...)
	b = append(b, getFuel...)
	b = append(b, 0x45, 0x04, 0x40)
	b = appendSLEB(append(b, 0x41), YieldEvery)
	b = append(b, setFuel...)
	b = append(b, 0x41, 0x00, 0x40, 0x00, 0x1a)
	b = binary.AppendUvarint(append(b, 0x23), uint64(flag))
	b = append(b, 0x04, 0x40, 0x00, 0x0b)
	return append(b, 0x0b)
}

// appendSLEB appends v in signed LEB128, as i32.const wants it.
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

// countImports returns how many globals and memories b imports.
func countImports(b []byte) (globals, memories uint32, err error) {
	r := reader{b: b}
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		r.name()
		r.name()
		switch kind := r.byte(); kind {
		case 0x00: // function: type index
			r.u32()
		case 0x01: // table: reference type, limits
			r.valtype()
			r.limits()
		case 0x02: // memory: limits
			r.limits()
			memories++
		case 0x03: // global: value type, mutability
			r.valtype()
			r.byte()
			globals++
		case 0x04: // tag: attribute, type index
			r.byte()
			r.u32()
		default:
			r.fail(fmt.Errorf("%w: import kind %#x", ErrUnsupported, kind))
		}
	}
	if r.err == nil && !r.done() {
		r.fail(fmt.Errorf("%w: trailing bytes", ErrMalformed))
	}
	return globals, memories, r.err
}

// checkExports refuses a module that already exports one of our names.
func checkExports(b []byte) error {
	r := reader{b: b}
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		name := r.name()
		r.byte()
		r.u32()
		if r.err == nil && (string(name) == Export || string(name) == StartExport) {
			return fmt.Errorf("%w: the module already exports %q", ErrUnsupported, name)
		}
	}
	if r.err == nil && !r.done() {
		r.fail(fmt.Errorf("%w: trailing bytes", ErrMalformed))
	}
	return r.err
}

// instrumentCode inserts check after every loop instruction of every
// function body in the code section b.
func instrumentCode(b []byte, check []byte) ([]byte, error) {
	r := reader{b: b}
	n := r.u32()
	out := make([]byte, 0, len(b)+len(b)/8)
	out = binary.AppendUvarint(out, uint64(n))
	var body []byte
	for i := uint32(0); i < n && r.err == nil; i++ {
		size := r.u32()
		fn := reader{b: r.bytes(int(size))}
		if r.err != nil {
			break
		}
		body = body[:0]
		// Locals: copied as they are.
		for groups := fn.u32(); groups > 0 && fn.err == nil; groups-- {
			fn.u32()
			fn.valtype()
		}
		if fn.err != nil {
			return nil, fmt.Errorf("function body %d locals: %w", i, fn.err)
		}
		body = append(body, fn.b[:fn.off]...)
		var err error
		if body, err = instrumentExpr(body, &fn, check); err != nil {
			return nil, fmt.Errorf("function body %d: %w", i, err)
		}
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	if r.err == nil && !r.done() {
		r.fail(fmt.Errorf("%w: trailing bytes", ErrMalformed))
	}
	return out, r.err
}

// instrumentExpr copies the instructions of a function body from r to dst,
// inserting check after every loop instruction. The body must end with the
// end of its last instruction.
func instrumentExpr(dst []byte, r *reader, check []byte) ([]byte, error) {
	depth := 1 // the function's own block
	for depth > 0 {
		if r.done() {
			return nil, fmt.Errorf("%w: body ends inside a block", ErrMalformed)
		}
		at := r.off
		op := r.byte()
		switch {
		case op == 0x02 || op == 0x03 || op == 0x04: // block, loop, if
			r.blocktype()
			depth++
		case op == 0x0b: // end
			depth--
		case op == 0x0c || op == 0x0d: // br, br_if
			r.u32()
		case op == 0x0e: // br_table
			for n := r.u32(); n > 0 && r.err == nil; n-- {
				r.u32()
			}
			r.u32()
		case op == 0x10: // call
			r.u32()
		case op == 0x11: // call_indirect: type, table
			r.u32()
			r.u32()
		case op == 0x1c: // select t*
			for n := r.u32(); n > 0 && r.err == nil; n-- {
				r.valtype()
			}
		case op >= 0x20 && op <= 0x26: // local.*, global.*, table.get/set
			r.u32()
		case op >= 0x28 && op <= 0x3e: // loads and stores
			r.memarg()
		case op == 0x3f || op == 0x40: // memory.size, memory.grow
			r.memidx()
		case op == 0x41: // i32.const
			r.sleb(32)
		case op == 0x42: // i64.const
			r.sleb(64)
		case op == 0x43: // f32.const
			r.bytes(4)
		case op == 0x44: // f64.const
			r.bytes(8)
		case op <= 0x01 || op == 0x05 || op == 0x0f || op == 0x1a || op == 0x1b || (op >= 0x45 && op <= 0xc4) || op == 0xd1:
			// No immediates: unreachable, nop, else, return, drop, select,
			// numeric, sign extension, ref.is_null.
		case op == 0xd0: // ref.null t
			r.valtype()
		case op == 0xd2: // ref.func
			r.u32()
		case op == 0xfc:
			r.prefixedFC()
		case op == 0xfd:
			r.prefixedFD()
		default:
			return nil, fmt.Errorf("%w: opcode %#02x at body offset %d", ErrUnsupported, op, at)
		}
		if r.err != nil {
			return nil, fmt.Errorf("instruction %#02x at body offset %d: %w", op, at, r.err)
		}
		dst = append(dst, r.b[at:r.off]...)
		if op == 0x03 {
			dst = append(dst, check...)
		}
	}
	if !r.done() {
		return nil, fmt.Errorf("%w: %d bytes after the body's end", ErrMalformed, len(r.b)-r.off)
	}
	return dst, nil
}

// reader decodes a byte slice; the first error sticks and makes every later
// read return zero.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) done() bool { return r.err != nil || r.off >= len(r.b) }

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.fail(fmt.Errorf("%w: unexpected end", ErrMalformed))
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.fail(fmt.Errorf("%w: %d bytes past the end", ErrMalformed, n))
		return nil
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b
}

// uleb reads an unsigned LEB128 of at most bits bits.
func (r *reader) uleb(bits uint) uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if shift+7 > bits && c>>(bits-shift) != 0 {
			// The last byte may only use the bits left and may not
			// continue.
			r.fail(fmt.Errorf("%w: integer too large", ErrMalformed))
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
}

func (r *reader) u32() uint32 { return uint32(r.uleb(32)) }

// sleb skips a signed LEB128 of at most bits bits.
func (r *reader) sleb(bits uint) {
	for shift := uint(0); ; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return
		}
		if shift >= bits {
			r.fail(fmt.Errorf("%w: integer too long", ErrMalformed))
			return
		}
		if c&0x80 == 0 {
			return
		}
	}
}

func (r *reader) name() []byte { return r.bytes(int(r.u32())) }

// valtype reads a number, vector or reference type (one byte).
func (r *reader) valtype() {
	switch t := r.byte(); t {
	case 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
	default:
		r.fail(fmt.Errorf("%w: value type %#02x", ErrUnsupported, t))
	}
}

func (r *reader) blocktype() {
	if r.off < len(r.b) {
		switch r.b[r.off] {
		case 0x40, 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f:
			r.off++
			return
		}
	}
	r.sleb(33) // a type index
}

func (r *reader) limits() {
	flags := r.byte()
	if flags > 0x03 {
		r.fail(fmt.Errorf("%w: limits flags %#02x", ErrUnsupported, flags))
		return
	}
	r.u32()
	if flags&1 != 0 {
		r.u32()
	}
}

func (r *reader) memarg() {
	if align := r.u32(); align >= 0x40 {
		r.fail(fmt.Errorf("%w: memory index in memarg (multiple memories)", ErrUnsupported))
	}
	r.u32()
}

func (r *reader) memidx() {
	if idx := r.byte(); idx != 0 && r.err == nil {
		r.fail(fmt.Errorf("%w: memory index %d (multiple memories)", ErrUnsupported, idx))
	}
}

// prefixedFC reads the rest of a 0xFC instruction: saturating conversions,
// bulk memory and table operations.
func (r *reader) prefixedFC() {
	switch sub := r.u32(); {
	case sub <= 7: // trunc_sat
	case sub == 8: // memory.init data, mem
		r.u32()
		r.memidx()
	case sub == 9: // data.drop
		r.u32()
	case sub == 10: // memory.copy mem mem
		r.memidx()
		r.memidx()
	case sub == 11: // memory.fill mem
		r.memidx()
	case sub == 12 || sub == 14: // table.init elem table, table.copy table table
		r.u32()
		r.u32()
	case sub == 13 || (sub >= 15 && sub <= 17): // elem.drop, table.grow/size/fill
		r.u32()
	default:
		if r.err == nil {
			r.fail(fmt.Errorf("%w: opcode 0xfc %d", ErrUnsupported, sub))
		}
	}
}

// prefixedFD reads the rest of a fixed-width SIMD (0xFD) instruction.
func (r *reader) prefixedFD() {
	switch sub := r.u32(); {
	case r.err != nil:
	case sub <= 11 || sub == 92 || sub == 93: // loads, stores, load zero
		r.memarg()
	case sub == 12 || sub == 13: // v128.const, i8x16.shuffle
		r.bytes(16)
	case sub >= 21 && sub <= 34: // extract_lane, replace_lane
		r.byte()
	case sub >= 84 && sub <= 91: // load_lane, store_lane
		r.memarg()
		r.byte()
	case sub <= 255 && !fdUnassigned(sub):
	default:
		r.fail(fmt.Errorf("%w: opcode 0xfd %d", ErrUnsupported, sub))
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
