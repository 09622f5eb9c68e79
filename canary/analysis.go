package canary

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// The statistics (docs/canary.md explains them at length).
//
// Each step runs three sequential tests against the stable version over
// the same calls: failures, calls slower than the stable median, and calls
// slower than the stable 99th percentile. Each test counts "bad events" on
// both versions and asks whether the canary's share of them is larger than
// its share of the calls. Given that e events happened, and the canary
// served a share θ0 of the calls in which they could happen, the canary's
// count is binomial(e, θ0) if it is as good as the stable version, and
// binomial(e, θ1) with θ1 = rθ0 / (rθ0 + 1 − θ0) if its event rate is r
// times the stable one. The test adds up the log-likelihood ratio of H1
// (rate r times) against H0 (rate equal) tick by tick (Wald's sequential
// probability ratio test) and aborts when it reaches ln(K/α), where α is
// the false-abort rate and K the number of tests in the canary (three per
// step). Under H0 the likelihood ratio is a martingale, so by Ville's
// inequality it ever reaches K/α with probability at most α/K whatever
// the batch sizes and however long the step runs: a union bound over the
// K tests bounds the canary's false-abort rate by α.
//
// Latency events compare the canary with a tolerance: a stable call is an
// event when it is slower than the bound b of the stable q-quantile's
// bucket (measured on the stable calls of the tick before, so b does not
// depend on the calls it judges, and follows the machine's load); a canary
// call is one when it is slower than max(ratio·b, b + LatencyFloor),
// rounded up to a bucket bound, where ratio is LatencyRatio for the median
// and TailRatio for the 99th percentile. A canary at most that much slower
// makes events no more often than the stable version, so the test's error
// bound holds for it.

// The tests of a step.
const (
	testErrors = iota
	testP50
	testP99
	numTests
)

var testNames = [numTests]string{"failures", "p50", "p99"}

// quantiles of the latency tests, and the rate ratio each is built to
// detect: twice as many canary calls beyond the tolerated p99, 1.3 times as
// many beyond the tolerated median (half the stable calls are beyond it,
// so a ratio above 2 is impossible; the evidence grows from a ratio of
// (r-1)/ln r ≈ 1.14 on).
var (
	testQuantile = [numTests]float64{testP50: 0.5, testP99: 0.99}
	latencyH1    = [numTests]float64{testP50: 1.3, testP99: 2}
)

const (
	stable = 0
	canary = 1
)

// analysis judges one canary, step by step. It is a plain state machine
// with no clock and no goroutine: the driver feeds it samples.
type analysis struct {
	p     Policy
	bound float64 // abort when a test's log-likelihood ratio reaches it

	step                   int // index into p.Steps
	stepStart, windowStart time.Time
	updated                time.Time        // of the last update
	base, last             [2]module.Sample // at the step's start, at the last update
	lastStable             module.Histogram // the stable latencies of the last update's tick
	llr                    [numTests]float64
	empty                  int // windows in a row that ended without enough calls
	checkFailures          int // over the whole canary
}

func newAnalysis(p Policy) *analysis {
	a := &analysis{p: p}
	k := 0 // tests over the canary
	for a.step = range p.Steps {
		k++
		if a.latencyStep() {
			k += numTests - 1
		}
	}
	a.step = 0
	a.bound = math.Log(float64(k) / p.FalseAbortRate)
	return a
}

// latencyStep reports whether the current step runs the latency tests.
func (a *analysis) latencyStep() bool {
	return a.weight() >= a.p.LatencyWeight || a.lastStep()
}

// weight returns the current step's weight in percent.
func (a *analysis) weight() float64 { return a.p.Steps[a.step] }

func (a *analysis) lastStep() bool { return a.step == len(a.p.Steps)-1 }

// startStep begins a step at now: the tests restart from zero. A step
// that compares latencies begins with a warm-up of one Interval: its
// window starts after it.
func (a *analysis) startStep(now time.Time, s [2]module.Sample) {
	a.stepStart, a.windowStart, a.updated = now, now, now
	if a.latencyStep() {
		a.windowStart = now.Add(a.p.Interval)
	}
	a.base, a.last = s, s
	a.lastStable = module.Histogram{}
	a.llr = [numTests]float64{}
	a.empty = 0
}

// update folds the calls made since the last update, sampled at now, into
// the tests.
func (a *analysis) update(now time.Time, s [2]module.Sample) {
	a.updated = now
	d := [2]module.Sample{s[stable].Sub(&a.last[stable]), s[canary].Sub(&a.last[canary])}
	a.llr[testErrors] += logLR(d[canary].Failed(), d[stable].Failed(), d[canary].Calls, d[stable].Calls, a.p.ErrorRatio)
	// The step's warm-up lets the canary settle at the new weight (its pool
	// grows, its young instances' memory stops growing, which costs them
	// garbage-collection pauses): calls before the window and the canary's
	// first MinCalls calls set no latency evidence. Thresholds come from
	// the stable calls before these.
	warm := !now.Before(a.windowStart) && a.last[canary].Calls-a.base[canary].Calls >= uint64(a.p.MinCalls)
	before := &a.lastStable
	if before.Count() < minThresholdSample {
		step := a.last[stable].Latency.Sub(&a.base[stable].Latency)
		before = &step
	}
	for t := testP50; t <= testP99 && warm && a.latencyStep(); t++ {
		k := before.QuantileBucket(testQuantile[t])
		if k < 0 {
			continue
		}
		es := d[stable].Latency.Above(k)
		ec := d[canary].Latency.Above(a.toleratedBucket(k, a.ratio(t)))
		a.llr[t] += logLR(ec, es, d[canary].Latency.Count(), d[stable].Latency.Count(), latencyH1[t])
	}
	a.last = s
	a.lastStable = d[stable].Latency
}

// minThresholdSample is how many stable calls the tick before must have
// timed for its quantiles to set the thresholds; with fewer, the step's
// stable calls so far set them.
const minThresholdSample = 200

// ratio returns the slowdown latency test t tolerates.
func (a *analysis) ratio(t int) float64 {
	if t == testP99 {
		return a.p.TailRatio
	}
	return a.p.LatencyRatio
}

// toleratedBucket returns the bucket above which a canary call counts as
// slow when a stable call counts as slow above bucket k and a slowdown by
// ratio is tolerated.
func (a *analysis) toleratedBucket(k int, ratio float64) int {
	shift := int(math.Ceil(module.BucketsPerDoubling*math.Log2(ratio) - 1e-9))
	bound := module.BucketLowerBound(k + 1)
	for module.BucketLowerBound(k+1+shift) < bound+a.p.LatencyFloor && k+1+shift < module.HistogramBuckets {
		shift++
	}
	return k + shift
}

// logLR is the log-likelihood ratio of one batch of a test: of the events,
// ec were the canary's and es the stable version's, in nc and ns calls.
func logLR(ec, es, nc, ns uint64, ratio float64) float64 {
	if ec+es == 0 || nc == 0 || ns == 0 {
		return 0
	}
	t0 := float64(nc) / float64(nc+ns)
	t1 := ratio * t0 / (ratio*t0 + 1 - t0)
	return float64(ec)*math.Log(t1/t0) + float64(es)*math.Log((1-t1)/(1-t0))
}

// window returns the step's numbers as of the last update.
func (a *analysis) window() Window {
	w := Window{Start: a.stepStart, End: a.updated, Stable: numbers(a.last[stable].Sub(&a.base[stable])),
		Canary: numbers(a.last[canary].Sub(&a.base[canary])), Bound: a.bound}
	w.Evidence = a.llr
	return w
}

func numbers(s module.Sample) Numbers {
	return Numbers{Calls: s.Calls, Failures: s.Failed(), Timed: s.Latency.Count(),
		P50: s.Latency.Quantile(0.5), P99: s.Latency.Quantile(0.99)}
}

// enoughCalls reports whether both versions served MinCalls calls in the
// step.
func (a *analysis) enoughCalls() bool {
	w := a.window()
	return w.Stable.Calls >= uint64(a.p.MinCalls) && w.Canary.Calls >= uint64(a.p.MinCalls)
}

// regression returns why the canary must be aborted now, or "" when the
// evidence does not suffice (yet).
func (a *analysis) regression() string {
	if !a.enoughCalls() {
		return ""
	}
	w := a.window()
	if a.llr[testErrors] >= a.bound {
		excess := w.Canary.FailureRate() - w.Stable.FailureRate()
		if excess >= a.p.ErrorFloor {
			return fmt.Sprintf("failure rate %s against %s on the stable version (sequential test %.1f ≥ %.1f)",
				pct(w.Canary.FailureRate()), pct(w.Stable.FailureRate()), a.llr[testErrors], a.bound)
		}
	}
	for t := testP50; t <= testP99; t++ {
		if a.llr[t] >= a.bound {
			q, c := w.Stable.P50, w.Canary.P50
			if t == testP99 {
				q, c = w.Stable.P99, w.Canary.P99
			}
			return fmt.Sprintf("%s latency %v against %v on the stable version, beyond ×%.2f and +%v (sequential test %.1f ≥ %.1f)",
				testNames[t], Round(c), Round(q), a.ratio(t), a.p.LatencyFloor, a.llr[t], a.bound)
		}
	}
	return ""
}

// Numbers are one version's calls in a window.
type Numbers struct {
	Calls    uint64 `json:"calls"`
	Failures uint64 `json:"failures"`
	// Timed is how many of the calls were timed; P50 and P99 are their
	// quantiles (upper bounds of histogram buckets, within 4.4%).
	Timed uint64        `json:"timed"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
}

// FailureRate returns Failures/Calls, 0 without calls.
func (n Numbers) FailureRate() float64 {
	if n.Calls == 0 {
		return 0
	}
	return float64(n.Failures) / float64(n.Calls)
}

func (n Numbers) String() string {
	return fmt.Sprintf("%d calls, %s failed, p50 %v, p99 %v", n.Calls, pct(n.FailureRate()), Round(n.P50), Round(n.P99))
}

// Round rounds d to three significant digits, for people to read: the
// quantiles are histogram bucket bounds, 4.4% apart.
func Round(d time.Duration) time.Duration {
	unit := time.Duration(1)
	for d >= 1000*unit {
		unit *= 10
	}
	return d.Round(unit)
}

// Window is the numbers of both versions over the same calls, and the state
// of the sequential tests.
type Window struct {
	Start, End     time.Time
	Stable, Canary Numbers
	// Evidence holds the log-likelihood ratios of the tests for failures,
	// p50 and p99, in that order; a test aborts the canary when its value
	// reaches Bound.
	Evidence [3]float64
	Bound    float64
}

func (w Window) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "canary %v; stable %v; evidence", w.Canary, w.Stable)
	for t, name := range testNames {
		fmt.Fprintf(&b, " %s %.1f", name, w.Evidence[t])
	}
	fmt.Fprintf(&b, " (abort at %.1f)", w.Bound)
	return b.String()
}

func pct(f float64) string { return fmt.Sprintf("%.2f%%", 100*f) }
