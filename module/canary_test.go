package module_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// startCanary loads v1 of module "m", prepares v2 from artifact and starts
// it as a canary at weight w.
func startCanary(t *testing.T, r *module.Registry, artifact string, w float64) *module.Canary {
	t.Helper()
	mustLoad(t, r, "v1", "")
	p, err := r.Prepare(context.Background(), "m", module.Source{Version: "v2", Artifact: []byte(artifact)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Canary(w)
	if err != nil {
		t.Fatalf("Canary(%v) = %v", w, err)
	}
	return c
}

func callKey(t *testing.T, m *module.Module, key string) string {
	t.Helper()
	out, err := m.CallKey(context.Background(), key, "f", nil)
	if err != nil {
		t.Fatalf("CallKey(%s) = %v", key, err)
	}
	return string(out)
}

// TestCanaryStickyMonotoneSplit: over 100,000 keys, a key always lands on
// the same version at a weight, the canary's share is within one point of
// the weight, and a key in the canary at one weight is in it at every
// higher one.
func TestCanaryStickyMonotoneSplit(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	c := startCanary(t, r, "", 0)
	m := r.Module("m")
	const keys = 100000
	in := make([]bool, keys) // in the canary at the previous weight
	for _, w := range []float64{0.01, 0.05, 0.10, 0.25, 0.50, 0.90} {
		if err := c.SetWeight(w); err != nil {
			t.Fatal(err)
		}
		if got := c.Weight(); math.Abs(got-w) > 1e-9 {
			t.Errorf("Weight() = %v; want %v", got, w)
		}
		n := 0
		for k := range keys {
			key := fmt.Sprintf("user-%d", k)
			v := callKey(t, m, key)
			if again := callKey(t, m, key); again != v {
				t.Fatalf("weight %v: key %s went to %s, then to %s", w, key, v, again)
			}
			canary := v == "v2"
			if in[k] && !canary {
				t.Fatalf("weight %v: key %s left the canary it joined at a lower weight", w, key)
			}
			in[k] = canary
			if canary {
				n++
			}
		}
		if share := float64(n) / keys; math.Abs(share-w) > 0.01 {
			t.Errorf("weight %v: %.4f of the keys went to the canary; want within ±0.01", w, share)
		} else {
			t.Logf("weight %v: %.4f of %d keys on the canary", w, share, keys)
		}
	}
}

// TestCanaryKeySetDependsOnCanary: two canaries at the same weight pick
// different keys (the hash is salted with the canary's digest), so the same
// users are not always the first to try a new version.
func TestCanaryKeySetDependsOnCanary(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	m := r.Module("m")
	pick := func(c *module.Canary) map[string]bool {
		set := map[string]bool{}
		for k := range 2000 {
			key := fmt.Sprintf("user-%d", k)
			if callKey(t, m, key) == c.Version() {
				set[key] = true
			}
		}
		return set
	}
	a := startCanary(t, r, "a", 0.5)
	setA := pick(a)
	a.Abort()
	p, err := r.Prepare(context.Background(), "m", module.Source{Version: "v3", Artifact: []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Canary(0.5)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Abort()
	setB := pick(b)
	same := 0
	for k := range setA {
		if setB[k] {
			same++
		}
	}
	// Independent halves share about a quarter of the keys.
	if frac := float64(same) / 2000; frac < 0.18 || frac > 0.32 {
		t.Errorf("two canaries at 50%% share %.2f of 2000 keys; want about 0.25 (independent choices)", frac)
	}
}

func TestCanaryKeylessSplit(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	startCanary(t, r, "", 0.2)
	n := 0
	const calls = 100000
	for range calls {
		if callVersion(t, r) == "v2" {
			n++
		}
	}
	if share := float64(n) / calls; math.Abs(share-0.2) > 0.01 {
		t.Errorf("%.4f of the calls without a key went to the canary at weight 0.2; want within ±0.01", share)
	}
}

// TestCanaryHoldsTheModule: a load or rollback during a canary gets a
// *BusyError naming the canary; once the canary is aborted they work again.
func TestCanaryHoldsTheModule(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	c := startCanary(t, r, "", 0.1)
	ctx := context.Background()
	_, errLoad := r.Load(ctx, "m", module.Source{Version: "v3"})
	_, errRollback := r.Rollback(ctx, "m")
	for _, err := range []error{errLoad, errRollback} {
		var be *module.BusyError
		if !errors.Is(err, module.ErrBusy) || !errors.As(err, &be) || be.Canary != "v2" || be.Module != "m" {
			t.Errorf("change during a canary = %v; want a *BusyError matching ErrBusy naming canary v2", err)
		}
	}
	if want := "load m@v3: m@v2 is under canary (promote or abort it first)"; errLoad == nil || errLoad.Error() != want {
		t.Errorf("Load() error = %q; want %q", errLoad, want)
	}
	if st := r.Module("m").Status(); st.Canary == nil || st.Canary.Version != "v2" || st.CanaryWeight < 0.09 || st.CanaryWeight > 0.11 {
		t.Errorf("Status() = %+v; want canary v2 at weight 0.1", st)
	}
	c.Abort()
	if err := c.SetWeight(0.5); !errors.Is(err, module.ErrClosed) {
		t.Errorf("SetWeight() after Abort = %v; want ErrClosed", err)
	}
	if _, err := c.Promote(ctx); !errors.Is(err, module.ErrClosed) {
		t.Errorf("Promote() after Abort = %v; want ErrClosed", err)
	}
	mustLoad(t, r, "v3", "")
	if got := callVersion(t, r); got != "v3" {
		t.Errorf("after the abort and a load, calls go to %s; want v3", got)
	}
}

func TestCanaryNeedsAStableVersion(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	p, err := r.Prepare(context.Background(), "m", module.Source{Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Canary(0.1); !errors.Is(err, module.ErrNotFound) {
		t.Errorf("Canary() of a first version = %v; want ErrNotFound", err)
	}
	p.Discard()
	mustLoad(t, r, "v1", "") // the slot was released
}

func TestCanaryPromote(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	c := startCanary(t, r, "", 0.05)
	st, err := c.Promote(context.Background())
	if err != nil || st.Version != "v2" {
		t.Fatalf("Promote() = %+v, %v; want v2 active", st, err)
	}
	for range 100 {
		if got := callVersion(t, r); got != "v2" {
			t.Fatalf("after Promote a call went to %s; want v2", got)
		}
	}
	s := r.Module("m").Status()
	if s.Active.Version != "v2" || s.Previous == nil || s.Previous.Version != "v1" || s.Canary != nil {
		t.Errorf("Status() = %+v; want v2 active, v1 previous, no canary", s)
	}
	if got, _ := b.prepared[1].migrated.Load().(string); got != "v1" {
		t.Errorf("canary's migrate hook ran with %q; want v1", got)
	}
	if _, err := r.Rollback(context.Background(), "m"); err != nil {
		t.Errorf("Rollback() after a promotion = %v; want v1 back", err)
	}
}

func TestCanaryPromoteMigrateFails(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	c := startCanary(t, r, "failmigrate", 0.5)
	_, err := c.Promote(context.Background())
	var le *module.LoadError
	if !errors.As(err, &le) || le.Check != "migrate" || le.Version != "v2" {
		t.Fatalf("Promote() = %v; want a *LoadError at check migrate", err)
	}
	for range 100 {
		if got := callVersion(t, r); got != "v1" {
			t.Fatalf("after a failed promotion a call went to %s; want v1", got)
		}
	}
	waitFor(t, "the canary to close", func() bool { return b.prepared[1].closed.Load() })
	mustLoad(t, r, "v3", "") // the slot was released
}

// TestCanaryAbortUnderLoad: aborting a canary under load fails no call;
// calls running on the canary finish there, and it closes after them.
func TestCanaryAbortUnderLoad(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, 10*time.Second)
	c := startCanary(t, r, "block", 0.5) // a call on the canary waits for its gate
	canary := b.prepared[1]
	m := r.Module("m")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var calls, onCanary atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				out, err := m.CallKey(ctx, fmt.Sprintf("%d-%d", w, k), "f", nil)
				calls.Add(1)
				if err != nil {
					t.Errorf("CallKey() = %v; want no call to fail across the abort", err)
				}
				if string(out) == "v2" {
					onCanary.Add(1)
				}
			}
		})
	}
	// Each caller soon draws a key of the canary and waits there.
	waitFor(t, "every caller held by the canary", func() bool { return canary.running.Load() == 4 })
	c.Abort()
	if canary.closed.Load() {
		t.Fatal("the canary closed while calls ran on it")
	}
	close(canary.gate)
	after := calls.Load()
	waitFor(t, "calls after the abort", func() bool { return calls.Load() > after+1000 })
	close(stop)
	wg.Wait()
	waitFor(t, "the aborted canary to close", func() bool { return canary.closed.Load() })
	if n := onCanary.Load(); n != 4 {
		t.Errorf("%d calls answered by the canary; want the 4 running at the abort", n)
	}
}

// TestCanaryCounters: both versions count failures by kind, and at weight
// 0.5 every call is timed.
func TestCanaryCounters(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	c := startCanary(t, r, "", 0.5)
	m := r.Module("m")
	ctx := context.Background()
	for k := range 1000 {
		in := []byte("ok")
		if k%10 == 0 {
			in = []byte("fail")
		}
		m.CallKey(ctx, fmt.Sprintf("k%d", k), "f", in)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	m.CallKey(cctx, "k1", "f", nil) // fakeCode does not check ctx: succeeds
	stable, canary := c.Sample()
	if stable.Calls+canary.Calls != 1001 {
		t.Errorf("calls %d + %d; want 1001", stable.Calls, canary.Calls)
	}
	if f := stable.Failures[module.FailGuest] + canary.Failures[module.FailGuest]; f != 100 || stable.Failed()+canary.Failed() != 100 {
		t.Errorf("guest failures %d (failed %d); want 100", f, stable.Failed()+canary.Failed())
	}
	if n := stable.Latency.Count() + canary.Latency.Count(); n != 1001 {
		t.Errorf("%d calls timed at weight 0.5; want all 1001", n)
	}
	if stable.Calls < 400 || canary.Calls < 400 {
		t.Errorf("calls split %d/%d at weight 0.5; want about half each", stable.Calls, canary.Calls)
	}
	got := map[string]uint64{}
	for _, s := range m.Samples() {
		got[s.Role+" "+s.Version] = s.Calls
	}
	if got["active v1"] != stable.Calls || got["canary v2"] != canary.Calls {
		t.Errorf("Samples() = %v; want active v1 with %d calls and canary v2 with %d", got, stable.Calls, canary.Calls)
	}
	d := canary.Sub(&module.Sample{})
	if d.Calls != canary.Calls || d.Latency.Count() != canary.Latency.Count() {
		t.Errorf("Sub(zero) = %d calls; want %d", d.Calls, canary.Calls)
	}
}

// TestTimeCalls: a registry asked to time a share of calls does so without
// a canary; by default no call is timed.
func TestTimeCalls(t *testing.T) {
	for _, share := range []float64{0, 0.25} {
		r, err := module.New(module.Options{Backend: &fakeBackend{}, TimeCalls: share})
		if err != nil {
			t.Fatal(err)
		}
		mustLoad(t, r, "v1", "")
		for range 4000 {
			callVersion(t, r)
		}
		s := r.Module("m").Samples()[0]
		if got := float64(s.Latency.Count()) / 4000; math.Abs(got-share) > 0.05 {
			t.Errorf("TimeCalls %v: %.3f of the calls timed", share, got)
		}
		r.Close(context.Background())
	}
	if _, err := module.New(module.Options{Backend: &fakeBackend{}, TimeCalls: 2}); err == nil {
		t.Errorf("New(TimeCalls: 2) = nil error; want a refusal")
	}
}

func TestCloseAbortsCanary(t *testing.T) {
	b := &fakeBackend{}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	c := startCanary(t, r, "", 0.5)
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !b.prepared[1].closed.Load() {
		t.Errorf("the canary's code is open after Close")
	}
	if err := c.SetWeight(0.1); !errors.Is(err, module.ErrClosed) {
		t.Errorf("SetWeight() after Close = %v; want ErrClosed", err)
	}
}
