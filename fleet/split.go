package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/hotswapgo/hotswap/host"
)

// The A/B apply path of an Agent: a module whose spec has a B version runs
// a host split (host.SplitReader) of B beside A, salted by SplitSalt.

// endStaleSplit ends module name's split unless it is the one m asks for
// beside the A the host serves: a change of weight alone keeps it (the
// weight moves without a reload), any other change ends it first, since a
// split holds the module and A cannot change under it.
func (a *Agent) endStaleSplit(ctx context.Context, name string, m ModuleSpec) {
	sp, ok := a.opts.Host.Split(name)
	if !ok {
		return
	}
	if m.B != nil && sp.StableDigest == hexDigest(m.Digest) && sp.Digest == hexDigest(m.B.Digest) {
		return
	}
	if err := a.opts.Host.EndSplit(ctx, name); err != nil && !errors.Is(err, host.ErrNoSplit) {
		a.log.Warn("fleet: end a split", "module", name, "err", err)
	}
}

// applySplit brings module name's B to m.B once A serves (r is how A's
// change went): it sets the weight of the running split, or fetches B by
// digest and starts the split through the host's trust path. A refused B
// leaves A serving every call and refuses the module's change.
func (a *Agent) applySplit(ctx context.Context, name string, m ModuleSpec, r ModuleApplied) ModuleApplied {
	if m.B == nil || r.Result != ResultOK {
		return r
	}
	w := m.B.Weight / 100
	if sp, ok := a.opts.Host.Split(name); ok {
		if math.Abs(sp.Weight-w) > 1e-9 {
			if _, err := a.opts.Host.SetSplitWeight(ctx, name, w); err != nil {
				return a.refusal(name, err)
			}
		}
		r.B = a.splitApplied(name)
		return r
	}
	b := ModuleSpec{Version: m.B.Version, Digest: m.B.Digest, URL: m.B.URL}
	f, err := Fetch(ctx, a.opts.HTTPClient, b, a.opts.MaxModuleSize)
	if err != nil {
		return a.refusal(name, fmt.Errorf("B: %w", err))
	}
	pin, _ := parseDigest(m.B.Digest)
	label := fmt.Sprintf("%s@%s", name, pin.Short())
	salt := SplitSalt(a.opts.Group, name, pin.Hex())
	if _, err := a.opts.Host.SplitReader(ctx, name, label, f.Manifest, bytes.NewReader(f.Payload), salt, w); err != nil {
		return a.refusal(name, fmt.Errorf("B: %w", err))
	}
	r.B = a.splitApplied(name)
	return r
}

// splitServes reports whether module name runs the split m asks for: B at
// its weight, or no split when m has no B.
func (a *Agent) splitServes(name string, m ModuleSpec) bool {
	sp, ok := a.opts.Host.Split(name)
	if m.B == nil {
		return !ok
	}
	return ok && sp.Digest == hexDigest(m.B.Digest) && math.Abs(sp.Weight-m.B.Weight/100) <= 1e-9
}

// splitApplied describes module name's running split, nil if none.
func (a *Agent) splitApplied(name string) *SplitApplied {
	sp, ok := a.opts.Host.Split(name)
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
