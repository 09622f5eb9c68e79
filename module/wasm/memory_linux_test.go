package wasm

import "testing"

// TestMappedMemory: the memory grows in place, reads as zeros where never
// written, keeps what was written, refuses to pass its maximum; and the
// heap fallback behaves the same.
func TestMappedMemory(t *testing.T) {
	for _, heap := range []bool{false, true} {
		m := allocateMemory.Allocate(0, 4<<16).(*mappedMemory)
		if heap {
			m.Free()
			m.max = 4 << 16 // as if the mapping had failed
		} else if m.buf == nil {
			t.Fatal("the mapping failed")
		}
		b := m.Reallocate(1 << 16)
		b[100] = 7
		grown := m.Reallocate(3 << 16)
		if len(grown) != 3<<16 || grown[100] != 7 || grown[3<<16-1] != 0 {
			t.Fatalf("heap=%v: grown memory: len %d, [100]=%d; want 3 pages keeping what was written", heap, len(grown), grown[100])
		}
		if !heap && &grown[0] != &b[0] {
			t.Errorf("the mapped memory moved as it grew")
		}
		if got := m.Reallocate(5 << 16); got != nil {
			t.Errorf("heap=%v: Reallocate past the maximum = %d bytes; want nil", heap, len(got))
		}
		m.Free()
	}
}
