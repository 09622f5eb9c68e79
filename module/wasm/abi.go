package wasm

import (
	"fmt"

	"github.com/tetratelabs/wazero/api"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm/internal/guard"
)

// ABIMajor is the guest ABI major this host speaks (see package guest).
const ABIMajor = 1

// Guest exports, see guest/abi_wasip1.go for their meaning.
const (
	exportInit       = "_initialize"
	exportABIVersion = "hotswap_abi_version"
	exportHandlers   = "hotswap_handlers"
	exportExchange   = "hotswap_exchange"
	exportCall       = "hotswap_call"
	exportSelfTest   = "hotswap_selftest"
	exportMigrate    = "hotswap_migrate"
	exportYield      = "hotswap_yield"
)

// hostModule is the import module that holds hotswap's host functions.
const hostModule = "hotswap"

var (
	i32 = api.ValueTypeI32
	i64 = api.ValueTypeI64
)

// requiredExports are the exports every module must have, with their types.
var requiredExports = []struct {
	name string
	sig  guard.FuncType
}{
	{exportInit, sig(nil, nil)},
	{exportABIVersion, sig(nil, []api.ValueType{i32})},
	{exportHandlers, sig(nil, []api.ValueType{i64})},
	{exportExchange, sig([]api.ValueType{i32}, []api.ValueType{i32})},
	{exportCall, sig([]api.ValueType{i32, i32}, []api.ValueType{i64})},
	{exportSelfTest, sig(nil, []api.ValueType{i64})},
	{exportMigrate, sig([]api.ValueType{i32}, []api.ValueType{i64})},
	{exportYield, sig([]api.ValueType{i32}, []api.ValueType{i64})},
}

func sig(params, results []api.ValueType) guard.FuncType { return signatureOf(params, results) }

// signatureOf converts wazero's value types (the binary encoding) to a
// signature.
func signatureOf(params, results []api.ValueType) guard.FuncType {
	conv := func(ts []api.ValueType) []guard.ValType {
		out := make([]guard.ValType, len(ts))
		for i, t := range ts {
			out[i] = guard.ValType(t)
		}
		return out
	}
	return guard.FuncType{Params: conv(params), Results: conv(results)}
}

// checkExports refuses a module without the guest ABI's exports, or with
// one of the wrong type, or without a memory.
func checkExports(m *guard.Module) error {
	if _, ok := m.ExportedFunc(exportInit); !ok {
		if _, cmd := m.ExportedFunc("_start"); cmd {
			return module.Reject("exports", fmt.Errorf("%w: the module is a WASI command; build it as a reactor with -buildmode=c-shared", module.ErrMissingExport))
		}
	}
	for _, e := range requiredExports {
		got, ok := m.ExportedFunc(e.name)
		if !ok {
			return module.Reject("exports", fmt.Errorf("%w: %s (is the module built with the hotswap guest SDK?)", module.ErrMissingExport, e.name))
		}
		if !got.Equal(e.sig) {
			return module.Reject("exports", fmt.Errorf("%w: %s has type %s, want %s", module.ErrMissingExport, e.name, got, e.sig))
		}
	}
	if _, ok := m.MemoryPages(); !ok {
		return module.Reject("exports", fmt.Errorf("%w: the module has no memory", module.ErrMissingExport))
	}
	return nil
}

// Packed results: address in bits 32..63, status in bits 30..31, length in
// bits 0..29.
const (
	statusOK    = 0
	statusError = 1
	lengthMask  = 1<<30 - 1
)

func unpack(r uint64) (addr, status, length uint32) {
	return uint32(r >> 32), uint32(r>>30) & 3, uint32(r & lengthMask)
}
