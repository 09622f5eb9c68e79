//go:build wasip1

package guest

import (
	"runtime"
	"runtime/metrics"
	"unsafe"
)

// The exports below are the whole guest ABI (see package module/wasm for the
// host side). Results that locate bytes in guest memory are packed into one
// uint64 so a call needs a single boundary crossing:
//
//	bits 32..63  address
//	bits 30..31  status (0 ok, 1 error: the bytes are the error text)
//	bits  0..29  length
const (
	statusOK    = 0
	statusError = 1
	maxLength   = 1<<30 - 1
)

var (
	// exchange receives each call's input; the host writes into it directly.
	exchange []byte
	// keep holds the bytes last reported to the host so the garbage
	// collector cannot free them before the host has copied them out.
	keep []byte
)

func pack(b []byte, status uint64) uint64 {
	if len(b) > maxLength {
		return fail("output of " + itoa(len(b)) + " bytes exceeds the ABI limit")
	}
	keep = b
	return uint64(addr(b))<<32 | status<<30 | uint64(len(b))
}

func fail(msg string) uint64 { return pack([]byte(msg), statusError) }

func addr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

//go:wasmexport hotswap_abi_version
func exportABIVersion() uint32 { return ABIVersion }

//go:wasmexport hotswap_handlers
func exportHandlers() uint64 { return pack([]byte(handlerNames()), statusOK) }

//go:wasmexport hotswap_exchange
func exportExchange(size uint32) uint32 {
	if uint32(len(exchange)) < size || len(exchange) == 0 {
		exchange = make([]byte, max(size, 1))
	}
	return addr(exchange)
}

//go:wasmexport hotswap_call
func exportCall(id, n uint32) uint64 {
	if int(id) >= len(handlers) {
		return fail("unknown handler id " + itoa(int(id)))
	}
	if int(n) > len(exchange) {
		return fail("input length exceeds the exchange buffer")
	}
	out, err := handlers[id].fn(exchange[:n:n])
	if err != nil {
		return fail(err.Error())
	}
	return pack(out, statusOK)
}

//go:wasmexport hotswap_selftest
func exportSelfTest() uint64 {
	if selfTest != nil {
		if err := selfTest(); err != nil {
			return fail(err.Error())
		}
	}
	return pack(nil, statusOK)
}

//go:wasmexport hotswap_migrate
func exportMigrate(n uint32) uint64 {
	if migrate != nil {
		if err := migrate(string(exchange[:n])); err != nil {
			return fail(err.Error())
		}
	}
	return pack(nil, statusOK)
}

// allocs reads the bytes allocated since the guest started.
var allocs = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

var allocsAtYield uint64

// exportYield lets the runtime's background work, the garbage collector's
// mark workers above all, run; with full set it runs a whole collection. It
// returns the bytes allocated since the previous yield, which the host uses
// to pace the next one. The host calls it between calls, never during one.
//
//go:wasmexport hotswap_yield
func exportYield(full uint32) uint64 {
	if full != 0 {
		runtime.GC()
	} else {
		// One yield rarely lets a collection cycle finish; a few do,
		// and cost little when nothing else is runnable.
		for range 8 {
			runtime.Gosched()
		}
	}
	metrics.Read(allocs)
	total := allocs[0].Value.Uint64()
	since := total - allocsAtYield
	allocsAtYield = total
	return since
}

//go:wasmimport hotswap log
func hostLog(level int32, msg unsafe.Pointer, n uint32)

//go:wasmimport hotswap kv_get
func hostKVGet(key unsafe.Pointer, keyLen uint32, val unsafe.Pointer, valCap uint32) int64

//go:wasmimport hotswap kv_set
func hostKVSet(key unsafe.Pointer, keyLen uint32, val unsafe.Pointer, valLen uint32)

//go:wasmimport hotswap kv_delete
func hostKVDelete(key unsafe.Pointer, keyLen uint32)

//go:wasmimport hotswap kv_add
func hostKVAdd(key unsafe.Pointer, keyLen uint32, delta int64) int64

func strPtr(s string) unsafe.Pointer { return unsafe.Pointer(unsafe.StringData(s)) }

func bytesPtr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

func logMessage(level Level, msg string) { hostLog(int32(level), strPtr(msg), uint32(len(msg))) }

func kvGet(key string) ([]byte, bool) {
	buf := make([]byte, 256)
	for {
		n := hostKVGet(strPtr(key), uint32(len(key)), bytesPtr(buf), uint32(len(buf)))
		switch {
		case n < 0:
			return nil, false
		case int(n) <= len(buf):
			return buf[:n], true
		}
		buf = make([]byte, n)
	}
}

func kvSet(key string, val []byte) {
	hostKVSet(strPtr(key), uint32(len(key)), bytesPtr(val), uint32(len(val)))
}

func kvDelete(key string) { hostKVDelete(strPtr(key), uint32(len(key))) }

func kvAdd(key string, delta int64) int64 { return hostKVAdd(strPtr(key), uint32(len(key)), delta) }
