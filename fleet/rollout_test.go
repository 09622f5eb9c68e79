package fleet_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
)

// gated serves m's payload over HTTP, held until the returned open is
// called (idempotent; also called when the test ends).
func (e *env) gated(m fleet.ModuleSpec) (fleet.ModuleSpec, func()) {
	e.t.Helper()
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".wasm") {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		http.ServeFile(w, r, e.dir+r.URL.Path)
	}))
	e.t.Cleanup(srv.Close)
	e.t.Cleanup(open) // runs before srv.Close: no handler stays blocked
	m.URL = srv.URL + "/" + m.Version + ".wasm"
	return m, open
}

// reports collects every report of in's agent until the test ends.
func reports(t *testing.T, in *instance) func() []fleet.Applied {
	var (
		mu  sync.Mutex // protects all
		all []fleet.Applied
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ap, next := in.agent.Applied()
		for {
			mu.Lock()
			all = append(all, ap)
			mu.Unlock()
			select {
			case <-next:
			case <-stop:
				return
			}
			ap, next = in.agent.Applied()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() []fleet.Applied {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(all)
	}
}

// TestCanaryPolicyRollout rolls out a spec with a canary policy: each
// instance of a wave canaries the version under its own traffic and
// reports pending meanwhile; a promotion is its ack and the rollout moves
// on. A version whose canary aborts (its calls fail) is a refusal with
// check canary: the rollout halts at its first wave and reverts it.
func TestCanaryPolicyRollout(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	v2 := e.artifact(gV2, "v2", false)
	failing := e.artifact(gErr, "v3", false)
	var ins []*instance
	for _, id := range []string{"a", "b", "c"} {
		in := e.startInstance(id, nil, nil, nil)
		ins = append(ins, in)
	}
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 3 })
	e.controller("c1", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1)})
	e.until("v1 done", phase(rev, fleet.Done))
	seen := map[string]func() []fleet.Applied{}
	for _, in := range ins {
		testhost.KeyedCalls(t, in.host.Module("pricing"), 1) // the canaries' traffic
		seen[in.id] = reports(t, in)
	}

	policy := &fleet.CanaryPolicy{Steps: []float64{50}, Interval: 200 * time.Millisecond, MinCalls: 20}
	v2.Canary = policy
	rev = e.set(fleet.Desired{Spec: spec(v2), Waves: []string{"1", "100%"}})
	st := e.until("v2 done through canaries", phase(rev, fleet.Done))
	if !st.Converged(spec(v2)) {
		t.Fatalf("status after the canary rollout:\n%s\nwant every instance on v2", st)
	}
	for _, in := range ins {
		var pending, promoted bool
		for _, ap := range seen[in.id]() {
			m := ap.Modules["pricing"]
			pending = pending || (ap.Spec == spec(v2).ID() && ap.Result == fleet.ResultPending && m.Canary != "")
			promoted = promoted || (ap.Result == fleet.ResultOK && strings.HasPrefix(m.Canary, "promoted"))
		}
		if !pending || !promoted {
			t.Errorf("instance %s reported pending with a canary: %v, promoted: %v; want both", in.id, pending, promoted)
		}
		if got := in.serves(); got != hexOf(v2) {
			t.Errorf("instance %s serves %s; want v2 %s", in.id, got, hexOf(v2))
		}
	}

	failing.Canary = policy
	rev = e.set(fleet.Desired{Spec: spec(failing), Waves: []string{"1", "100%"}})
	st = e.until("failing canary halted", phase(rev, fleet.Halted))
	if r := st.Rollout; len(r.Touched()) != 1 || !strings.Contains(r.Reason, "wave 1") || !strings.Contains(r.Reason, "check canary") {
		t.Errorf("halted rollout touched %v, reason %q; want one instance, wave 1, check canary", r.Touched(), r.Reason)
	}
	e.until("reverted to v2", func(st fleet.Status) bool { return st.Converged(spec(v2)) && len(st.Targets) == 0 })
	for _, in := range ins {
		if got := in.serves(); got != hexOf(v2) {
			t.Errorf("instance %s serves %s after the halt; want v2", in.id, got)
		}
		if v := in.quote(t); v != "v2" {
			t.Errorf("instance %s answers %s; want v2", in.id, v)
		}
	}
}

// TestPauseResumeAbort drives a running controller: a paused rollout
// holds at its wave even once the wave acked, resumes to the end; an
// aborted one reverts every instance it moved.
func TestPauseResumeAbort(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	v2, openV2 := e.gated(e.artifact(gV2, "v2", false))
	v3, openV3 := e.gated(e.artifact(gV3, "v3", false))
	var ins []*instance
	for _, id := range []string{"a", "b", "c"} {
		ins = append(ins, e.startInstance(id, nil, nil, nil))
	}
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 3 })
	e.controller("c1", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1)})
	e.until("v1 done", phase(rev, fleet.Done))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	rev = e.set(fleet.Desired{Spec: spec(v2), Waves: []string{"1", "100%"}})
	e.until("v2 in its first wave", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase == fleet.Running && len(st.Targets) == 1
	})
	if _, err := e.group.Command(ctx, fleet.Pause, "bob"); err != nil {
		t.Fatalf("Command(pause) = %v", err)
	}
	e.until("paused", phase(rev, fleet.Paused))
	openV2()
	// The first wave acks; a paused rollout does not move on. The
	// controller looks every tick (100 ms): 20 ticks of holding.
	e.until("the first wave acked", func(st fleet.Status) bool {
		n := 0
		for _, ap := range st.Applied {
			if ap.Spec == spec(v2).ID() && ap.Result == fleet.ResultOK {
				n++
			}
		}
		return n == 1
	})
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		st, err := e.group.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.Rollout; r.Phase != fleet.Paused || r.Wave != 0 || len(st.Targets) != 1 {
			t.Fatalf("paused rollout moved: phase %s, wave %d, targets %v; want paused in wave 1", r.Phase, r.Wave+1, st.Targets)
		}
	}
	if _, err := e.group.Command(ctx, fleet.Resume, "bob"); err != nil {
		t.Fatalf("Command(resume) = %v", err)
	}
	e.until("v2 done after resume", phase(rev, fleet.Done))
	e.until("every instance on v2", func(st fleet.Status) bool { return st.Converged(spec(v2)) })

	rev = e.set(fleet.Desired{Spec: spec(v3), Waves: []string{"1", "100%"}})
	e.until("v3 in its first wave", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && len(st.Targets) == 1
	})
	openV3()
	e.until("the first wave on v3", func(st fleet.Status) bool {
		return slices.ContainsFunc(st.Applied, func(ap fleet.Applied) bool { return ap.Spec == spec(v3).ID() && ap.Result == fleet.ResultOK })
	})
	r, err := e.group.Command(ctx, fleet.Abort, "carol")
	if err != nil {
		t.Fatalf("Command(abort) = %v", err)
	}
	if r.Revision != rev {
		t.Errorf("Command(abort) answered about rollout %d; want %d", r.Revision, rev)
	}
	st := e.until("aborted", phase(rev, fleet.Aborted))
	if !strings.Contains(st.Rollout.Reason, "aborted by carol") {
		t.Errorf("abort reason = %q; want the writer, carol", st.Rollout.Reason)
	}
	e.until("reverted to v2", func(st fleet.Status) bool { return st.Converged(spec(v2)) && len(st.Targets) == 0 })
	for _, in := range ins {
		if v := in.quote(t); v != "v2" {
			t.Errorf("instance %s answers %s after the abort; want v2", in.id, v)
		}
	}
	if _, err := e.group.Command(ctx, fleet.Resume, "bob"); err == nil {
		t.Errorf("Command(resume) after the abort = nil; want ErrNoRollout")
	}
}

// route calls in's pricing module with key and reports whether B (v2)
// answered.
func (in *instance) routesToB(t *testing.T, key string) bool {
	out, err := in.host.Module("pricing").CallKey(context.Background(), key, "quote", testhost.QuoteRequest)
	if err != nil {
		t.Fatalf("instance %s: CallKey(%s) = %v", in.id, key, err)
	}
	return bytes.Contains(out, []byte(`"v2"`))
}

// TestSplitFleetWide runs a fleet-wide A/B split from etcd: two instances
// send each of 100,000 keys to the same version, B's share within a point
// of the weight; raising the weight moves keys only from A to B and
// reloads nothing; 0 and 100 send every key to A and to B; removing B
// ends the split.
func TestSplitFleetWide(t *testing.T) {
	e := newEnv(t, 0)
	a := e.artifact(gV1, "v1", false)
	b := e.artifact(gV2, "v2", false)
	ins := []*instance{e.startInstance("a", nil, nil, nil), e.startInstance("b", nil, nil, nil)}
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 2 })
	e.controller("c1", e.cli)
	withB := func(w float64) fleet.Spec {
		m := a
		m.B = &fleet.SplitSpec{Version: b.Version, Digest: b.Digest, URL: b.URL, Weight: w}
		return spec(m)
	}
	apply := func(s fleet.Spec) {
		t.Helper()
		rev := e.set(fleet.Desired{Spec: s})
		e.until(fmt.Sprintf("spec %s done", s.ID()), func(st fleet.Status) bool { return phase(rev, fleet.Done)(st) && st.Converged(s) })
	}

	const keys = 100000
	onB := make([]bool, keys)
	var bCalls uint64
	for _, w := range []float64{30, 60} {
		apply(withB(w))
		for _, in := range ins {
			sp, ok := in.host.Split("pricing")
			if !ok || sp.Digest != hexOf(b) || sp.StableDigest != hexOf(a) || math.Abs(sp.Weight-w/100) > 1e-9 {
				t.Fatalf("instance %s: split = %+v, %v; want B %s at %v%% beside A %s", in.id, sp, ok, hexOf(b), w, hexOf(a))
			}
		}
		if st, _ := e.group.Status(context.Background()); st.Applied[0].Modules["pricing"].B == nil ||
			st.Applied[0].Modules["pricing"].B.Weight != w {
			t.Errorf("applied state = %+v; want B at %v%%", st.Applied[0].Modules["pricing"], w)
		}
		n := 0
		for k := range keys {
			key := fmt.Sprintf("user-%d", k)
			got := ins[0].routesToB(t, key)
			if other := ins[1].routesToB(t, key); other != got {
				t.Fatalf("weight %v%%: key %s went to B=%v on a and B=%v on b; want the same version", w, key, got, other)
			}
			if onB[k] && !got {
				t.Fatalf("weight %v%%: key %s moved from B back to A", w, key)
			}
			onB[k] = got
			if got {
				n++
			}
		}
		if share := float64(n) / keys * 100; math.Abs(share-w) > 1 {
			t.Errorf("weight %v%%: %.2f%% of the keys on B; want within ±1 point", w, share)
		}
		// No reload: B keeps its counters, and one split start is audited.
		st := ins[0].host.Module("pricing").Status()
		if st.Canary == nil || st.Canary.Calls < bCalls {
			t.Errorf("weight %v%%: B's calls = %+v; want at least %d (the same B, not reloaded)", w, st.Canary, bCalls)
		} else {
			bCalls = st.Canary.Calls
		}
	}
	evs, err := ins[0].host.History(context.Background(), audit.Filter{Target: "pricing", Action: host.ActionSplit})
	if err != nil {
		t.Fatal(err)
	}
	starts := 0
	for _, ev := range evs {
		if ev.Result == audit.ResultStarted {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("audited split starts = %d (%+v); want 1: a weight change reloads nothing", starts, evs)
	}

	for _, tc := range []struct {
		w    float64
		toB  bool
		name string
	}{{0, false, "weight 0"}, {100, true, "weight 100"}} {
		apply(withB(tc.w))
		for k := range 2000 {
			for _, in := range ins {
				if got := in.routesToB(t, fmt.Sprintf("user-%d", k)); got != tc.toB {
					t.Fatalf("%s: instance %s sent key user-%d to B=%v; want %v", tc.name, in.id, k, got, tc.toB)
				}
			}
		}
	}

	apply(spec(a)) // B removed
	for _, in := range ins {
		if sp, ok := in.host.Split("pricing"); ok {
			t.Errorf("instance %s still splits after B was removed: %+v", in.id, sp)
		}
		for k := range 2000 {
			if in.routesToB(t, fmt.Sprintf("user-%d", k)) {
				t.Fatalf("instance %s sent key user-%d to B after B was removed", in.id, k)
			}
		}
	}

	// A B that cannot be verified is refused like an A: never loaded, the
	// rollout halts, A serves alone.
	unsigned := e.artifact(gV3, "v3", true)
	m := a
	m.B = &fleet.SplitSpec{Version: unsigned.Version, Digest: unsigned.Digest, URL: unsigned.URL, Weight: 50}
	rev := e.set(fleet.Desired{Spec: spec(m)})
	st := e.until("unsigned B halted", phase(rev, fleet.Halted))
	if !strings.Contains(st.Rollout.Reason, "check policy") {
		t.Errorf("halt reason = %q; want B's failed check, policy", st.Rollout.Reason)
	}
	e.until("reverted to A alone", func(st fleet.Status) bool { return st.Converged(spec(a)) && len(st.Targets) == 0 })
	for _, in := range ins {
		if sp, ok := in.host.Split("pricing"); ok {
			t.Errorf("instance %s splits with an unsigned B: %+v", in.id, sp)
		}
	}
}
