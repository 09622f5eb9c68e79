package hostile

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Value types, as their binary encoding.
const (
	I32       = 0x7f
	I64       = 0x7e
	FuncRef   = 0x70
	ExternRef = 0x6f
)

// Kinds of imports and exports.
const (
	KindFunc   = 0x00
	KindTable  = 0x01
	KindMemory = 0x02
	KindGlobal = 0x03
)

// Builder assembles a WebAssembly module. Imports must be added before the
// functions, whose indices follow them. The zero value is an empty module.
type Builder struct {
	types   [][]byte
	imports [][]byte
	// importedFuncs counts function imports; funcs holds the type of every
	// declared function and codes its body (nil until Body).
	importedFuncs int
	funcs         []uint32
	codes         [][]byte
	tables        [][]byte
	memories      [][]byte
	globals       [][]byte
	exports       [][]byte
	start         []byte
	elems         [][]byte
	data          [][]byte
	customs       [][]byte
}

// Type returns the index of the function type params -> results, adding it.
func (b *Builder) Type(params, results []byte) uint32 {
	t := append(append([]byte{0x60}, vec(params)...), vec(results)...)
	for i, u := range b.types {
		if bytes.Equal(t, u) {
			return uint32(i)
		}
	}
	b.types = append(b.types, t)
	return uint32(len(b.types) - 1)
}

// ImportFunc imports a function and returns its index.
func (b *Builder) ImportFunc(module, name string, params, results []byte) uint32 {
	if len(b.funcs) > 0 {
		panic("hostile: imports must come before functions")
	}
	t := b.Type(params, results)
	b.imports = append(b.imports, cat(Name(module), Name(name), []byte{KindFunc}, U(uint64(t))))
	b.importedFuncs++
	return uint32(b.importedFuncs - 1)
}

// Import adds an import of another kind; desc is its type, encoded.
func (b *Builder) Import(module, name string, kind byte, desc []byte) {
	b.imports = append(b.imports, cat(Name(module), Name(name), []byte{kind}, desc))
}

// Declare declares a function and returns its index; Body gives its code.
func (b *Builder) Declare(params, results []byte) uint32 {
	b.funcs = append(b.funcs, b.Type(params, results))
	b.codes = append(b.codes, nil)
	return uint32(b.importedFuncs + len(b.funcs) - 1)
}

// Body sets the code of declared function f: its locals (one per type
// given) and its instructions, to which the final end is added.
func (b *Builder) Body(f uint32, locals []byte, code ...[]byte) {
	var l []byte
	l = append(l, U(uint64(len(locals)))...)
	for _, t := range locals {
		l = append(l, 0x01, t)
	}
	b.codes[int(f)-b.importedFuncs] = cat(l, cat(code...), []byte{End})
}

// Func declares a function with its code and returns its index.
func (b *Builder) Func(params, results, locals []byte, code ...[]byte) uint32 {
	f := b.Declare(params, results)
	b.Body(f, locals, code...)
	return f
}

// Export exports index of the given kind under name.
func (b *Builder) Export(name string, kind byte, index uint32) {
	b.exports = append(b.exports, cat(Name(name), []byte{kind}, U(uint64(index))))
}

// Memory adds a memory of min pages (and at most max, when max ≥ 0) and
// exports it as "memory".
func (b *Builder) Memory(min uint32, max int64) {
	b.memories = append(b.memories, limits(min, max))
	b.Export("memory", KindMemory, uint32(len(b.memories)-1))
}

// Table adds a table of ref type with min entries (and at most max, when
// max ≥ 0) and returns its index.
func (b *Builder) Table(ref byte, min uint32, max int64) uint32 {
	b.tables = append(b.tables, append([]byte{ref}, limits(min, max)...))
	return uint32(len(b.tables) - 1)
}

// Global adds a global of type t with the constant initializer init (its
// end added) and returns its index.
func (b *Builder) Global(t byte, mutable bool, init []byte) uint32 {
	mut := byte(0)
	if mutable {
		mut = 1
	}
	b.globals = append(b.globals, cat([]byte{t, mut}, init, []byte{End}))
	return uint32(len(b.globals) - 1)
}

// Start makes f the start function.
func (b *Builder) Start(f uint32) { b.start = U(uint64(f)) }

// Elem adds an active element segment putting funcs into table 0 at offset.
func (b *Builder) Elem(offset int32, funcs ...uint32) {
	e := cat([]byte{0x00}, I32Const(offset), []byte{End}, U(uint64(len(funcs))))
	for _, f := range funcs {
		e = append(e, U(uint64(f))...)
	}
	b.elems = append(b.elems, e)
}

// Data adds an active data segment writing data at offset in memory 0.
func (b *Builder) Data(offset int32, data []byte) {
	b.data = append(b.data, cat([]byte{0x00}, I32Const(offset), []byte{End}, U(uint64(len(data))), data))
}

// Custom adds a custom section.
func (b *Builder) Custom(name string, body []byte) {
	b.customs = append(b.customs, cat(Name(name), body))
}

// Bytes returns the module.
func (b *Builder) Bytes() []byte {
	var funcs [][]byte
	for _, t := range b.funcs {
		funcs = append(funcs, U(uint64(t)))
	}
	var codes [][]byte
	for i, c := range b.codes {
		if c == nil {
			panic(fmt.Sprintf("hostile: function %d declared without a body", b.importedFuncs+i))
		}
		codes = append(codes, cat(U(uint64(len(c))), c))
	}
	out := Header()
	for _, s := range []struct {
		id      byte
		entries [][]byte
	}{{1, b.types}, {2, b.imports}, {3, funcs}, {4, b.tables}, {5, b.memories}, {6, b.globals}, {7, b.exports}} {
		if len(s.entries) > 0 {
			out = append(out, Section(s.id, Vec(s.entries...))...)
		}
	}
	if b.start != nil {
		out = append(out, Section(8, b.start)...)
	}
	if len(b.elems) > 0 {
		out = append(out, Section(9, Vec(b.elems...))...)
	}
	if len(codes) > 0 {
		out = append(out, Section(10, Vec(codes...))...)
	}
	if len(b.data) > 0 {
		out = append(out, Section(11, Vec(b.data...))...)
	}
	for _, c := range b.customs {
		out = append(out, Section(0, c)...)
	}
	return out
}

// Encoding helpers.

// Header returns the module header.
func Header() []byte { return []byte("\x00asm\x01\x00\x00\x00") }

// Section returns a section with its id and size.
func Section(id byte, body ...[]byte) []byte {
	b := cat(body...)
	return cat([]byte{id}, U(uint64(len(b))), b)
}

// Vec prefixes the concatenated entries with their count.
func Vec(entries ...[]byte) []byte { return cat(U(uint64(len(entries))), cat(entries...)) }

func vec(types []byte) []byte { return cat(U(uint64(len(types))), types) }

// Name encodes a name.
func Name(s string) []byte { return cat(U(uint64(len(s))), []byte(s)) }

// U encodes an unsigned LEB128.
func U(v uint64) []byte { return binary.AppendUvarint(nil, v) }

// S encodes a signed LEB128.
func S(v int64) []byte {
	var dst []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(dst, c)
		}
		dst = append(dst, c|0x80)
	}
}

func limits(min uint32, max int64) []byte {
	if max < 0 {
		return cat([]byte{0x00}, U(uint64(min)))
	}
	return cat([]byte{0x01}, U(uint64(min)), U(uint64(max)))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// Instructions.

// Opcodes used by the cases.
const (
	Unreachable  = 0x00
	Block        = 0x02
	Loop         = 0x03
	If           = 0x04
	Else         = 0x05
	End          = 0x0b
	Br           = 0x0c
	BrIf         = 0x0d
	BrTable      = 0x0e
	Return       = 0x0f
	Call         = 0x10
	CallIndirect = 0x11
	Drop         = 0x1a
	LocalGet     = 0x20
	LocalSet     = 0x21
	LocalTee     = 0x22
	GlobalGet    = 0x23
	GlobalSet    = 0x24
	MemoryGrow   = 0x40
	I32Eqz       = 0x45
	I32Eq        = 0x46
	I32Add       = 0x6a
	I32Sub       = 0x6b
	I64Or        = 0x84
	I64Shl       = 0x86
	I64ExtendU   = 0xad
	Void         = 0x40 // the empty block type
)

// Op encodes an instruction with unsigned immediates.
func Op(op byte, imms ...uint64) []byte {
	b := []byte{op}
	for _, v := range imms {
		b = append(b, U(v)...)
	}
	return b
}

// I32Const encodes i32.const v.
func I32Const(v int32) []byte { return append([]byte{0x41}, S(int64(v))...) }

// I64Const encodes i64.const v.
func I64Const(v int64) []byte { return append([]byte{0x42}, S(v)...) }

// Code concatenates instructions.
func Code(parts ...[]byte) []byte { return cat(parts...) }

// Repeat repeats code n times.
func Repeat(code []byte, n int) []byte { return bytes.Repeat(code, n) }
