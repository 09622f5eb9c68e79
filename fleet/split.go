package fleet

import (
	"context"
	"fmt"
	"maps"
	"math"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// The A/B apply path of an Agent: a module whose spec has a B version runs
// a split of B beside A in the service (host.SplitReader), salted by
// SplitSalt.

// endStaleSplit ends module name's split unless it is the one m asks for
// beside the A the service serves: a change of weight alone keeps it (the
// weight moves without a reload), any other change ends it first, since a
// split holds the module and A cannot change under it. It returns v
// without the split it ended.
func (a *Agent) endStaleSplit(ctx context.Context, v serviceView, name string, m ModuleSpec) serviceView {
	sp, ok := v.Splits[name]
	if !ok {
		return v
	}
	if m.B != nil && sp.StableDigest == hexDigest(m.Digest) && sp.Digest == hexDigest(m.B.Digest) {
		return v
	}
	if err := a.svc.EndSplit(ctx, name); err != nil {
		a.log.Warn("fleet: end a split", logkey.Module, name, logkey.Err, err)
		return v
	}
	v.Splits = maps.Clone(v.Splits)
	delete(v.Splits, name)
	return v
}

// applySplit brings module name's B to m.B once A serves (r is how A's
// change went): it sets the weight of the running split, or fetches B by
// digest and starts the split through the service's trust path. A refused
// B leaves A serving every call and refuses the module's change.
func (a *Agent) applySplit(ctx context.Context, v serviceView, name string, m ModuleSpec, r ModuleApplied) ModuleApplied {
	if m.B == nil || r.Result != ResultOK {
		return r
	}
	st := v.module(name)
	w := m.B.Weight / 100
	if sp, ok := v.Splits[name]; ok {
		if math.Abs(sp.Weight-w) > 1e-9 {
			if err := a.svc.SetSplitWeight(ctx, name, w); err != nil {
				return a.refusal(st, err)
			}
		}
		return a.withSplit(ctx, name, r)
	}
	b := ModuleSpec{Version: m.B.Version, Digest: m.B.Digest, URL: m.B.URL}
	f, err := a.source().Fetch(ctx, b, a.opts.MaxModuleSize)
	if err != nil {
		return a.refusal(st, fmt.Errorf("B: %w", err))
	}
	pin, _ := parseDigest(m.B.Digest)
	label := fmt.Sprintf("%s@%s", name, pin.Short())
	salt := SplitSalt(a.opts.Group, name, pin.Hex())
	if err := a.svc.Split(ctx, name, label, f, salt, w); err != nil {
		return a.refusal(st, fmt.Errorf("B: %w", err))
	}
	return a.withSplit(ctx, name, r)
}

// withSplit fills r.B with module name's split as the service reports it
// now.
func (a *Agent) withSplit(ctx context.Context, name string, r ModuleApplied) ModuleApplied {
	r.B = splitApplied(a.look(ctx), name)
	return r
}

// splitServes reports whether module name runs the split m asks for: B at
// its weight, or no split when m has no B.
func splitServes(v serviceView, name string, m ModuleSpec) bool {
	sp, ok := v.Splits[name]
	if m.B == nil {
		return !ok
	}
	return ok && sp.Digest == hexDigest(m.B.Digest) && math.Abs(sp.Weight-m.B.Weight/100) <= 1e-9
}

// splitApplied describes module name's running split, nil if none.
func splitApplied(v serviceView, name string) *SplitApplied {
	sp, ok := v.Splits[name]
	if !ok {
		return nil
	}
	return &SplitApplied{Version: sp.Version, Digest: sp.Digest, Weight: math.Round(sp.Weight*1e6) / 1e4}
}

func hexDigest(s string) string {
	d, err := parseDigest(s)
	if err != nil {
		return ""
	}
	return d.Hex()
}
