//go:build !wasip1

package guest

import (
	"fmt"
	"os"
	"strconv"
	"sync"
)

// Outside WebAssembly the host functions are served in-process so module
// code can be unit tested natively; see Invoke.

var local struct {
	mu sync.Mutex // protects kv
	kv map[string][]byte
}

func logMessage(level Level, msg string) { fmt.Fprintf(os.Stderr, "guest %d: %s\n", level, msg) }

func kvGet(key string) ([]byte, bool) {
	local.mu.Lock()
	defer local.mu.Unlock()
	v, ok := local.kv[key]
	return append([]byte(nil), v...), ok
}

func kvSet(key string, val []byte) {
	local.mu.Lock()
	defer local.mu.Unlock()
	if local.kv == nil {
		local.kv = make(map[string][]byte)
	}
	local.kv[key] = append([]byte(nil), val...)
}

func kvDelete(key string) {
	local.mu.Lock()
	defer local.mu.Unlock()
	delete(local.kv, key)
}

func kvAdd(key string, delta int64) int64 {
	local.mu.Lock()
	defer local.mu.Unlock()
	if local.kv == nil {
		local.kv = make(map[string][]byte)
	}
	n, _ := strconv.ParseInt(string(local.kv[key]), 10, 64)
	n += delta
	local.kv[key] = strconv.AppendInt(nil, n, 10)
	return n
}

// Invoke calls the handler registered under name in-process, as the host
// would. It exists only outside GOOS=wasip1, for unit tests of module code.
func Invoke(name string, in []byte) ([]byte, error) {
	for _, e := range handlers {
		if e.name == name {
			return e.fn(in)
		}
	}
	return nil, fmt.Errorf("guest: no handler %q", name)
}

// RunSelfTest runs the registered self-test in-process. It exists only
// outside GOOS=wasip1.
func RunSelfTest() error {
	if selfTest == nil {
		return nil
	}
	return selfTest()
}

// RunMigrate runs the registered migrate hook in-process. It exists only
// outside GOOS=wasip1.
func RunMigrate(from string) error {
	if migrate == nil {
		return nil
	}
	return migrate(from)
}
