package canary

import (
	"flag"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

var sims = flag.Int("canary.sims", 100, "simulated canaries per scenario in TestSimulated*")

// traffic simulates the calls of two versions.
type traffic struct {
	rng *rand.Rand
	// per tick
	calls int
	// failure rate and latency multiplier of each version
	fail [2]float64
	slow [2]float64
	s    [2]module.Sample
}

// latency draws a call's duration: 20µs times a log-normal factor, with a
// 1% tail of 4 to 8 times that.
func (tr *traffic) latency(slow float64) time.Duration {
	d := 20e3 * math.Exp(0.15*tr.rng.NormFloat64())
	if tr.rng.Float64() < 0.01 {
		d *= 4 + 4*tr.rng.Float64()
	}
	return time.Duration(d * slow)
}

// poisson draws a Poisson count of mean m (m small).
func (tr *traffic) poisson(m float64) uint64 {
	if m > 50 { // normal approximation
		return uint64(max(0, math.Round(m+math.Sqrt(m)*tr.rng.NormFloat64())))
	}
	l, k, p := math.Exp(-m), uint64(0), 1.0
	for {
		p *= tr.rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// tick adds one tick of calls at weight w (0 to 1), timing the cohorts the
// module would time.
func (tr *traffic) tick(w float64) [2]module.Sample {
	n := [2]int{tr.calls - int(math.Round(float64(tr.calls)*w)), int(math.Round(float64(tr.calls) * w))}
	timed := int(math.Round(float64(tr.calls) * min(w, 1-w)))
	for v := range 2 {
		s := &tr.s[v]
		s.Calls += uint64(n[v])
		s.Failures[module.FailGuest] += tr.poisson(float64(n[v]) * tr.fail[v])
		for range timed {
			s.Latency.Counts[bucket(tr.latency(tr.slow[v]))]++
		}
	}
	return tr.s
}

func bucket(d time.Duration) int {
	i := int(math.Floor(module.BucketsPerDoubling * math.Log2(float64(max(d, 1)))))
	return min(max(i, 0), module.HistogramBuckets-1)
}

// simulate runs a canary through every step of p for ticks ticks each and
// returns the step (from 1) it was aborted at, 0 if it never was, and the
// canary calls served until then.
func simulate(t *testing.T, p Policy, tr *traffic, ticks int) (step int, served uint64) {
	t.Helper()
	p, err := p.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	a := newAnalysis(p)
	now := time.Unix(0, 0)
	for i, w := range p.Steps {
		a.step = i
		a.startStep(now, tr.s)
		for range ticks {
			now = now.Add(100 * time.Millisecond)
			a.update(now, tr.tick(w/100))
			if a.regression() != "" {
				return i + 1, tr.s[canary].Calls
			}
		}
	}
	return 0, tr.s[canary].Calls
}

// TestSimulatedFalseAborts: canaries exactly as good as the stable version
// (1% failures, the same latencies) are aborted at most at the configured
// rate. Run with -canary.sims=20000 for a tight estimate.
func TestSimulatedFalseAborts(t *testing.T) {
	const alpha = 0.05 // large, so that 100 canaries can show a broken bound
	rng := rand.New(rand.NewPCG(1, 2))
	aborted := 0
	for range *sims {
		tr := &traffic{rng: rng, calls: 1000, fail: [2]float64{0.01, 0.01}, slow: [2]float64{1, 1}}
		if step, _ := simulate(t, Policy{FalseAbortRate: alpha, Interval: time.Second}, tr, 40); step != 0 {
			aborted++
		}
	}
	rate := float64(aborted) / float64(*sims)
	t.Logf("%d of %d good canaries aborted (%.4f; bound %v)", aborted, *sims, rate, alpha)
	// A bound that holds leaves the count within Binomial(n, α)'s tail.
	if limit := float64(*sims)*alpha + 3*math.Sqrt(float64(*sims)*alpha); float64(aborted) > limit {
		t.Errorf("%d of %d good canaries aborted; want at most %.0f for a false-abort bound of %v", aborted, *sims, limit, alpha)
	}
}

// TestSimulatedRegressionsAborted: with the default policy, a canary
// failing 6% of calls against 1% is aborted in the first step, soon after
// the minimum sample; one 1.5 times slower in the first step that compares
// latencies (50%), as soon.
func TestSimulatedRegressionsAborted(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tt := range []struct {
		name string
		fail float64
		slow float64
		step int
	}{
		{"failing 6%", 0.06, 1, 1},
		{"1.5 times slower", 0.01, 1.5, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var most uint64
			for range max(*sims/5, 20) {
				tr := &traffic{rng: rng, calls: 10000, fail: [2]float64{0.01, tt.fail}, slow: [2]float64{1, tt.slow}}
				step, served := simulate(t, Policy{Interval: time.Second}, tr, 100)
				if step != tt.step {
					t.Fatalf("aborted at step %d (0: never); want step %d", step, tt.step)
				}
				most = max(most, served)
			}
			t.Logf("aborted in step %d after at most %d canary calls in all", tt.step, most)
			if tt.step == 1 && most > 2*DefaultMinCalls {
				t.Errorf("aborted after up to %d canary calls; want soon after the minimum sample %d", most, DefaultMinCalls)
			}
		})
	}
}

// TestMinimumSample: however strong the evidence, no verdict before each
// version served MinCalls calls in the step.
func TestMinimumSample(t *testing.T) {
	p, err := Policy{MinCalls: 500}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	a := newAnalysis(p)
	var s [2]module.Sample
	a.startStep(time.Unix(0, 0), s)
	for i := 1; ; i++ {
		// Every canary call fails; 10 stable calls per canary call.
		s[canary].Calls += 10
		s[canary].Failures[module.FailGuest] += 10
		s[stable].Calls += 100
		a.update(time.Unix(int64(i), 0), s)
		why := a.regression()
		switch {
		case s[canary].Calls < 500 && why != "":
			t.Fatalf("aborted after %d canary calls (evidence %.1f): %s; want no verdict before 500", s[canary].Calls, a.llr[testErrors], why)
		case s[canary].Calls < 500:
			if a.llr[testErrors] < a.bound && s[canary].Calls >= 100 {
				t.Fatalf("evidence %.1f after %d calls all failing; want above the bound %.1f", a.llr[testErrors], s[canary].Calls, a.bound)
			}
		case why == "":
			t.Fatalf("no abort after %d canary calls, all failed", s[canary].Calls)
		default:
			t.Logf("aborted at %d canary calls: %s", s[canary].Calls, why)
			return
		}
	}
}

// TestErrorFloor: a canary failing more often than the stable version, but
// by less than the floor, is not aborted.
func TestErrorFloor(t *testing.T) {
	p, err := Policy{MinCalls: 100, ErrorFloor: 0.01}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	a := newAnalysis(p)
	var s [2]module.Sample
	a.startStep(time.Unix(0, 0), s)
	for i := range 2000 {
		s[canary].Calls += 1000
		s[canary].Failures[module.FailGuest] += 5 // 0.5%
		s[stable].Calls += 1000
		a.update(time.Unix(int64(i), 0), s)
	}
	if a.llr[testErrors] < a.bound {
		t.Fatalf("evidence %.1f; want it past %.1f for 0.5%% failures against none", a.llr[testErrors], a.bound)
	}
	if why := a.regression(); why != "" {
		t.Errorf("aborted for 0.5%% failures against 0%% with a floor of 1%%: %s", why)
	}
}

// TestCanceledCallsAreNotFailures: calls the caller canceled do not count
// against a version.
func TestCanceledCallsAreNotFailures(t *testing.T) {
	p, _ := Policy{MinCalls: 100}.withDefaults()
	a := newAnalysis(p)
	var s [2]module.Sample
	a.startStep(time.Unix(0, 0), s)
	s[canary].Calls, s[stable].Calls = 10000, 10000
	s[canary].Failures[module.FailCanceled] = 5000
	a.update(time.Unix(1, 0), s)
	if why := a.regression(); why != "" || a.llr[testErrors] != 0 {
		t.Errorf("regression() = %q, evidence %v; want none for canceled calls", why, a.llr[testErrors])
	}
}

// TestToleratedBucket: the canary's bound is LatencyRatio and LatencyFloor
// above the stable one, rounded up to a bucket bound.
func TestToleratedBucket(t *testing.T) {
	for _, tt := range []struct {
		ratio float64
		floor time.Duration
		k     int
	}{
		{1.25, time.Nanosecond, 100},
		{1, time.Nanosecond, 100},
		{2, time.Nanosecond, 150},
		{1.25, 10 * time.Microsecond, 200}, // 2^(201/16) ns ≈ 6µs: the floor decides
	} {
		p, err := Policy{LatencyRatio: tt.ratio, LatencyFloor: tt.floor}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		a := newAnalysis(p)
		kc := a.toleratedBucket(tt.k, tt.ratio)
		b, bc := module.BucketLowerBound(tt.k+1), module.BucketLowerBound(kc+1)
		if float64(bc) < tt.ratio*float64(b)*0.999 || bc < b+tt.floor {
			t.Errorf("ratio %v floor %v: canary bound %v for stable bound %v; want ≥ ×%v and +%v", tt.ratio, tt.floor, bc, b, tt.ratio, tt.floor)
		}
		if prev := module.BucketLowerBound(kc); kc > tt.k && float64(prev) >= tt.ratio*float64(b)*1.001 && prev >= b+tt.floor {
			t.Errorf("ratio %v floor %v: canary bound %v is not the first that suffices (%v does)", tt.ratio, tt.floor, bc, prev)
		}
	}
}

func TestPolicyDefaultsAndValidation(t *testing.T) {
	p, err := Policy{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 4 || p.Interval != DefaultInterval || p.MinCalls != DefaultMinCalls || p.FalseAbortRate != DefaultFalseAbortRate {
		t.Errorf("defaults = %+v", p)
	}
	if p, _ := (Policy{Steps: []float64{1, 5, 100}}).withDefaults(); len(p.Steps) != 2 {
		t.Errorf("steps 1,5,100 = %v; want 1,5 then promotion", p.Steps)
	}
	for _, bad := range []Policy{
		{Steps: []float64{5, 1}},
		{Steps: []float64{0, 5}},
		{Steps: []float64{50, 100, 100}},
		{Steps: []float64{100}},
		{Steps: []float64{1, 101}},
		{Interval: -time.Second},
		{FalseAbortRate: 1},
		{ErrorRatio: 0.5},
		{LatencyRatio: 0.9},
		{TailRatio: 0.5},
		{ErrorFloor: 2},
		{MinCalls: -1},
		{Checks: []Check{{Name: "x"}}},
		{ErrorRatio: math.NaN()},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("withDefaults(%+v) = nil error; want a refusal", bad)
		}
	}
}

func TestRound(t *testing.T) {
	for _, tt := range []struct{ in, want time.Duration }{
		{4380001 * time.Nanosecond, 4380 * time.Microsecond},
		{136875 * time.Nanosecond, 137 * time.Microsecond},
		{18657 * time.Nanosecond, 18700 * time.Nanosecond},
		{999, 999},
		{0, 0},
	} {
		if got := Round(tt.in); got != tt.want {
			t.Errorf("Round(%v) = %v; want %v", tt.in, got, tt.want)
		}
	}
}
