package module

import (
	"context"
	"fmt"
	"sync"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// Canary is a prepared version serving a share of its module's calls beside
// the active version, the stable one, before it activates. It holds the
// module's change slot from Prepared.Canary until Promote or Abort: every
// load and rollback of the module meanwhile fails with a *BusyError naming
// the canary.
//
// Which calls it serves: a call with a routing key (Module.CallKey) goes to
// the canary when the key's bucket, a salted hash, falls below the weight,
// so a key is sticky and widening is monotone; a call without a key goes
// there with the probability of the weight. Both versions count their calls
// and failures by kind, and time equal-sized cohorts of calls (see Sample),
// so they can be compared over the same window.
//
// The canary's migrate hook runs when it is promoted, not before: while it
// runs beside the stable version it must serve on the state the stable
// version keeps. Abort leaves nothing behind but what the canary's calls
// wrote to that state.
//
// A Canary is safe for concurrent use.
type Canary struct {
	reg    *Registry
	m      *Module
	v      *version // the canary
	stable *version // the active version when the canary started
	salt   uint64

	mu   sync.Mutex // protects done; orders SetWeight, Promote and Abort
	done bool
}

// Canary makes the prepared version serve share w (0 to 1) of the
// module's calls beside the active version and hands the module's change
// slot to the returned Canary. It fails for a rollback, and with
// ErrNotFound when no version is active to compare with.
func (p *Prepared) Canary(w float64) (*Canary, error) {
	return p.canary(keyBucket(p.digest, 0), w)
}

// Split makes the prepared version serve share w (0 to 1) of the module's
// calls beside the active version, as Canary does, with the buckets of
// routing keys salted by salt instead of by the version's digest: every
// process whose module splits with the same salt sends a routing key to
// the same version at the same weight, and SetWeight moves only the keys
// between the old and the new weight (a fleet-wide A/B split). The split
// is a Canary that no analysis drives: it serves until the caller promotes
// or aborts it, and holds the module's change slot until then.
func (p *Prepared) Split(salt string, w float64) (*Canary, error) {
	return p.canary(keyBucket(salt, 0), w)
}

func (p *Prepared) canary(salt uint64, w float64) (*Canary, error) {
	r, m := p.reg, p.m
	switch {
	case p.done:
		return nil, fmt.Errorf("canary %s@%s: %w: already activated or discarded", m.name, p.name, ErrClosed)
	case p.to != nil:
		return nil, fmt.Errorf("canary %s: a rollback cannot run as a canary", m.name)
	case p.from == nil:
		return nil, fmt.Errorf("canary %s@%s: no active version to compare it with: %w", m.name, p.name, ErrNotFound)
	case !(w >= 0 && w <= 1):
		return nil, fmt.Errorf("canary %s@%s: weight %v is not between 0 and 1", m.name, p.name, w)
	}
	p.done = true
	c := &Canary{reg: r, m: m, v: newVersion(m, p.name, p.digest, p.code), stable: p.from, salt: salt}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.code.Close(context.Background())
		m.busy.Store(false)
		return nil, fmt.Errorf("canary %s@%s: %w", m.name, p.name, ErrClosed)
	}
	// Holding r.mu orders the start before Close's sweep of canaries.
	m.mu.Lock()
	m.canary = c
	m.mu.Unlock()
	m.route.Store(r.canaryRoute(c.v, c.salt, w))
	r.mu.Unlock()
	r.log.Info("module canary serving", logkey.Module, m.name, logkey.Version, p.name, "stable", p.from.name,
		"weight", w, logkey.Digest, p.digest, "prepared_in", p.took)
	return c, nil
}

// Module returns the module's name.
func (c *Canary) Module() string { return c.m.name }

// Version returns the canary's version name.
func (c *Canary) Version() string { return c.v.name }

// Digest returns the canary's artifact digest.
func (c *Canary) Digest() string { return c.v.digest }

// Stable returns the version the canary is compared with: the module's
// active version when it started.
func (c *Canary) Stable() (version, digest string) { return c.stable.name, c.stable.digest }

// Status describes the canary version.
func (c *Canary) Status() VersionStatus { return *c.v.status() }

// Weight returns the share of calls the canary serves now; 0 once it was
// promoted or aborted.
func (c *Canary) Weight() float64 {
	if r := c.m.route.Load(); r != nil && r.canary == c.v {
		return r.weight()
	}
	return 0
}

// SetWeight makes the canary serve share w (0 to 1) of the module's calls
// from now on. It fails with ErrClosed once the canary was promoted or
// aborted.
func (c *Canary) SetWeight(w float64) error {
	if !(w >= 0 && w <= 1) {
		return fmt.Errorf("canary %s@%s: weight %v is not between 0 and 1", c.m.name, c.v.name, w)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return fmt.Errorf("canary %s@%s: %w: promoted or aborted", c.m.name, c.v.name, ErrClosed)
	}
	c.m.route.Store(c.reg.canaryRoute(c.v, c.salt, w))
	return nil
}

// Sample reads the call counters of the stable version and of the canary.
func (c *Canary) Sample() (stable, canary Sample) { return c.stable.sample(), c.v.sample() }

// Promote makes the canary the active version, as Prepared.Activate does
// for a load: it runs the canary's migrate hook with the stable version's
// name, then switches every new call to the canary; the stable version
// stays warm as the previous one. If the migrate hook fails, or ctx ends
// before the switch, the canary is aborted and the stable version keeps
// serving. Promote releases the module's change slot.
func (c *Canary) Promote(ctx context.Context) (VersionStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return VersionStatus{}, fmt.Errorf("promote %s@%s: %w: already promoted or aborted", c.m.name, c.v.name, ErrClosed)
	}
	c.done = true
	r, m := c.reg, c.m
	if err := c.v.code.Migrate(ctx, c.stable.name); err != nil {
		c.retire()
		if cerr := ctx.Err(); cerr != nil {
			return VersionStatus{}, fmt.Errorf("promote %s@%s: migrate stopped: %w", m.name, c.v.name, cerr)
		}
		return VersionStatus{}, loadError(m.name, c.v.name, "migrate", err)
	}
	if err := ctx.Err(); err != nil {
		c.retire()
		return VersionStatus{}, fmt.Errorf("promote %s@%s: activation stopped: %w", m.name, c.v.name, err)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		c.retire()
		return VersionStatus{}, fmt.Errorf("promote %s@%s: %w", m.name, c.v.name, ErrClosed)
	}
	m.activate(c.v)
	m.mu.Lock()
	m.canary = nil
	m.mu.Unlock()
	m.route.Store(r.baseRoute())
	r.mu.Unlock()
	m.busy.Store(false)
	r.log.Info("module canary promoted", logkey.Module, m.name, logkey.Version, c.v.name, logkey.From, c.stable.name, logkey.Digest, c.v.digest)
	return *c.v.status(), nil
}

// Abort stops the canary at once: no new call goes to it, the calls it is
// running finish (bounded by the drain timeout), and then it closes. The
// stable version never stopped serving. Abort releases the module's change
// slot; after Promote it does nothing.
func (c *Canary) Abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done = true
	c.retire()
	c.reg.log.Info("module canary aborted", logkey.Module, c.m.name, logkey.Version, c.v.name, "stable", c.stable.name)
}

// retire takes the canary out of the route, drains and closes it, and
// releases the module's change slot. The caller holds c.mu and set done.
func (c *Canary) retire() {
	m := c.m
	if r := m.route.Load(); r != nil && r.canary == c.v {
		m.route.Store(c.reg.baseRoute())
	}
	m.mu.Lock()
	if m.canary == c {
		m.canary = nil
	}
	m.mu.Unlock()
	c.reg.retire(m, c.v)
	m.busy.Store(false)
}

// busyError is the error of a change refused because the module's change
// slot is held: it names the canary if one holds it.
func (m *Module) busyError(op string) error {
	e := &BusyError{Op: op, Module: m.name}
	m.mu.Lock()
	if m.canary != nil {
		e.Canary = m.canary.v.name
	}
	m.mu.Unlock()
	return e
}
