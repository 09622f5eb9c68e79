//go:build !linux

package wasm

import "github.com/tetratelabs/wazero/experimental"

// allocateMemory is nil where guest memory is a Go slice that wazero grows
// (see memory_linux.go for why Linux maps it instead).
var allocateMemory experimental.MemoryAllocator
