package kernel

import "github.com/cilium/ebpf/link"

// LinkOf returns the slot's link, for tests that change it behind the
// slot's back.
func LinkOf(s *Slot) link.Link {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.link
}
