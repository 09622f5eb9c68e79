package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// ActionSplit is the audit action of an A/B split of a module: its start
// (the B version, its salt and weight), every weight change, and its end.
const ActionSplit audit.Action = "split"

// ErrNoSplit: the module runs no A/B split.
var ErrNoSplit = errors.New("no split running")

// SplitStatus describes a module's A/B split.
type SplitStatus struct {
	Module string
	// Version and Digest name B; Stable and StableDigest name A, the
	// module's active version.
	Version, Digest      string
	Stable, StableDigest string
	// Salt salts the hash of the routing keys: hosts that split a module
	// with the same salt send a key to the same version.
	Salt string
	// Weight is B's share of the calls, 0 to 1.
	Weight float64
}

// splits are a host's A/B splits, one per module at most.
type splits struct {
	mu      sync.Mutex // protects running
	running map[string]*split
}

type split struct {
	mc   *module.Canary
	salt string
}

// SplitReader verifies an uploaded artifact as LoadReader does, prepares
// it (compile, validate, pre-warm) and makes it, B, serve share w (0 to 1)
// of module name's calls beside the active version, A. A call with a
// routing key (module.Module.CallKey) goes to B when the key's hash,
// salted by salt, falls below the weight: a key is sticky, hosts that
// split with the same salt route it alike, and SetSplitWeight moves only
// the keys between the old and the new weight. No analysis decides
// anything: the split serves until EndSplit takes B out (to make B the
// only version, end the split and load B).
//
// While the split runs, loads, rollbacks and canaries of the module are
// refused with a *module.BusyError naming B. B is not kept in the store:
// a restarted host serves A until whoever split it (the fleet agent)
// splits it again, and a binary upgrade does not carry the split either.
// A refusal is audited and returned as for a load; the start is audited
// with the salt and the weight.
func (h *Host) SplitReader(ctx context.Context, name, label string, manifest []byte, payload io.Reader, salt string, w float64) (SplitStatus, error) {
	c, err := h.begin(ctx, ActionSplit, name, label)
	if err != nil {
		return SplitStatus{}, err
	}
	if !(w >= 0 && w <= 1) {
		return SplitStatus{}, c.refuse(fmt.Errorf("split %s: weight %v is not between 0 and 1", name, w))
	}
	c.step(ctx, StepVerify, label)
	vd, err := h.verifier.VerifyReader(ctx, label, manifest, payload, h.expectModule(name))
	if err != nil {
		return SplitStatus{}, c.refuse(err)
	}
	m := vd.Manifest
	c.ev.To = versionRef(m.Version, m.Digest.Hex())
	if err := h.store.CheckVersion(m); err != nil {
		return SplitStatus{}, c.refuse(err)
	}
	c.step(ctx, StepPrepare, c.ev.To)
	prep, err := h.prepareModule(ctx, name, vd)
	if err != nil {
		return SplitStatus{}, c.refuse(err)
	}
	if from, fromDigest, ok := prep.From(); ok {
		c.ev.From = versionRef(from, fromDigest)
	}
	c.ev.Detail = fmt.Sprintf("salt %q, weight %v%%", salt, w*100)
	if err := c.allow(); err != nil {
		prep.Discard()
		return SplitStatus{}, err
	}
	mc, err := prep.Split(salt, w)
	if err != nil {
		prep.Discard()
		return SplitStatus{}, c.fail(err)
	}
	c.count(audit.ResultOK, nil)
	c.endSpan(ResultOK, nil)
	s := &split{mc: mc, salt: salt}
	h.splits.mu.Lock()
	if h.splits.running == nil {
		h.splits.running = map[string]*split{}
	}
	h.splits.running[name] = s
	h.splits.mu.Unlock()
	return s.status(), nil
}

func (s *split) status() SplitStatus {
	st := SplitStatus{Module: s.mc.Module(), Version: s.mc.Version(), Digest: s.mc.Digest(), Salt: s.salt, Weight: s.mc.Weight()}
	st.Stable, st.StableDigest = s.mc.Stable()
	return st
}

// Split describes module name's running A/B split; ok is false if none
// runs.
func (h *Host) Split(name string) (st SplitStatus, ok bool) {
	h.splits.mu.Lock()
	s := h.splits.running[name]
	h.splits.mu.Unlock()
	if s == nil {
		return SplitStatus{}, false
	}
	return s.status(), true
}

// SetSplitWeight makes B serve share w (0 to 1) of module name's calls
// from now on, without a reload, and audits the change under the actor of
// ctx. It fails with ErrNoSplit when no split runs.
func (h *Host) SetSplitWeight(ctx context.Context, name string, w float64) (SplitStatus, error) {
	h.splits.mu.Lock()
	defer h.splits.mu.Unlock()
	s := h.splits.running[name]
	if s == nil {
		return SplitStatus{}, fmt.Errorf("split %s: %w", name, ErrNoSplit)
	}
	before := s.mc.Weight()
	if err := s.mc.SetWeight(w); err != nil {
		return s.status(), fmt.Errorf("split %s: %w", name, err)
	}
	h.recordSplit(ctx, s, fmt.Sprintf("weight %v%% -> %v%%", before*100, w*100))
	return s.status(), nil
}

// EndSplit takes B out of module name's split: A serves every call again,
// B's running calls finish (bounded by the drain timeout), and the module
// takes changes again. It fails with ErrNoSplit when no split runs.
func (h *Host) EndSplit(ctx context.Context, name string) error {
	h.splits.mu.Lock()
	defer h.splits.mu.Unlock()
	s := h.splits.running[name]
	if s == nil {
		return fmt.Errorf("end split %s: %w", name, ErrNoSplit)
	}
	delete(h.splits.running, name)
	s.mc.Abort()
	h.recordSplit(ctx, s, "ended: A serves every call")
	return nil
}

// recordSplit audits a change of a running split; a failed record is
// logged, the change stands (it was asked for and it is not a new code).
func (h *Host) recordSplit(ctx context.Context, s *split, detail string) {
	st := s.status()
	ev := audit.Event{Action: ActionSplit, Target: st.Module, From: versionRef(st.Stable, st.StableDigest),
		To: versionRef(st.Version, st.Digest), Result: audit.ResultOK, Detail: detail}
	if err := h.record(ctx, ev); err != nil {
		h.log.Error("audit a split change", logkey.Module, st.Module, logkey.Err, err)
	}
}
