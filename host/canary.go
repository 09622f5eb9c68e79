package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// ActionCanary is the audit action of a canary: its start, every verdict,
// and how it ended, all under the ID of the change that started it.
const ActionCanary audit.Action = "canary"

// StepCanary is the progress step of a canary once it serves its first
// weight.
const StepCanary = "canary"

// ErrNoCanary: the module runs no canary.
var ErrNoCanary = errors.New("no canary running")

// CanaryStatus describes a module's canary: the one running, or the last
// one that ended.
type CanaryStatus struct {
	// ID is the audit ID of the canary's records.
	ID     string
	Module string
	// Artifact is the artifact as the one who started it named it.
	Artifact string
	// Version and Digest name the canary, Stable and StableDigest the
	// version it is compared with.
	Version, Digest      string
	Stable, StableDigest string
	canary.Status
}

// canaries are a host's canaries, one per module at most.
type canaries struct {
	mu      sync.Mutex             // protects running, last, upgrade
	running map[string]*hostCanary // by module, from before the preparation
	last    map[string]*hostCanary // the last one ended, by module
	// upgrade is set while a binary upgrade is under way: no canary starts
	// then, and none may run when one starts.
	upgrade bool
}

// hostCanary is one canary of a host.
type hostCanary struct {
	h      *Host
	change *change
	label  string
	// Set under canaries.mu, then read-only.
	mc *module.Canary  // set once prepared
	ro *canary.Rollout // set once started
	// ended is closed once watch recorded the canary's end (store, and
	// the module free for the next change).
	ended chan struct{}
}

// CanaryFile verifies the artifact at path as LoadFile does, keeps it in
// the store and runs it as a canary of module name beside the module's
// active version, following p: see CanaryReader.
func (h *Host) CanaryFile(ctx context.Context, name, path string, p canary.Policy) (CanaryStatus, error) {
	return h.startCanary(ctx, name, filepath.Base(path), p, func(ctx context.Context) (*artifact.Verified, error) {
		return h.verifier.Verify(ctx, path, h.expectModule(name))
	})
}

// CanaryReader verifies an uploaded artifact as LoadReader does, prepares
// it (compile, validate, pre-warm), keeps it in the store and, once the
// start is recorded in the audit log, makes it serve the first step's
// weight of module name's calls beside the active version, the stable
// one. It returns once the canary serves; a canary.Rollout then drives it
// (see package canary) until it is promoted, the ordinary activation, or
// aborted. Every verdict is recorded in the audit log before it takes
// effect, with the numbers behind it, under the ID of the change.
//
// While the canary runs, loads and rollbacks of the module are refused
// with a *module.BusyError naming it, and so is a binary upgrade. A refusal
// before the canary serves is audited and returned as for a load;
// cancelling ctx aborts the change until then, and not the canary after.
func (h *Host) CanaryReader(ctx context.Context, name, label string, manifest []byte, payload io.Reader, p canary.Policy) (CanaryStatus, error) {
	return h.startCanary(ctx, name, label, p, func(ctx context.Context) (*artifact.Verified, error) {
		return h.verifier.VerifyReader(ctx, label, manifest, payload, h.expectModule(name))
	})
}

func (h *Host) startCanary(ctx context.Context, name, label string, p canary.Policy, verify func(context.Context) (*artifact.Verified, error)) (CanaryStatus, error) {
	c, err := h.begin(ctx, ActionCanary, name, label)
	if err != nil {
		return CanaryStatus{}, err
	}
	if err := p.Validate(); err != nil {
		return CanaryStatus{}, c.refuse(err)
	}
	hc := &hostCanary{h: h, change: c, label: label, ended: make(chan struct{})}
	if err := h.canaries.reserve(name, hc); err != nil {
		return CanaryStatus{}, c.refuse(err)
	}
	started := false
	defer func() {
		if !started {
			h.canaries.end(name, hc, false)
		}
	}()
	c.step(ctx, StepVerify, label)
	vd, err := verify(ctx)
	if err != nil {
		return CanaryStatus{}, c.refuse(err)
	}
	m := vd.Manifest
	c.ev.To = versionRef(m.Version, m.Digest.Hex())
	if err := h.store.CheckVersion(m); err != nil {
		return CanaryStatus{}, c.refuse(err)
	}
	c.step(ctx, StepPrepare, c.ev.To)
	prep, err := h.prepareModule(ctx, name, vd)
	if err != nil {
		return CanaryStatus{}, c.refuse(err)
	}
	if from, fromDigest, ok := prep.From(); ok {
		c.ev.From = versionRef(from, fromDigest)
	}
	c.step(ctx, StepStore, c.ev.To)
	if _, err := h.store.Put(ctx, vd); err != nil {
		prep.Discard()
		return CanaryStatus{}, c.refuse(fmt.Errorf("store %s: %w", c.ev.To, err))
	}
	if err := ctx.Err(); err != nil {
		prep.Discard()
		return CanaryStatus{}, c.refuse(fmt.Errorf("canary %s: %w", name, err))
	}
	mc, err := prep.Canary(0)
	if err != nil {
		prep.Discard()
		return CanaryStatus{}, c.refuse(err)
	}
	h.canaries.mu.Lock()
	hc.mc = mc
	h.canaries.mu.Unlock()
	ro, err := canary.Start(mc, canary.Options{Policy: p, Record: hc.record, Logger: h.log})
	if err != nil {
		mc.Abort()
		c.endSpan(ResultFailed, err)
		return CanaryStatus{}, err // the record failed: nothing more can be recorded
	}
	h.canaries.mu.Lock()
	hc.ro = ro
	h.canaries.mu.Unlock()
	started = true
	go hc.watch()
	st := hc.status()
	progress(ctx, StepCanary, fmt.Sprintf("%s serves %v%% beside %s", c.ev.To, st.Weight, c.ev.From))
	return st, nil
}

// record writes a verdict to the audit log under the canary's ID.
func (hc *hostCanary) record(v canary.Verdict) error {
	c := hc.change
	ev := c.ev
	ev.Time, ev.Result = v.Time, audit.ResultOK
	switch {
	case v.By != "":
		ev.Actor = v.By
	case v.Decision != canary.Begin:
		ev.Actor = "canary"
	}
	if v.Decision == canary.Abort {
		ev.Result, ev.Error = audit.ResultFailed, "aborted: "+v.Reason
		if v.By != "" {
			ev.Result = audit.ResultCanceled
		}
	}
	ev.Detail = v.String()
	if v.Decision != canary.Begin { // a beginning has no numbers yet
		ev.Detail += "; " + v.Window.String()
	}
	c.h.stats.countVerdict(ev.Target, string(v.Decision))
	hc.traceVerdict(v)
	if err := c.h.audit.Record(c.ctx, ev); err != nil {
		err = fmt.Errorf("canary %s refused: audit log: %w", ev.Target, err)
		c.h.log.Error("canary verdict not recorded", logkey.Module, ev.Target, "decision", v.Decision, logkey.Err, err)
		return err
	}
	return nil
}

// watch waits for the canary's end and records its outcome in the store.
func (hc *hostCanary) watch() {
	<-hc.ro.Done()
	h := hc.h
	name := hc.mc.Module()
	promoted := hc.ro.Status().State == canary.Promoted
	if promoted {
		stable, stableDigest := hc.mc.Stable()
		h.stats.countSwap(name, 0, 0)
		h.rememberActive(context.Background(), name, hc.mc.Digest(), stableDigest, false)
		h.log.Info("canary promoted", logkey.Module, name, logkey.Version, hc.mc.Version(), logkey.From, stable)
	} else if d, err := artifact.ParseDigest(hc.mc.Digest()); err == nil {
		// Aborted: like a refused load, it takes no place in the store
		// (Remove keeps it if it is the current or last-known-good one).
		if err := h.store.Remove(context.Background(), name, d); err != nil {
			h.log.Error("remove an aborted canary from the store", logkey.Module, name, logkey.Err, err)
		}
	}
	h.canaries.end(name, hc, true)
	result := string(hc.ro.Status().State)
	var err error
	if !promoted {
		err = CanaryResult(hc.status())
	}
	hc.change.endSpan(result, err)
	close(hc.ended)
}

func (hc *hostCanary) status() CanaryStatus {
	st := CanaryStatus{ID: hc.change.ev.ID, Module: hc.change.ev.Target, Artifact: hc.label}
	if hc.mc != nil {
		st.Version, st.Digest = hc.mc.Version(), hc.mc.Digest()
		st.Stable, st.StableDigest = hc.mc.Stable()
	}
	if hc.ro != nil {
		st.Status = hc.ro.Status()
	}
	return st
}

// reserve makes hc the canary of module name, unless the module has one
// or a binary upgrade is under way.
func (cs *canaries) reserve(name string, hc *hostCanary) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.upgrade {
		return fmt.Errorf("canary %s: a binary upgrade is under way: %w", name, upgrade.ErrUpgradeInProgress)
	}
	if other := cs.running[name]; other != nil {
		e := &module.BusyError{Op: "canary " + name, Module: name}
		if other.mc != nil {
			e.Canary = other.mc.Version()
		}
		return e
	}
	if cs.running == nil {
		cs.running, cs.last = make(map[string]*hostCanary), make(map[string]*hostCanary)
	}
	cs.running[name] = hc
	return nil
}

// end forgets hc as the running canary of name and, if it ran, keeps it as
// the last one.
func (cs *canaries) end(name string, hc *hostCanary, ran bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.running[name] == hc {
		delete(cs.running, name)
	}
	if ran {
		cs.last[name] = hc
	}
}

// holdUpgrade refuses a binary upgrade while a canary runs, and otherwise
// keeps canaries from starting until releaseUpgrade.
func (cs *canaries) holdUpgrade() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for name, hc := range cs.running {
		const why = "a binary upgrade does not carry a canary to the new process (see docs/canary.md)"
		if hc.mc == nil {
			return fmt.Errorf("upgrade: a canary of %s is being prepared; %s: %w", name, why, module.ErrBusy)
		}
		return fmt.Errorf("%w; %s", &module.BusyError{Op: "upgrade", Module: name, Canary: hc.mc.Version()}, why)
	}
	cs.upgrade = true
	return nil
}

func (cs *canaries) releaseUpgrade() {
	cs.mu.Lock()
	cs.upgrade = false
	cs.mu.Unlock()
}

// lookup returns the running canary of module name, else the last one.
func (cs *canaries) lookup(name string) (hc *hostCanary, running bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if hc := cs.running[name]; hc != nil && hc.ro != nil {
		return hc, true
	}
	return cs.last[name], false
}

// Canary describes the canary of module name: the running one, else the
// last one that ended. ok is false if the module never had one.
func (h *Host) Canary(name string) (st CanaryStatus, ok bool) {
	hc, _ := h.canaries.lookup(name)
	if hc == nil {
		return CanaryStatus{}, false
	}
	return hc.status(), true
}

// CanaryCommand applies an operator's decision (canary.Pause, Resume,
// Freeze, Promote or Abort) to the canary running for module name, naming
// the actor of ctx (see WithActor) in the audit log. It fails with
// ErrNoCanary when none runs. Promote and Abort return once the canary
// ended and its outcome is in the store, so the module takes the next
// change at once; a promotion that fails aborts the canary.
func (h *Host) CanaryCommand(ctx context.Context, name string, d canary.Decision) (CanaryStatus, error) {
	hc, running := h.canaries.lookup(name)
	if !running {
		return CanaryStatus{}, fmt.Errorf("%s %s: %w", d, name, ErrNoCanary)
	}
	by := actor(ctx)
	if by == "" {
		by = "operator"
	}
	commands := map[canary.Decision]func(context.Context, string) error{
		canary.Pause: hc.ro.Pause, canary.Resume: hc.ro.Resume, canary.Freeze: hc.ro.Freeze,
		canary.Promote: hc.ro.Promote, canary.Abort: hc.ro.Abort,
	}
	cmd := commands[d]
	if cmd == nil {
		return CanaryStatus{}, fmt.Errorf("canary %s: no command %q (pause, resume, freeze, promote, abort)", name, d)
	}
	err := cmd(ctx, by)
	if errors.Is(err, canary.ErrEnded) {
		err = fmt.Errorf("%s %s: %w (it ended)", d, name, ErrNoCanary)
	}
	if err == nil && (d == canary.Promote || d == canary.Abort) {
		// Return once the canary is gone: the store says what serves and
		// the module takes the next change.
		select {
		case <-hc.ended:
		case <-ctx.Done():
			return hc.status(), fmt.Errorf("%s %s: waiting for the canary to end: %w", d, name, ctx.Err())
		}
	}
	return hc.status(), err
}

// WatchCanary returns the verdicts of module name's canary numbered after
// seq, and its status, waiting until there is one or the canary ended.
// id, if not empty, names the canary (CanaryStatus.ID); it fails with
// ErrNoCanary when that is not the module's running or last canary.
// Cancelling ctx ends the wait.
func (h *Host) WatchCanary(ctx context.Context, name, id string, seq int) ([]canary.Verdict, CanaryStatus, error) {
	hc, _ := h.canaries.lookup(name)
	if hc == nil || (id != "" && hc.change.ev.ID != id) {
		return nil, CanaryStatus{}, fmt.Errorf("watch canary %s: %w", name, ErrNoCanary)
	}
	for {
		vs, changed := hc.ro.Verdicts(seq)
		select {
		case <-hc.ro.Done():
			vs, _ = hc.ro.Verdicts(seq)
			return vs, hc.status(), nil
		default:
		}
		if len(vs) > 0 {
			return vs, hc.status(), nil
		}
		select {
		case <-changed:
		case <-hc.ro.Done():
		case <-ctx.Done():
			return nil, hc.status(), ctx.Err()
		}
	}
}

// CanaryResult returns the error of a canary that ended: nil if it was
// promoted, an error matching canary.ErrAborted that says why if it was
// aborted, and nil for one still running.
func CanaryResult(st CanaryStatus) error {
	if st.State != canary.Aborted {
		return nil
	}
	why := "aborted"
	if st.Last != nil && st.Last.Decision == canary.Abort {
		why = st.Last.Reason
		if st.Last.By != "" {
			why += " (" + st.Last.By + ")"
		}
	}
	return fmt.Errorf("canary %s@%s: %w: %s", st.Module, st.Version, canary.ErrAborted, why)
}

// closeCanaries aborts the running canaries and waits (bounded by ctx) for
// them to end.
func (h *Host) closeCanaries(ctx context.Context) {
	h.canaries.mu.Lock()
	var running []*hostCanary
	for _, hc := range h.canaries.running {
		if hc.ro != nil {
			running = append(running, hc)
		}
	}
	h.canaries.mu.Unlock()
	for _, hc := range running {
		hc.ro.Abort(ctx, "shutdown")
		select {
		case <-hc.ro.Done():
		case <-ctx.Done():
		}
	}
}
