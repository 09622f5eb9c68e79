package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hotswapgo/hotswap/kernel"
	"github.com/hotswapgo/hotswap/module"
)

// AddSlot creates a kernel-level slot (an eBPF program on a network
// interface, see package kernel) whose versions go through the host's
// trust path: its verifier and audit log replace opts.Verifier and
// opts.Audit. The host closes the slot, detaching its program, on Close.
// Load versions with LoadSlot, so changes made through the control socket
// name their peer in the audit log.
func (h *Host) AddSlot(opts kernel.Options) (*kernel.Slot, error) {
	if h.closed.Load() {
		return nil, fmt.Errorf("add slot %s: %w", opts.Name, module.ErrClosed)
	}
	opts.Verifier, opts.Audit = h.verifier, h.audit
	if opts.Logger == nil {
		opts.Logger = h.log
	}
	h.slotsMu.Lock()
	defer h.slotsMu.Unlock()
	if slices.ContainsFunc(h.slots, func(s *kernel.Slot) bool { return s.Name() == opts.Name }) {
		return nil, fmt.Errorf("add slot %s: the host has a slot of that name", opts.Name)
	}
	s, err := kernel.New(opts)
	if err != nil {
		return nil, err
	}
	h.slots = append(h.slots, s)
	return s, nil
}

// slot returns the slot called name.
func (h *Host) slot(name string) (*kernel.Slot, error) {
	h.slotsMu.Lock()
	defer h.slotsMu.Unlock()
	for _, s := range h.slots {
		if s.Name() == name {
			return s, nil
		}
	}
	return nil, fmt.Errorf("eBPF slot %s: %w", name, module.ErrNotFound)
}

// SlotStatus describes every kernel-level slot, sorted by name.
func (h *Host) SlotStatus() []kernel.Status {
	h.slotsMu.Lock()
	slots := slices.Clone(h.slots)
	h.slotsMu.Unlock()
	out := make([]kernel.Status, 0, len(slots))
	for _, s := range slots {
		out = append(out, s.Status())
	}
	slices.SortFunc(out, func(a, b kernel.Status) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// LoadSlot verifies an eBPF object that arrives as a stream and swaps it
// into slot name (see kernel.Slot.LoadReader), recording the actor of ctx
// (WithActor) in the audit log.
func (h *Host) LoadSlot(ctx context.Context, name, label string, manifest []byte, object io.Reader) (kernel.VersionStatus, error) {
	s, err := h.slot(name)
	if err != nil {
		return kernel.VersionStatus{}, err
	}
	return s.LoadReader(kernel.WithActor(ctx, actor(ctx)), label, manifest, object)
}

// RollbackSlot makes the previous version of slot name serve again.
func (h *Host) RollbackSlot(ctx context.Context, name string) (kernel.VersionStatus, error) {
	s, err := h.slot(name)
	if err != nil {
		return kernel.VersionStatus{}, err
	}
	return s.Rollback(kernel.WithActor(ctx, actor(ctx)))
}

// closeSlots detaches and closes every slot.
func (h *Host) closeSlots() error {
	h.slotsMu.Lock()
	slots := h.slots
	h.slots = nil
	h.slotsMu.Unlock()
	var errs []error
	for _, s := range slots {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
