package hostile

import "strings"

// Guest memory layout: handler names at NamesAddr, scratch space at
// ScratchAddr, the exchange buffer from ExchangeAddr to the end of memory.
const (
	NamesAddr    = 16
	ScratchAddr  = 1024
	ExchangeAddr = 4096
)

// ABIVersion is the guest ABI version a Guest speaks unless told otherwise.
const ABIVersion = 1 << 16

// Guest assembles a module that speaks the hotswap guest ABI (see package
// guest) with hand-written behaviour: each export does what its field says,
// or the least it must. Add imports and helper functions through Builder
// first, then handlers, then call Bytes once.
type Guest struct {
	Builder
	// Pages is the memory size in 64 KiB pages; 0 means 2.
	Pages uint32
	// ABI is what hotswap_abi_version answers; 0 means ABIVersion.
	ABI int32
	// Code of the exports, without the final end; nil means the default:
	// nothing for Init, an empty success for SelfTest, Migrate and Yield.
	// Init is () -> (), SelfTest () -> i64, Migrate and Yield i32 -> i64,
	// Handlers () -> i64, Exchange i32 -> i32.
	Init, SelfTest, Migrate, Yield, Handlers, Exchange []byte
	// Mistype names an export to give the type () -> () instead.
	Mistype string

	names    []string
	handlers []uint32
}

// Handle adds a handler: its code gets the input's length as local 0 (the
// input is at ExchangeAddr) and leaves a packed i64 result (see OK, Echo).
func (g *Guest) Handle(name string, locals []byte, code ...[]byte) {
	g.names = append(g.names, name)
	g.handlers = append(g.handlers, g.Func([]byte{I32}, []byte{I64}, locals, code...))
}

// OK is a handler's or hook's empty successful result.
func OK() []byte { return I64Const(0) }

// Echo is a handler's result returning its input.
func Echo() []byte {
	return Code(I64Const(ExchangeAddr<<32), Op(LocalGet, 0), []byte{I64ExtendU, I64Or})
}

// Bytes adds the guest ABI's exports and returns the module.
func (g *Guest) Bytes() []byte {
	pages := g.Pages
	if pages == 0 {
		pages = 2
	}
	abi := g.ABI
	if abi == 0 {
		abi = ABIVersion
	}
	names := strings.Join(g.names, "\n")
	g.Memory(pages, -1)
	g.Data(NamesAddr, []byte(names))
	or := func(code, def []byte) []byte {
		if code != nil {
			return code
		}
		return def
	}
	none, i32, i64 := []byte{}, []byte{I32}, []byte{I64}
	export := func(name string, params, results []byte, code []byte) {
		if name == g.Mistype {
			params, results, code = nil, nil, nil
		}
		g.Export(name, KindFunc, g.Func(params, results, nil, code))
	}
	export("_initialize", none, none, or(g.Init, nil))
	export("hotswap_abi_version", none, i32, I32Const(abi))
	export("hotswap_handlers", none, i64, or(g.Handlers, I64Const(NamesAddr<<32|int64(len(names)))))
	export("hotswap_exchange", i32, i32, or(g.Exchange, I32Const(ExchangeAddr)))
	var call []byte
	for i, h := range g.handlers {
		call = append(call, Code(Op(LocalGet, 0), I32Const(int32(i)), []byte{I32Eq, If, Void},
			Op(LocalGet, 1), Op(Call, uint64(h)), []byte{Return, End})...)
	}
	call = append(call, I64Const(1<<30)...) // an error without text: unknown handler
	export("hotswap_call", []byte{I32, I32}, i64, call)
	export("hotswap_selftest", none, i64, or(g.SelfTest, OK()))
	export("hotswap_migrate", i32, i64, or(g.Migrate, OK()))
	export("hotswap_yield", i32, i64, or(g.Yield, OK()))
	return g.Builder.Bytes()
}
