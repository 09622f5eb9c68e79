package wasm

import (
	"fmt"

	"github.com/tetratelabs/wazero/api"
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

type signature struct{ params, results []api.ValueType }

// requiredExports are the exports every module must have, with their types.
var requiredExports = map[string]signature{
	exportInit:       {nil, nil},
	exportABIVersion: {nil, []api.ValueType{i32}},
	exportHandlers:   {nil, []api.ValueType{i64}},
	exportExchange:   {[]api.ValueType{i32}, []api.ValueType{i32}},
	exportCall:       {[]api.ValueType{i32, i32}, []api.ValueType{i64}},
	exportSelfTest:   {nil, []api.ValueType{i64}},
	exportMigrate:    {[]api.ValueType{i32}, []api.ValueType{i64}},
	exportYield:      {[]api.ValueType{i32}, []api.ValueType{i64}},
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

func sameTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func formatSig(params, results []api.ValueType) string {
	name := func(ts []api.ValueType) string {
		s := "("
		for i, t := range ts {
			if i > 0 {
				s += ","
			}
			s += api.ValueTypeName(t)
		}
		return s + ")"
	}
	return fmt.Sprintf("%s -> %s", name(params), name(results))
}
