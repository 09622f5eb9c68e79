package guard

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrMalformed is matched by the error Parse returns for bytes that are not
// a well-formed WebAssembly module.
var ErrMalformed = errors.New("malformed WebAssembly module")

// ErrUnsupported is matched by the error Parse returns for a module that
// uses a feature the checker does not know (threads, tail calls,
// exceptions, GC, multiple memories, 64-bit memories and tables) or a name
// it reserves for itself.
var ErrUnsupported = errors.New("unsupported WebAssembly feature")

// ErrLimit is matched by the error Parse returns for a module that declares
// more of something than Limits allows; the error is a *LimitError.
var ErrLimit = errors.New("module exceeds a limit")

// LimitError reports which limit a module exceeds.
type LimitError struct {
	What     string // what was counted: "functions", "table entries", …
	Declared uint64 // how many the module declares
	Limit    uint64
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%d %s declared; the limit is %d", e.Declared, e.What, e.Limit)
}

// Is makes a LimitError match ErrLimit.
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// Limits bounds what Parse accepts. Each bounds memory or time that wazero
// or an instance would spend on the module; every field must be positive.
type Limits struct {
	ModuleBytes     int    // the whole binary
	Types           int    // function types
	Params          int    // parameters, and results, of one function type
	Functions       int    // imported and defined functions
	Imports         int    // imports of every kind
	Exports         int    // exports of every kind
	Globals         int    // imported and defined globals
	Tables          int    // imported and defined tables
	TableEntries    uint32 // the declared minimum sizes of all tables, summed
	MemoryPages     uint32 // the declared minimum size of the memory
	DataSegments    int    // data segments
	ElementSegments int    // element segments
	Locals          int    // declared locals of one function
	BodyBytes       int    // one function body
	Nesting         int    // blocks, loops and ifs open at once in a body
}

// ValType is a WebAssembly value type.
type ValType byte

// Value types.
const (
	I32       ValType = 0x7f
	I64       ValType = 0x7e
	F32       ValType = 0x7d
	F64       ValType = 0x7c
	V128      ValType = 0x7b
	FuncRef   ValType = 0x70
	ExternRef ValType = 0x6f
)

// String returns the type's name in the text format.
func (t ValType) String() string {
	switch t {
	case I32:
		return "i32"
	case I64:
		return "i64"
	case F32:
		return "f32"
	case F64:
		return "f64"
	case V128:
		return "v128"
	case FuncRef:
		return "funcref"
	case ExternRef:
		return "externref"
	}
	return fmt.Sprintf("type(%#x)", byte(t))
}

// FuncType is a function signature.
type FuncType struct{ Params, Results []ValType }

// Equal reports whether t and u are the same signature.
func (t FuncType) Equal(u FuncType) bool {
	return bytes.Equal(valBytes(t.Params), valBytes(u.Params)) && bytes.Equal(valBytes(t.Results), valBytes(u.Results))
}

func valBytes(ts []ValType) []byte {
	b := make([]byte, len(ts))
	for i, t := range ts {
		b[i] = byte(t)
	}
	return b
}

// String returns the signature as "(i32,i32) -> (i64)".
func (t FuncType) String() string {
	list := func(ts []ValType) string {
		s := "("
		for i, v := range ts {
			if i > 0 {
				s += ","
			}
			s += v.String()
		}
		return s + ")"
	}
	return list(t.Params) + " -> " + list(t.Results)
}

// Kind is the kind of an import or export.
type Kind byte

// Kinds of imports and exports.
const (
	KindFunc   Kind = 0
	KindTable  Kind = 1
	KindMemory Kind = 2
	KindGlobal Kind = 3
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindFunc:
		return "function"
	case KindTable:
		return "table"
	case KindMemory:
		return "memory"
	case KindGlobal:
		return "global"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// Import is one import.
type Import struct {
	Module, Name string
	Kind         Kind
	Type         FuncType // of a function import
}

// Export is one export.
type Export struct {
	Name  string
	Kind  Kind
	Index uint32
}

// limits of a table or memory.
type limits struct {
	min, max uint32
	hasMax   bool
	ref      ValType // of a table
}

// section is a section of the module, as a view of its bytes.
type section struct {
	id   byte
	body []byte
}

// Section IDs.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
)

// order is the position each known section must appear in, by ID. The tag
// section (13, exceptions) is not supported.
var order = [...]int{secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5, secGlobal: 7,
	secExport: 8, secStart: 9, secElement: 10, secDataCount: 11, secCode: 12, secData: 13}

// body is what Parse learned about one function body.
type body struct {
	bytes  []byte // the whole body, locals included
	code   int    // offset of the first instruction in bytes
	locals uint32 // declared locals
	instrs uint32 // instructions
	// calls reports a call to a defined function or a call_indirect: a
	// body without is a leaf, which cannot recurse.
	calls        bool
	callIndirect bool
	bulk         bool // has an instruction whose time grows with an operand
	memoryGrow   bool
	tableGrow    bool
}

// Module is a module that passed Parse: well formed and within its limits.
// Parse checks the structure of the binary, every count against the bytes
// present and the limits, and every index into a space the instrumenter
// extends (types, functions, globals, locals, labels, memories); typing
// instructions is left to wazero.
type Module struct {
	bin      []byte
	sections []section

	types   []FuncType
	funcs   []uint32 // the type index of every function, imported ones first
	imports []Import
	// importedFuncs, importedGlobals count imported functions and globals.
	importedFuncs, importedGlobals int
	globals                        int // imported and defined
	tables                         []limits
	memories                       []limits
	exports                        []Export
	start                          int64 // the start function, or -1
	bodies                         []body
	// importsInTables reports that an imported function may be called
	// through a table: an element segment or a ref.func names one.
	importsInTables bool
}

// Types returns the module's function types.
func (m *Module) Types() []FuncType { return m.types }

// Imports returns the module's imports.
func (m *Module) Imports() []Import { return m.imports }

// Exports returns the module's exports.
func (m *Module) Exports() []Export { return m.exports }

// FuncType returns the signature of function index.
func (m *Module) FuncType(index uint32) FuncType { return m.types[m.funcs[index]] }

// ExportedFunc returns the signature of the function exported as name.
func (m *Module) ExportedFunc(name string) (FuncType, bool) {
	for _, e := range m.exports {
		if e.Name == name && e.Kind == KindFunc {
			return m.FuncType(e.Index), true
		}
	}
	return FuncType{}, false
}

// TableEntries returns the declared minimum sizes of the module's tables,
// summed: the entries an instance starts with.
func (m *Module) TableEntries() uint64 {
	var n uint64
	for _, t := range m.tables {
		n += uint64(t.min)
	}
	return n
}

// GrowsTables reports whether the module has a table.grow instruction.
func (m *Module) GrowsTables() bool {
	for _, b := range m.bodies {
		if b.tableGrow {
			return true
		}
	}
	return false
}

// Functions returns the number of functions, imported ones included.
func (m *Module) Functions() int { return len(m.funcs) }

// MemoryPages returns the declared minimum size of the memory in 64 KiB
// pages, and false if the module has no memory.
func (m *Module) MemoryPages() (uint32, bool) {
	if len(m.memories) == 0 {
		return 0, false
	}
	return m.memories[0].min, true
}

// Reserved names the instrumenter exports; a module exporting one of them
// is refused.
var reserved = []string{StopExport, SignalExport, StartExport}

// Parse checks bin, in time and memory proportional to its size, and
// returns the module. Its errors match ErrMalformed, ErrUnsupported or
// ErrLimit and name the section and entry at fault.
func Parse(bin []byte, lim Limits) (*Module, error) {
	if len(bin) > lim.ModuleBytes {
		return nil, &LimitError{What: "module bytes", Declared: uint64(len(bin)), Limit: uint64(lim.ModuleBytes)}
	}
	if len(bin) < len(header) || !bytes.Equal(bin[:len(header)], header) {
		return nil, fmt.Errorf("%w: no WebAssembly 1.0 header", ErrMalformed)
	}
	m := &Module{bin: bin, start: -1}
	r := reader{b: bin, off: len(header)}
	last := 0
	for !r.done() {
		at := r.off
		id := r.byte()
		size := r.u32()
		body := r.bytes(int(size))
		if r.err != nil {
			return nil, fmt.Errorf("section at offset %d: %w", at, r.err)
		}
		if id != secCustom {
			if int(id) >= len(order) || order[id] == 0 {
				return nil, fmt.Errorf("%w: section id %d", ErrUnsupported, id)
			}
			if order[id] <= last {
				return nil, fmt.Errorf("%w: section %d out of order or repeated", ErrMalformed, id)
			}
			last = order[id]
		}
		m.sections = append(m.sections, section{id, body})
	}
	p := parser{m: m, lim: lim, dataCount: -1}
	for _, s := range m.sections {
		if err := p.section(s); err != nil {
			return nil, fmt.Errorf("%s section: %w", sectionName(s.id), err)
		}
	}
	if defined := len(m.funcs) - m.importedFuncs; defined != len(m.bodies) {
		return nil, fmt.Errorf("%w: %d functions declared but %d bodies", ErrMalformed, defined, len(m.bodies))
	}
	if p.dataCount >= 0 && p.dataCount != p.dataSegments {
		return nil, fmt.Errorf("%w: data count %d but %d data segments", ErrMalformed, p.dataCount, p.dataSegments)
	}
	return m, nil
}

func sectionName(id byte) string {
	names := [...]string{"custom", "type", "import", "function", "table", "memory", "global", "export", "start",
		"element", "code", "data", "data count"}
	if int(id) < len(names) {
		return names[id]
	}
	return fmt.Sprintf("unknown (%d)", id)
}

// parser holds the state of Parse across sections.
type parser struct {
	m   *Module
	lim Limits
	// dataCount is the data count section's value, -1 without one.
	dataCount, dataSegments int
	elemSegments            int
}

func (p *parser) section(s section) error {
	r := &reader{b: s.body}
	m := p.m
	switch s.id {
	case secCustom:
		if name := r.name(); name == "name" && r.err == nil {
			checkNames(r)
		}
		return r.err // other custom sections are skipped by wazero
	case secType:
		n := r.count(3, p.lim.Types, "function types")
		m.types = make([]FuncType, 0, n)
		for i := 0; i < n && r.err == nil; i++ {
			if form := r.byte(); form != 0x60 && r.err == nil {
				r.failf(ErrUnsupported, "type %d has form %#x", i, form)
			}
			var t FuncType
			t.Params = p.valtypes(r, "parameters")
			t.Results = p.valtypes(r, "results")
			m.types = append(m.types, t)
		}
	case secImport:
		n := r.count(4, p.lim.Imports, "imports")
		m.imports = make([]Import, 0, n)
		for i := 0; i < n && r.err == nil; i++ {
			imp := Import{Module: r.name(), Name: r.name(), Kind: Kind(r.byte())}
			switch imp.Kind {
			case KindFunc:
				ti := p.typeIndex(r)
				if r.err == nil {
					imp.Type = m.types[ti]
					p.addFunc(r, ti)
					m.importedFuncs++
				}
			case KindTable:
				ref := r.reftype()
				p.addTable(r, ref, p.limits(r, true))
			case KindMemory:
				p.addMemory(r, p.limits(r, false))
			case KindGlobal:
				r.valtype()
				p.mutability(r)
				p.addGlobal(r)
				m.importedGlobals++
			default:
				r.failf(ErrUnsupported, "import %d has kind %#x", i, byte(imp.Kind))
			}
			m.imports = append(m.imports, imp)
		}
	case secFunction:
		n := r.count(1, p.lim.Functions, "functions")
		for i := 0; i < n && r.err == nil; i++ {
			p.addFunc(r, p.typeIndex(r))
		}
	case secTable:
		n := r.count(3, p.lim.Tables, "tables")
		for i := 0; i < n && r.err == nil; i++ {
			if r.peek() == 0x40 {
				r.failf(ErrUnsupported, "table %d has an initializer", i)
			}
			ref := r.reftype()
			p.addTable(r, ref, p.limits(r, true))
		}
	case secMemory:
		n := r.count(2, maxInt, "memories")
		for i := 0; i < n && r.err == nil; i++ {
			p.addMemory(r, p.limits(r, false))
		}
	case secGlobal:
		n := r.count(4, p.lim.Globals, "globals")
		for i := 0; i < n && r.err == nil; i++ {
			r.valtype()
			p.mutability(r)
			p.constExpr(r)
			p.addGlobal(r)
		}
	case secExport:
		n := r.count(3, p.lim.Exports, "exports")
		m.exports = make([]Export, 0, n)
		seen := make(map[string]bool, n)
		for i := 0; i < n && r.err == nil; i++ {
			e := Export{Name: r.name(), Kind: Kind(r.byte()), Index: r.u32()}
			if r.err != nil {
				break
			}
			var space int
			switch e.Kind {
			case KindFunc:
				space = len(m.funcs)
			case KindTable:
				space = len(m.tables)
			case KindMemory:
				space = len(m.memories)
			case KindGlobal:
				space = m.globals
			default:
				r.failf(ErrUnsupported, "export %q has kind %#x", e.Name, byte(e.Kind))
			}
			switch {
			case r.err != nil:
			case uint64(e.Index) >= uint64(space):
				r.failf(ErrMalformed, "export %q of %s %d, which does not exist", e.Name, e.Kind, e.Index)
			case seen[e.Name]:
				r.failf(ErrMalformed, "export name %q repeated", e.Name)
			}
			for _, name := range reserved {
				if e.Name == name && r.err == nil {
					r.failf(ErrUnsupported, "export name %q is reserved for the host", e.Name)
				}
			}
			seen[e.Name] = true
			m.exports = append(m.exports, e)
		}
	case secStart:
		f := p.funcIndex(r)
		if r.err == nil {
			if t := m.FuncType(f); len(t.Params) != 0 || len(t.Results) != 0 {
				r.failf(ErrMalformed, "start function %d has type %s", f, t)
			}
			m.start = int64(f)
		}
	case secElement:
		n := r.count(3, p.lim.ElementSegments, "element segments")
		p.elemSegments = n
		for i := 0; i < n && r.err == nil; i++ {
			p.element(r)
		}
	case secDataCount:
		p.dataCount = int(r.u32())
	case secCode:
		n := r.count(2, maxInt, "function bodies")
		if defined := len(m.funcs) - m.importedFuncs; n != defined && r.err == nil {
			r.failf(ErrMalformed, "%d function bodies for %d functions", n, defined)
		}
		m.bodies = make([]body, 0, n)
		for i := 0; i < n && r.err == nil; i++ {
			size := r.u32()
			if r.err == nil && uint64(size) > uint64(p.lim.BodyBytes) {
				return fmt.Errorf("function %d: %w", m.importedFuncs+i, &LimitError{What: "bytes in a function body", Declared: uint64(size), Limit: uint64(p.lim.BodyBytes)})
			}
			b := r.bytes(int(size))
			if r.err != nil {
				break
			}
			bd, err := p.body(m.importedFuncs+i, b)
			if err != nil {
				return fmt.Errorf("function %d: %w", m.importedFuncs+i, err)
			}
			m.bodies = append(m.bodies, bd)
		}
	case secData:
		n := r.count(2, p.lim.DataSegments, "data segments")
		p.dataSegments = n
		for i := 0; i < n && r.err == nil; i++ {
			switch flags := r.u32(); flags {
			case 0, 2:
				if flags == 2 {
					r.memidxU32()
				}
				p.needMemory(r, "an active data segment")
				p.constExpr(r)
			case 1:
			default:
				r.failf(ErrMalformed, "data segment %d has flags %d", i, flags)
			}
			r.bytes(int(r.u32()))
		}
	}
	if r.err == nil && !r.done() {
		r.failf(ErrMalformed, "%d bytes after the last entry", r.left())
	}
	return r.err
}

func (r *reader) memidxU32() {
	if idx := r.u32(); idx != 0 && r.err == nil {
		r.failf(ErrUnsupported, "memory index %d (multiple memories)", idx)
	}
}

func (p *parser) valtypes(r *reader, what string) []ValType {
	n := r.count(1, p.lim.Params, what+" of a function type")
	ts := make([]ValType, n)
	for i := range ts {
		ts[i] = r.valtype()
	}
	return ts
}

func (p *parser) typeIndex(r *reader) uint32 {
	t := r.u32()
	if r.err == nil && uint64(t) >= uint64(len(p.m.types)) {
		r.failf(ErrMalformed, "type index %d of %d", t, len(p.m.types))
	}
	return t
}

func (p *parser) funcIndex(r *reader) uint32 {
	f := r.u32()
	if r.err == nil && uint64(f) >= uint64(len(p.m.funcs)) {
		r.failf(ErrMalformed, "function index %d of %d", f, len(p.m.funcs))
	}
	return f
}

// funcRef reads the index of a function made a reference (element
// segments, ref.func).
func (p *parser) funcRef(r *reader) {
	if f := p.funcIndex(r); int(f) < p.m.importedFuncs {
		p.m.importsInTables = true
	}
}

func (p *parser) addFunc(r *reader, typ uint32) {
	if r.err != nil {
		return
	}
	if len(p.m.funcs) >= p.lim.Functions {
		r.fail(&LimitError{What: "functions", Declared: uint64(len(p.m.funcs) + 1), Limit: uint64(p.lim.Functions)})
		return
	}
	p.m.funcs = append(p.m.funcs, typ)
}

func (p *parser) addGlobal(r *reader) {
	if r.err != nil {
		return
	}
	if p.m.globals >= p.lim.Globals {
		r.fail(&LimitError{What: "globals", Declared: uint64(p.m.globals + 1), Limit: uint64(p.lim.Globals)})
		return
	}
	p.m.globals++
}

func (p *parser) addTable(r *reader, ref ValType, l limits) {
	if r.err != nil {
		return
	}
	l.ref = ref
	if len(p.m.tables) >= p.lim.Tables {
		r.fail(&LimitError{What: "tables", Declared: uint64(len(p.m.tables) + 1), Limit: uint64(p.lim.Tables)})
		return
	}
	p.m.tables = append(p.m.tables, l)
	if n := p.m.TableEntries(); n > uint64(p.lim.TableEntries) {
		r.fail(&LimitError{What: "table entries", Declared: n, Limit: uint64(p.lim.TableEntries)})
	}
}

func (p *parser) addMemory(r *reader, l limits) {
	switch {
	case r.err != nil:
	case len(p.m.memories) > 0:
		r.failf(ErrUnsupported, "a second memory (multiple memories)")
	case l.min > 1<<16 || (l.hasMax && l.max > 1<<16):
		r.failf(ErrMalformed, "memory of more than 65536 pages")
	case l.min > p.lim.MemoryPages:
		r.fail(&LimitError{What: "memory pages", Declared: uint64(l.min), Limit: uint64(p.lim.MemoryPages)})
	default:
		p.m.memories = append(p.m.memories, l)
	}
}

// limits reads the limits of a table or a memory; only 32-bit, unshared
// ones are supported.
func (p *parser) limits(r *reader, table bool) limits {
	var l limits
	flags := r.byte()
	switch {
	case r.err != nil:
		return l
	case flags > 1 && !table && flags <= 3:
		r.failf(ErrUnsupported, "shared memory (threads)")
	case flags > 1:
		r.failf(ErrUnsupported, "limits flags %#x (64-bit addresses)", flags)
	}
	l.min = r.u32()
	if flags&1 != 0 {
		l.max, l.hasMax = r.u32(), true
		if r.err == nil && l.max < l.min {
			r.failf(ErrMalformed, "maximum %d below minimum %d", l.max, l.min)
		}
	}
	return l
}

func (p *parser) mutability(r *reader) {
	if mut := r.byte(); mut > 1 && r.err == nil {
		r.failf(ErrMalformed, "global mutability %#x", mut)
	}
}

func (p *parser) needMemory(r *reader, what string) {
	if len(p.m.memories) == 0 && r.err == nil {
		r.failf(ErrMalformed, "%s without a memory", what)
	}
}

// constExpr reads a constant expression: the instructions allowed in one
// and its end.
func (p *parser) constExpr(r *reader) {
	for r.err == nil {
		switch op := r.byte(); op {
		case opEnd:
			return
		case opI32Const:
			r.sleb(32)
		case opI64Const:
			r.sleb(64)
		case opF32Const:
			r.bytes(4)
		case opF64Const:
			r.bytes(8)
		case opPrefixFD:
			if sub := r.u32(); sub != 12 && r.err == nil {
				r.failf(ErrMalformed, "opcode 0xfd %d in a constant expression", sub)
			}
			r.bytes(16)
		case opRefNull:
			r.reftype()
		case opRefFunc:
			p.funcRef(r)
		case opGlobalGet:
			if g := r.u32(); r.err == nil && uint64(g) >= uint64(p.m.globals) {
				r.failf(ErrMalformed, "global index %d of %d", g, p.m.globals)
			}
		case opI32Add, opI32Sub, 0x6c, 0x7c, 0x7d, 0x7e: // extended constant expressions
		default:
			r.failf(ErrMalformed, "opcode %#02x in a constant expression", op)
		}
	}
}

// element reads one element segment.
func (p *parser) element(r *reader) {
	flags := r.u32()
	if r.err != nil {
		return
	}
	if flags > 7 {
		r.failf(ErrMalformed, "element segment flags %d", flags)
		return
	}
	active, explicitTable, exprs := flags&1 == 0, flags&2 != 0, flags&4 != 0
	if active {
		table := uint32(0)
		if explicitTable {
			table = r.u32()
		}
		if r.err == nil && uint64(table) >= uint64(len(p.m.tables)) {
			r.failf(ErrMalformed, "element segment for table %d of %d", table, len(p.m.tables))
		}
		p.constExpr(r)
	}
	if !active || explicitTable {
		if exprs {
			r.reftype()
		} else if kind := r.byte(); kind != 0 && r.err == nil {
			r.failf(ErrMalformed, "element kind %#x", kind)
		}
	}
	if exprs {
		n := r.count(2, maxInt, "element expressions")
		for range n {
			p.constExpr(r)
		}
		return
	}
	n := r.count(1, maxInt, "element function indices")
	for range n {
		p.funcRef(r)
	}
}

// body checks a function body: its locals, and every instruction's
// encoding and the indices into spaces the instrumenter extends.
func (p *parser) body(fn int, b []byte) (body, error) {
	m := p.m
	bd := body{bytes: b}
	r := &codeReader{reader: reader{b: b}}
	groups := r.count(2, maxInt, "local groups")
	var locals uint64
	for range groups {
		locals += uint64(r.u32())
		r.valtype()
		if r.err == nil && locals > uint64(p.lim.Locals) {
			return bd, &LimitError{What: "locals", Declared: locals, Limit: uint64(p.lim.Locals)}
		}
	}
	if r.err != nil {
		return bd, fmt.Errorf("locals: %w", r.err)
	}
	bd.code, bd.locals = r.off, uint32(locals)
	nlocals := uint64(len(m.FuncType(uint32(fn)).Params)) + locals
	r.labels = 1 // the function's own block
	var in instr
	for r.labels > 0 {
		if r.done() {
			if r.err == nil {
				r.failf(ErrMalformed, "body ends inside a block")
			}
			break
		}
		at := r.off
		r.next(&in)
		if r.err != nil {
			return bd, fmt.Errorf("instruction at body offset %d: %w", at, r.err)
		}
		bd.instrs++
		if r.labels > p.lim.Nesting {
			return bd, &LimitError{What: "nested blocks", Declared: uint64(r.labels), Limit: uint64(p.lim.Nesting)}
		}
		if err := p.instr(&in, &bd, nlocals); err != nil {
			return bd, fmt.Errorf("instruction %#02x at body offset %d: %w", in.op, at, err)
		}
	}
	if r.err == nil && !r.done() {
		r.failf(ErrMalformed, "%d bytes after the body's end", r.left())
	}
	return bd, r.err
}

// instr checks the indices of one instruction and notes in bd what the
// instrumenter needs to know.
func (p *parser) instr(in *instr, bd *body, nlocals uint64) error {
	m := p.m
	check := func(idx uint32, n int, what string) error {
		if uint64(idx) >= uint64(n) {
			return fmt.Errorf("%w: %s index %d of %d", ErrMalformed, what, idx, n)
		}
		return nil
	}
	if in.mem && len(m.memories) == 0 {
		return fmt.Errorf("%w: memory instruction without a memory", ErrMalformed)
	}
	if in.bulk() {
		bd.bulk = true
	}
	switch in.op {
	case opBlock, opLoop, opIf:
		if in.bt >= 0 {
			return check(uint32(min(in.bt, 1<<32-1)), len(m.types), "type")
		}
	case opCall:
		if err := check(in.idx, len(m.funcs), "function"); err != nil {
			return err
		}
		if int(in.idx) >= m.importedFuncs {
			bd.calls = true
		}
	case opCallIndirect:
		bd.calls, bd.callIndirect = true, true
		if err := check(in.idx, len(m.types), "type"); err != nil {
			return err
		}
		return check(in.idx2, len(m.tables), "table")
	case opRefFunc:
		if int(in.idx) < m.importedFuncs {
			m.importsInTables = true
		}
		return check(in.idx, len(m.funcs), "function")
	case opLocalGet, opLocalSet, opLocalTee:
		if uint64(in.idx) >= nlocals {
			return fmt.Errorf("%w: local index %d of %d", ErrMalformed, in.idx, nlocals)
		}
	case opGlobalGet, opGlobalSet:
		return check(in.idx, m.globals, "global")
	case opTableGet, opTableSet:
		return check(in.idx, len(m.tables), "table")
	case opMemoryGrow:
		bd.memoryGrow = true
	case opPrefixFC:
		switch in.sub {
		case fcTableInit:
			return check(in.idx2, len(m.tables), "table")
		case fcTableCopy:
			if err := check(in.idx, len(m.tables), "table"); err != nil {
				return err
			}
			return check(in.idx2, len(m.tables), "table")
		case fcTableGrow:
			bd.tableGrow = true
			return check(in.idx, len(m.tables), "table")
		case fcTableSize, fcTableFill:
			return check(in.idx, len(m.tables), "table")
		}
	}
	return nil
}

// checkNames checks the counts and lengths of the name section's function
// and local name maps, which wazero allocates from before reading them.
func checkNames(r *reader) {
	for !r.done() {
		id := r.byte()
		sub := reader{b: r.bytes(int(r.u32()))}
		if r.err != nil {
			return
		}
		switch id {
		case 1: // function names
			nameMap(&sub)
		case 2: // local names
			n := sub.count(2, maxInt, "functions with local names")
			for range n {
				sub.u32()
				nameMap(&sub)
			}
		}
		if sub.err != nil {
			r.fail(fmt.Errorf("name subsection %d: %w", id, sub.err))
		}
	}
}

func nameMap(r *reader) {
	n := r.count(2, maxInt, "names")
	for range n {
		r.u32()
		r.name()
	}
}
