package wasm

import (
	"math"

	"github.com/tetratelabs/wazero/experimental"
	"golang.org/x/sys/unix"
)

// mappedMemory backs a guest's linear memory with an anonymous mapping of
// its maximum size, outside the Go heap, instead of a Go slice that wazero
// grows by appending. Growing then copies nothing: with a slice, growing a
// memory of hundreds of MiB is one memmove, which the Go scheduler cannot
// preempt, so the garbage collector's stop-the-world waited for it (and for
// the page faults of the new slice) for hundreds of milliseconds. The pages
// a grow adds are populated by the kernel in the madvise call, where the
// goroutine is in a system call and holds up nobody, rather than faulted in
// one by one by guest machine code, which cannot be preempted either.
//
// The mapping is unmapped when wazero frees the memory, as its instance
// closes. Instances close only when no call runs on them (see pool.close),
// so no guest code can touch it after.
type mappedMemory struct {
	buf       []byte // the whole mapping: the memory's maximum size
	populated int    // bytes populated so far

	// When the mapping failed (the address space or vm.max_map_count ran
	// out), the memory is a Go slice grown by appending, as wazero's own.
	heap []byte
	max  uint64
}

// allocateMemory is the experimental.MemoryAllocator instances use.
var allocateMemory = experimental.MemoryAllocatorFunc(func(_, max uint64) experimental.LinearMemory {
	m := &mappedMemory{max: max}
	if max == 0 || max > math.MaxInt {
		return m
	}
	buf, err := unix.Mmap(-1, 0, int(max), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err == nil {
		m.buf = buf
	}
	return m
})

// Reallocate returns the memory's first size bytes, populating those not
// populated yet; nil if size passes the maximum (wazero checks that first).
func (m *mappedMemory) Reallocate(size uint64) []byte {
	if size > m.max {
		return nil
	}
	if m.buf == nil {
		if grow := int(size) - len(m.heap); grow > 0 {
			m.heap = append(m.heap, make([]byte, grow)...)
		}
		return m.heap[:size]
	}
	if n := int(size); n > m.populated {
		// Best effort: without MADV_POPULATE_WRITE (Linux < 5.14) the
		// pages fault in on first touch.
		_ = unix.Madvise(m.buf[m.populated:n], unix.MADV_POPULATE_WRITE)
		m.populated = n
	}
	return m.buf[:size:size]
}

// Free unmaps the memory.
func (m *mappedMemory) Free() {
	if m.buf != nil {
		_ = unix.Munmap(m.buf)
		m.buf = nil
	}
	m.heap = nil
}
