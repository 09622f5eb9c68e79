// Command noexport is a broken pricing module: it is a plain WASI reactor
// that does not use the hotswap guest SDK, so the ABI exports are missing.
// The host refuses it at load (check "exports", ErrMissingExport).
package main

//go:wasmexport quote
func quote(qty int32) int64 { return int64(qty) * 100 }

func main() {}
