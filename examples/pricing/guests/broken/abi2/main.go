// Command abi2 is a broken pricing module: it implements the exports of a
// future guest ABI 2.0 by hand. The host refuses it at load (check "abi",
// ErrABIMismatch) because it speaks ABI 1.x.
package main

//go:wasmexport hotswap_abi_version
func abiVersion() uint32 { return 2 << 16 }

//go:wasmexport hotswap_handlers
func handlers() uint64 { return 0 }

//go:wasmexport hotswap_exchange
func exchange(size uint32) uint32 { return 0 }

//go:wasmexport hotswap_call
func call(id, n uint32) uint64 { return 0 }

//go:wasmexport hotswap_selftest
func selfTest() uint64 { return 0 }

//go:wasmexport hotswap_migrate
func migrate(n uint32) uint64 { return 0 }

//go:wasmexport hotswap_yield
func yield(full uint32) uint64 { return 0 }

func main() {}
