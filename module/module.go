package module

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/pprof"
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
	// busy is held by the one load or rollback allowed at a time, and by a
	// canary while it runs.
	busy atomic.Bool
	// route, when set, splits calls between the active version and a
	// canary, picks the calls that are timed, and says whether calls are
	// labelled or traced; nil while none of these applies, and then a call
	// pays one atomic load for it.
	route atomic.Pointer[route]

	mu       sync.Mutex // protects previous, draining, canary
	previous *version
	draining []*version
	canary   *Canary // the canary running, nil if none
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
//
// While a canary runs, a call without a routing key goes to the canary
// with the probability of its weight, drawn per call; see AppendCallKey
// for calls that must stick to a version.
func (m *Module) AppendCall(ctx context.Context, dst []byte, handler string, in []byte) ([]byte, error) {
	if r := m.route.Load(); r != nil {
		return m.appendRouted(ctx, r, rand.Uint64(), dst, handler, in)
	}
	// The path of every call of a module without a canary.
	v := m.acquire()
	if v == nil {
		return dst, fmt.Errorf("call %s %s: %w", m.name, handler, ErrNotFound)
	}
	out, err := v.code.AppendCall(ctx, dst, handler, in)
	v.release()
	if err != nil {
		v.stats.fail(err)
		return out, v.callError(handler, err)
	}
	return out, nil
}

// CallKey is Call with a routing key: a user id, a tenant, a session. While
// a canary runs, all calls with the same key go to the same version, and a
// key that went to the canary at one weight goes there at every higher one.
// Without a canary the key changes nothing.
func (m *Module) CallKey(ctx context.Context, key, handler string, in []byte) ([]byte, error) {
	return m.AppendCallKey(ctx, nil, key, handler, in)
}

// AppendCallKey is CallKey appending the output to dst.
func (m *Module) AppendCallKey(ctx context.Context, dst []byte, key, handler string, in []byte) ([]byte, error) {
	r, bucket := m.route.Load(), uint64(0)
	if r != nil {
		bucket = keyBucket(key, r.salt)
	} else {
		r = &noRoute
	}
	return m.appendRouted(ctx, r, bucket, dst, handler, in)
}

// noRoute sends every call to the active version, untimed.
var noRoute route

// appendRouted runs a call whose bucket r routes: on the canary when r
// sends it there and the canary still takes calls, else on the active
// version; timed when r says so.
func (m *Module) appendRouted(ctx context.Context, r *route, bucket uint64, dst []byte, handler string, in []byte) ([]byte, error) {
	var v *version
	if r.toCanary(bucket) && r.canary.tryAcquire() {
		v = r.canary
	} else if v = m.acquire(); v == nil {
		return dst, fmt.Errorf("call %s %s: %w", m.name, handler, ErrNotFound)
	}
	if r.labels {
		pprof.SetGoroutineLabels(v.labels)
	}
	callCtx, traced := ctx, false
	if r.spans != nil {
		callCtx, traced = r.spans.StartCall(ctx, m.name, v.name, handler)
	}
	var out []byte
	var err error
	if r.timed(bucket) {
		start := m.reg.clock()
		out, err = v.code.AppendCall(callCtx, dst, handler, in)
		v.stats.observe(m.reg.clock() - start)
	} else {
		out, err = v.code.AppendCall(callCtx, dst, handler, in)
	}
	if r.labels {
		pprof.SetGoroutineLabels(ctx)
	}
	v.release()
	if err != nil {
		v.stats.fail(err)
		err = v.callError(handler, err)
	}
	if traced {
		endSpan(r.spans, callCtx, err)
	}
	return out, err
}

// endSpan tells t how a traced call ended.
func endSpan(t CallTracer, ctx context.Context, err error) {
	var kind FailureKind
	if err != nil {
		kind = failureKind(err)
	}
	t.EndCall(ctx, err, kind)
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
	if r := m.route.Load(); r != nil && r.canary != nil {
		s.Canary = r.canary.status()
		s.CanaryWeight = r.weight()
	}
	if prev != nil {
		s.Previous = prev.status()
	}
	for _, d := range draining {
		s.Draining = append(s.Draining, *d.status())
	}
	return s
}
