package module

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// A change of a module takes two phases. Prepare (or PrepareRollback) does
// every check and all the slow work without touching anything a call sees,
// and holds the module's change slot; the caller then records the change
// (an audit log, a canary's plan) and calls Activate, which runs the
// version's migrate hook and switches. Between the two the caller may still
// back out with Discard, and nothing happened.

// Prepared is a change of one module that passed every check and waits to
// be activated: a new version, compiled, validated and warm, or the kept
// previous version for a rollback. It holds the module's change slot, so
// every other change of that module fails with ErrBusy until Activate or
// Discard releases it, or Canary hands it to a canary. Call exactly one of
// them; after the first, the others do nothing or return ErrClosed.
//
// A Prepared is not safe for concurrent use.
type Prepared struct {
	reg    *Registry
	m      *Module
	code   Code     // the new version's code; nil for a rollback
	to     *version // the version a rollback makes active; nil for a load
	from   *version // the active version when prepared; nil if none
	name   string   // version name
	digest string
	took   time.Duration // how long preparation took
	done   bool
}

// Prepare compiles, validates and pre-warms src as the next version of the
// named module. It changes nothing a call sees: the active version keeps
// serving and the module's state is not touched (the migrate hook runs in
// Activate). If a check fails it returns a *LoadError (matching
// ErrRejected) naming the check. If the module is being changed already it
// fails with ErrBusy.
//
// Cancelling ctx aborts the preparation; the error then matches ctx's error
// (context.Canceled or context.DeadlineExceeded), not ErrRejected, because
// no check refused the version.
func (r *Registry) Prepare(ctx context.Context, name string, src Source) (*Prepared, error) {
	if src.Version == "" {
		return nil, fmt.Errorf("load %s: Source.Version is empty", name)
	}
	if src.Digest == "" {
		sum := sha256.Sum256(src.Artifact)
		src.Digest = hex.EncodeToString(sum[:])
	}
	if r.isClosed() {
		return nil, fmt.Errorf("load %s@%s: %w", name, src.Version, ErrClosed)
	}
	m := r.Module(name)
	if !m.busy.CompareAndSwap(false, true) {
		return nil, m.busyError("load " + name + "@" + src.Version)
	}
	start := time.Now()
	cur := m.active.Load()
	warm := 0
	if cur != nil {
		warm = int(cur.peak.Load())
	}
	code, err := r.backend.Prepare(ctx, Spec{Module: name, Version: src.Version, Artifact: src.Artifact, Digest: src.Digest, State: m.state, Warm: warm})
	if err != nil {
		m.busy.Store(false)
		if cerr := ctx.Err(); cerr != nil {
			// A check interrupted by the caller did not refuse anything.
			return nil, fmt.Errorf("load %s@%s: preparation stopped: %w", name, src.Version, cerr)
		}
		return nil, loadError(name, src.Version, "prepare", err)
	}
	return &Prepared{reg: r, m: m, code: code, from: cur, name: src.Version, digest: src.Digest, took: time.Since(start)}, nil
}

// PrepareRollback takes the named module's change slot and names the
// version a rollback would make active: the previous one, still warm. It
// fails with ErrNotFound for a module never loaded, ErrNoPrevious when no
// previous version is kept, and ErrBusy when the module is being changed.
func (r *Registry) PrepareRollback(ctx context.Context, name string) (*Prepared, error) {
	if r.isClosed() {
		return nil, fmt.Errorf("rollback %s: %w", name, ErrClosed)
	}
	m := (*r.lookup.Load())[name]
	if m == nil { // never loaded: do not make an entry for a typo
		return nil, fmt.Errorf("rollback %s: %w", name, ErrNotFound)
	}
	if !m.busy.CompareAndSwap(false, true) {
		return nil, m.busyError("rollback " + name)
	}
	m.mu.Lock()
	prev, cur := m.previous, m.active.Load()
	m.mu.Unlock()
	if prev == nil {
		m.busy.Store(false)
		if cur == nil {
			return nil, fmt.Errorf("rollback %s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("rollback %s: %w", name, ErrNoPrevious)
	}
	return &Prepared{reg: r, m: m, to: prev, from: cur, name: prev.name, digest: prev.digest}, nil
}

// Module returns the name of the module the change applies to.
func (p *Prepared) Module() string { return p.m.name }

// Version returns the name of the version Activate makes active.
func (p *Prepared) Version() string { return p.name }

// Digest returns the hex digest of the version Activate makes active.
func (p *Prepared) Digest() string { return p.digest }

// Rollback reports whether the change is a rollback to the previous version.
func (p *Prepared) Rollback() bool { return p.to != nil }

// From returns the version that was active when the change was prepared,
// and false if none was.
func (p *Prepared) From() (version, digest string, ok bool) {
	if p.from == nil {
		return "", "", false
	}
	return p.from.name, p.from.digest, true
}

// Activate makes the prepared version active: for a load it first runs the
// version's migrate hook (with the version it replaces, "" for the first),
// and if that fails it returns a *LoadError naming "migrate" and the active
// version keeps serving. Then every new call goes to the version; calls
// running keep the version they started on. The replaced version stays warm
// as the previous one (for a rollback, the version rolled back from drains
// and closes instead). Activate releases the module's change slot.
//
// Cancelling ctx before the switch aborts the activation; the migrate hook
// is interrupted if it is running.
func (p *Prepared) Activate(ctx context.Context) (VersionStatus, error) {
	if p.done {
		return VersionStatus{}, fmt.Errorf("activate %s@%s: %w: already activated or discarded", p.m.name, p.name, ErrClosed)
	}
	p.done = true
	defer p.m.busy.Store(false)
	r, m := p.reg, p.m
	if p.to != nil {
		return p.activateRollback(ctx)
	}
	var from string
	if p.from != nil {
		from = p.from.name
	}
	if err := p.code.Migrate(ctx, from); err != nil {
		p.code.Close(context.Background())
		if cerr := ctx.Err(); cerr != nil {
			return VersionStatus{}, fmt.Errorf("load %s@%s: migrate stopped: %w", m.name, p.name, cerr)
		}
		return VersionStatus{}, loadError(m.name, p.name, "migrate", err)
	}
	if err := ctx.Err(); err != nil {
		p.code.Close(context.Background())
		return VersionStatus{}, fmt.Errorf("load %s@%s: activation stopped: %w", m.name, p.name, err)
	}
	v := newVersion(m, p.name, p.digest, p.code)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.code.Close(context.Background())
		return VersionStatus{}, fmt.Errorf("load %s@%s: %w", m.name, p.name, ErrClosed)
	}
	// Holding r.mu orders this switch before Close's sweep of actives.
	m.activate(v)
	r.mu.Unlock()
	r.log.Info("module version active", logkey.Module, m.name, logkey.Version, p.name, logkey.From, from,
		logkey.Digest, p.digest, "prepared_in", p.took)
	return *v.status(), nil
}

func (p *Prepared) activateRollback(ctx context.Context) (VersionStatus, error) {
	r, m := p.reg, p.m
	if err := ctx.Err(); err != nil {
		return VersionStatus{}, fmt.Errorf("rollback %s: %w", m.name, err)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return VersionStatus{}, fmt.Errorf("rollback %s: %w", m.name, ErrClosed)
	}
	m.mu.Lock()
	cur := m.active.Load()
	if m.previous != p.to { // unreachable while the slot is held; kept as a guard
		m.mu.Unlock()
		r.mu.Unlock()
		return VersionStatus{}, fmt.Errorf("rollback %s: %w", m.name, errors.New("the previous version changed while the rollback was prepared"))
	}
	m.active.Store(p.to)
	m.previous = nil
	m.mu.Unlock()
	r.mu.Unlock()
	r.retire(m, cur)
	r.log.Info("module rolled back", logkey.Module, m.name, logkey.Version, p.to.name, logkey.From, cur.name)
	return *p.to.status(), nil
}

// Discard abandons the change: a prepared version is closed, and the
// module's change slot is released. Nothing a call sees has changed.
func (p *Prepared) Discard() {
	if p.done {
		return
	}
	p.done = true
	if p.code != nil {
		p.code.Close(context.Background())
	}
	p.m.busy.Store(false)
}
