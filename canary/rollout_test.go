package canary_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/module"
)

// fakeTarget serves perTick calls at each Sample, split by the weight,
// with deterministic failures and latencies.
type fakeTarget struct {
	fail [2]float64 // failure rate of stable and canary
	slow [2]int     // latency bucket shift of stable and canary (10: ×1.54)

	mu         sync.Mutex // protects every field below
	perTick    uint64
	weight     float64
	weights    []float64
	s          [2]module.Sample
	owed       [2]float64 // fractional failures not yet counted
	promoted   bool
	aborted    bool
	promoteErr error
}

func (f *fakeTarget) SetWeight(w float64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.weight = w
	f.weights = append(f.weights, w)
	return nil
}

func (f *fakeTarget) Sample() (module.Sample, module.Sample) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.weight
	if f.aborted || f.promoted {
		return f.s[0], f.s[1]
	}
	nc := uint64(float64(f.perTick) * w)
	n := [2]uint64{f.perTick - nc, nc}
	timed := uint64(float64(f.perTick) * min(w, 1-w))
	for v := range 2 {
		s := &f.s[v]
		s.Calls += n[v]
		f.owed[v] += float64(n[v]) * f.fail[v]
		whole := uint64(f.owed[v])
		s.Failures[module.FailGuest] += whole
		f.owed[v] -= float64(whole)
		// Half the timed calls in bucket 220 (~14µs), half in 221, a few
		// in 228.
		s.Latency.Counts[220+f.slow[v]] += timed / 2
		s.Latency.Counts[221+f.slow[v]] += timed - timed/2 - timed/100
		s.Latency.Counts[228+f.slow[v]] += timed / 100
	}
	return f.s[0], f.s[1]
}

func (f *fakeTarget) Promote(context.Context) (module.VersionStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.promoteErr != nil {
		f.aborted = true
		return module.VersionStatus{}, f.promoteErr
	}
	f.promoted = true
	return module.VersionStatus{Version: "v2"}, nil
}

func (f *fakeTarget) Abort() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.aborted = true
}

func (f *fakeTarget) ended() (promoted, aborted bool, weights []float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.promoted, f.aborted, slices.Clone(f.weights)
}

// recorder keeps the verdicts a rollout records.
type recorder struct {
	mu       sync.Mutex // protects verdicts, failOn
	verdicts []canary.Verdict
	failOn   canary.Decision
}

func (r *recorder) record(v canary.Verdict) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v.Decision == r.failOn {
		return errors.New("disk full")
	}
	r.verdicts = append(r.verdicts, v)
	return nil
}

func (r *recorder) decisions() []canary.Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ds []canary.Decision
	for _, v := range r.verdicts {
		ds = append(ds, v.Decision)
	}
	return ds
}

func start(t *testing.T, f *fakeTarget, rec *recorder, p canary.Policy) *canary.Rollout {
	t.Helper()
	r, err := canary.Start(f, canary.Options{Policy: p, Record: rec.record})
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	t.Cleanup(func() {
		r.Abort(context.Background(), "test cleanup")
		wait(t, r)
	})
	return r
}

// wait waits (at most 10s) for the rollout to end.
func wait(t *testing.T, r *canary.Rollout) canary.Status {
	t.Helper()
	select {
	case <-r.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the rollout did not end within 10s: %+v", r.Status())
	}
	return r.Status()
}

func fast(p canary.Policy) canary.Policy {
	p.Interval = cmpOr(p.Interval, 30*time.Millisecond)
	p.MinCalls = cmpOr(p.MinCalls, 100)
	return p
}

func cmpOr[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

func TestGoodCanaryPromoted(t *testing.T) {
	f := &fakeTarget{perTick: 1000, fail: [2]float64{0.01, 0.01}}
	rec := &recorder{}
	r := start(t, f, rec, fast(canary.Policy{Steps: []float64{10, 50}}))
	st := wait(t, r)
	promoted, aborted, weights := f.ended()
	if st.State != canary.Promoted || !promoted || aborted {
		t.Fatalf("state %s (promoted %v, aborted %v), last %v; want promoted", st.State, promoted, aborted, st.Last)
	}
	if !slices.Equal(weights, []float64{0.1, 0.5}) {
		t.Errorf("weights set %v; want [0.1 0.5]", weights)
	}
	if got, want := rec.decisions(), []canary.Decision{canary.Begin, canary.Pass, canary.Promote}; !slices.Equal(got, want) {
		t.Errorf("verdicts %v; want %v", got, want)
	}
	if st.Weight != 100 || st.EndedAt.IsZero() {
		t.Errorf("status %+v; want weight 100 and an end time", st)
	}
	vs, _ := r.Verdicts(0)
	if len(vs) != 3 || vs[0].Seq != 1 || vs[2].Seq != 3 {
		t.Errorf("Verdicts(0) = %v; want 3 numbered 1..3", vs)
	}
	if more, _ := r.Verdicts(2); len(more) != 1 || more[0].Decision != canary.Promote {
		t.Errorf("Verdicts(2) = %v; want the promote verdict", more)
	}
}

func TestRegressionsAborted(t *testing.T) {
	for _, tt := range []struct {
		name, reason string
		fail         float64
		slow         int
		policy       canary.Policy
	}{
		// A long interval: the abort must not wait for the window's end.
		{"failures", "failure rate", 0.06, 0, canary.Policy{Steps: []float64{5, 50}, Interval: time.Hour}},
		// After the step's warm-up of one interval.
		{"latency", "p50 latency", 0.01, 10, canary.Policy{Steps: []float64{5}, Interval: 50 * time.Millisecond}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTarget{perTick: 10000, fail: [2]float64{0.01, tt.fail}, slow: [2]int{0, tt.slow}}
			rec := &recorder{}
			r := start(t, f, rec, fast(tt.policy))
			st := wait(t, r)
			if _, aborted, _ := f.ended(); st.State != canary.Aborted || !aborted {
				t.Fatalf("state %s; want aborted", st.State)
			}
			if st.Last.Decision != canary.Abort || st.Last.Step != 1 || !contains(st.Last.Reason, tt.reason) || st.Last.By != "" {
				t.Errorf("last verdict %v; want an automatic abort at step 1 for %q", st.Last, tt.reason)
			}
			if n := st.Last.Window.Canary.Calls; n < 100 {
				t.Errorf("aborted after %d canary calls; want at least MinCalls (100)", n)
			}
			t.Logf("%v; %v", st.Last, st.Last.Window)
		})
	}
}

// TestLatencyFromLatencyWeight: below LatencyWeight a slower canary passes
// (it is slower for running rarely); from there on it is aborted.
func TestLatencyFromLatencyWeight(t *testing.T) {
	f := &fakeTarget{perTick: 10000, fail: [2]float64{0.01, 0.01}, slow: [2]int{0, 10}}
	rec := &recorder{}
	r := start(t, f, rec, fast(canary.Policy{Steps: []float64{5, 30, 60}, LatencyWeight: 30}))
	st := wait(t, r)
	want := []canary.Decision{canary.Begin, canary.Pass, canary.Abort}
	if got := rec.decisions(); !slices.Equal(got, want) || st.Last.Step != 2 || !contains(st.Last.Reason, "latency") {
		t.Errorf("verdicts %v, last %v; want %v, aborted for latency at step 2 (30%%)", got, st.Last, want)
	}
}

// TestNoDataHolds: a step without enough calls holds, never passes, and
// the canary is aborted after MaxEmptyWindows such windows.
func TestNoDataHolds(t *testing.T) {
	f := &fakeTarget{perTick: 0}
	rec := &recorder{}
	r := start(t, f, rec, fast(canary.Policy{MaxEmptyWindows: 3}))
	st := wait(t, r)
	want := []canary.Decision{canary.Begin, canary.Hold, canary.Hold, canary.Abort}
	if got := rec.decisions(); !slices.Equal(got, want) {
		t.Errorf("verdicts %v; want %v", got, want)
	}
	if st.State != canary.Aborted || !contains(st.Last.Reason, "no data") {
		t.Errorf("last verdict %v; want an abort for no data", st.Last)
	}
	if _, _, weights := f.ended(); len(weights) != 1 {
		t.Errorf("weights set %v; want only the first step's", weights)
	}
}

func TestOperatorCommands(t *testing.T) {
	ctx := context.Background()
	t.Run("pause holds the step, resume advances", func(t *testing.T) {
		f := &fakeTarget{perTick: 1000}
		rec := &recorder{}
		r := start(t, f, rec, fast(canary.Policy{Steps: []float64{10, 50}}))
		if err := r.Pause(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		// Several windows pass without a step.
		waitStatus(t, r, "three windows", func(s canary.Status) bool { return s.Window.End.Sub(s.StepStartedAt) > 100*time.Millisecond })
		if st := r.Status(); st.State != canary.Paused || st.Step != 1 {
			t.Fatalf("paused: state %s step %d; want paused at step 1", st.State, st.Step)
		}
		if err := r.Resume(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		st := wait(t, r)
		if st.State != canary.Promoted {
			t.Errorf("state %s after resume; want promoted", st.State)
		}
		vs, _ := r.Verdicts(0)
		if vs[1].Decision != canary.Pause || vs[1].By != "alice" || vs[2].Decision != canary.Resume {
			t.Errorf("verdicts %v; want pause and resume by alice", vs)
		}
	})
	t.Run("pause still aborts a regression", func(t *testing.T) {
		f := &fakeTarget{perTick: 10000, fail: [2]float64{0, 0.5}}
		rec := &recorder{}
		r := start(t, f, rec, fast(canary.Policy{Interval: time.Hour}))
		r.Pause(ctx, "alice")
		if st := wait(t, r); st.State != canary.Aborted {
			t.Errorf("state %s; want aborted", st.State)
		}
	})
	t.Run("freeze makes no decision", func(t *testing.T) {
		f := &fakeTarget{fail: [2]float64{0, 0.5}} // no calls until frozen
		rec := &recorder{}
		r := start(t, f, rec, fast(canary.Policy{}))
		if err := r.Freeze(ctx, "bob"); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.perTick = 10000
		f.mu.Unlock()
		waitStatus(t, r, "strong evidence", func(s canary.Status) bool { return s.Window.Evidence[0] > 2*s.Window.Bound })
		if st := r.Status(); st.State != canary.Frozen {
			t.Fatalf("state %s with evidence %v; want frozen", st.State, st.Window.Evidence)
		}
		if err := r.Promote(ctx, "bob"); err != nil {
			t.Fatalf("Promote() = %v", err)
		}
		if st := wait(t, r); st.State != canary.Promoted || st.Last.By != "bob" {
			t.Errorf("state %s, last %v; want promoted by bob", st.State, st.Last)
		}
		if err := r.Abort(ctx, "bob"); !errors.Is(err, canary.ErrEnded) {
			t.Errorf("Abort() after the end = %v; want ErrEnded", err)
		}
	})
	t.Run("abort", func(t *testing.T) {
		f := &fakeTarget{perTick: 1000}
		rec := &recorder{}
		r := start(t, f, rec, fast(canary.Policy{Interval: time.Hour}))
		if err := r.Abort(ctx, "carol"); err != nil {
			t.Fatal(err)
		}
		st := wait(t, r)
		if _, aborted, _ := f.ended(); !aborted || st.Last.By != "carol" || st.Weight != 0 {
			t.Errorf("status %+v; want aborted by carol at weight 0", st)
		}
	})
}

func TestRecordFailures(t *testing.T) {
	t.Run("begin", func(t *testing.T) {
		f := &fakeTarget{perTick: 1000}
		rec := &recorder{failOn: canary.Begin}
		if _, err := canary.Start(f, canary.Options{Policy: fast(canary.Policy{}), Record: rec.record}); err == nil {
			t.Fatal("Start() = nil error with a failing record")
		}
		if _, _, weights := f.ended(); len(weights) != 0 {
			t.Errorf("weights set %v; want none", weights)
		}
	})
	t.Run("pass", func(t *testing.T) {
		f := &fakeTarget{perTick: 1000}
		rec := &recorder{failOn: canary.Pass}
		r := start(t, f, rec, fast(canary.Policy{Steps: []float64{10, 50}}))
		st := wait(t, r)
		if _, _, weights := f.ended(); st.State != canary.Aborted || len(weights) != 1 || !contains(st.Last.Reason, "disk full") {
			t.Errorf("state %s, weights %v, last %v; want aborted at the first weight, saying why", st.State, weights, st.Last)
		}
	})
}

func TestChecks(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			f := &fakeTarget{perTick: 10000}
			rec := &recorder{}
			var windows []canary.Window
			var mu sync.Mutex
			check := canary.Check{Name: "outputs", Run: func(_ context.Context, w canary.Window) error {
				mu.Lock()
				defer mu.Unlock()
				windows = append(windows, w)
				return errors.New("3 of 40 outputs differ")
			}}
			r := start(t, f, rec, fast(canary.Policy{Checks: []canary.Check{check}, FailureLimit: limit}))
			st := wait(t, r)
			want := []canary.Decision{canary.Begin, canary.Abort}
			if limit == 2 {
				want = []canary.Decision{canary.Begin, canary.Hold, canary.Abort}
			}
			if got := rec.decisions(); !slices.Equal(got, want) || !contains(st.Last.Reason, "outputs: 3 of 40 outputs differ") {
				t.Errorf("verdicts %v, last %v; want %v naming the check", got, st.Last, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(windows) != limit || windows[0].Canary.Calls < 100 {
				t.Errorf("check ran %d times, first on %+v; want %d runs on windows with enough calls", len(windows), windows, limit)
			}
		})
	}
}

func TestPromotionFailureAborts(t *testing.T) {
	f := &fakeTarget{perTick: 1000, promoteErr: errors.New("migrate check failed")}
	rec := &recorder{}
	r := start(t, f, rec, fast(canary.Policy{Steps: []float64{50}}))
	st := wait(t, r)
	if st.State != canary.Aborted || !contains(st.Last.Reason, "promotion failed: migrate check failed") {
		t.Errorf("state %s, last %v; want aborted for the failed promotion", st.State, st.Last)
	}
	if got, want := rec.decisions(), []canary.Decision{canary.Begin, canary.Promote, canary.Abort}; !slices.Equal(got, want) {
		t.Errorf("verdicts %v; want %v", got, want)
	}
}

func TestInvalidPolicy(t *testing.T) {
	f := &fakeTarget{}
	if _, err := canary.Start(f, canary.Options{Policy: canary.Policy{Steps: []float64{50, 10}}}); err == nil {
		t.Error("Start() with decreasing steps = nil error")
	}
}

func waitStatus(t *testing.T, r *canary.Rollout, what string, cond func(canary.Status) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		_, changed := r.Verdicts(1 << 30)
		if cond(r.Status()) {
			return
		}
		select {
		case <-changed:
		case <-r.Done():
			if !cond(r.Status()) {
				t.Fatalf("the rollout ended before %s: %+v", what, r.Status())
			}
			return
		case <-deadline:
			t.Fatalf("timed out waiting for %s: %+v", what, r.Status())
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestRolloutLeavesNoGoroutine: a rollout's goroutine ends with it.
func TestRolloutLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 5 {
		r, err := canary.Start(&fakeTarget{perTick: 1000}, canary.Options{Policy: fast(canary.Policy{Interval: time.Hour})})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Abort(context.Background(), "test"); err != nil {
			t.Fatal(err)
		}
		wait(t, r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after 5 rollouts ended; want at most %d", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}
