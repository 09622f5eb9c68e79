package module

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Module is the handle of one named module. It is safe for concurrent use.
type Module struct {
	name  string
	reg   *Registry
	state *KV

	// active serves new calls. It is written only by the goroutine that
	// holds busy (or by Registry.Close) and read lock-free by calls.
	active atomic.Pointer[version]
	// busy is held by the one load or rollback allowed at a time.
	busy atomic.Bool

	mu       sync.Mutex // protects previous, draining
	previous *version
	draining []*version
}

// Name returns the module's name.
func (m *Module) Name() string { return m.name }

// State returns the module's host-kept state.
func (m *Module) State() *KV { return m.state }

// Call runs handler on the active version with in and returns its output.
func (m *Module) Call(ctx context.Context, handler string, in []byte) ([]byte, error) {
	return m.AppendCall(ctx, nil, handler, in)
}

// AppendCall is Call appending the output to dst, so a caller that reuses
// its buffer makes no allocation per call.
func (m *Module) AppendCall(ctx context.Context, dst []byte, handler string, in []byte) ([]byte, error) {
	v := m.acquire()
	if v == nil {
		return dst, fmt.Errorf("call %s %s: %w", m.name, handler, ErrNotFound)
	}
	out, err := v.code.AppendCall(ctx, dst, handler, in)
	v.release()
	if err != nil {
		return out, v.callError(handler, err)
	}
	return out, nil
}

// acquire returns the active version with a reference taken, or nil when
// nothing is loaded. A version that retires between the load of the
// pointer and the reference is skipped for the one that replaced it.
func (m *Module) acquire() *version {
	for {
		v := m.active.Load()
		if v == nil || v.tryAcquire() {
			return v
		}
	}
}

func (v *version) callError(handler string, err error) error {
	var ce *CallError
	if errors.As(err, &ce) {
		ce.Module, ce.Version, ce.Handler = v.module.name, v.name, handler
		return ce
	}
	return &CallError{Module: v.module.name, Version: v.name, Handler: handler, Kind: err}
}

// activate makes v active and keeps the version it replaces as previous;
// the version that was previous retires.
func (m *Module) activate(v *version) {
	m.mu.Lock()
	old := m.active.Swap(v)
	evict := m.previous
	m.previous = old
	m.mu.Unlock()
	m.reg.retire(m, evict)
}

// Status describes the module.
func (m *Module) Status() Status {
	m.mu.Lock()
	prev := m.previous
	draining := append([]*version(nil), m.draining...)
	m.mu.Unlock()
	s := Status{Name: m.name, StateKeys: m.state.Len()}
	if v := m.active.Load(); v != nil {
		s.Active = v.status()
	}
	if prev != nil {
		s.Previous = prev.status()
	}
	for _, d := range draining {
		s.Draining = append(s.Draining, *d.status())
	}
	return s
}
