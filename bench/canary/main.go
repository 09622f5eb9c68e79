// Command canary measures in-process canaries: whether the analysis
// promotes a good version and aborts a bad and a slow one, how many calls
// the bad one answers before its abort, how often a good one is aborted,
// and what the split costs on the call path.
//
//	go run ./bench/canary [-runs 20] [-regression-runs 10] [-interval 1s]
//
// Every scenario runs the pricing module built from
// examples/pricing/guests/canary under 4 callers with routing keys (random
// user ids out of a million). The stable v1 and the good v2 fail 1% of
// calls at random; the bad v3 fails 6%; the slow v4 answers correctly but
// does more work per call (measured: slow_p50_ratio). Each run starts from a
// fresh registry serving v1, starts the candidate as a canary with the
// default policy (steps 1, 5, 25, 50%, at least 1,000 calls of each version
// per step before any verdict) but short windows, and waits for the
// promotion or the abort.
//
// split_overhead_ns is the cost the split adds to a call with a routing
// key: the median per-call time of batches of 100 calls of the echo guest
// (trusted) through a module running a canary at 1% (both versions the same
// code), minus the same through a module without one; batches interleaved.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const (
	guestPkg  = "./examples/pricing/guests/canary"
	callers   = 4
	keySpace  = 1_000_000
	baseSpin  = 4000  // ~19µs per quote on the 2-core test machine
	slowSpin  = 10500 // ~1.5 times that under the 4 callers (1.6 alone)
	batch     = 100
	runBudget = 3 * time.Minute
)

type version struct {
	name          string
	failPerMille  int
	spin          int
	wantPromotion bool
}

var versions = map[string]version{
	"v1": {"v1", 10, baseSpin, false},
	"v2": {"v2", 10, baseSpin, true},
	"v3": {"v3", 60, baseSpin, false},
	"v4": {"v4", 10, slowSpin, false},
}

func main() {
	runs := flag.Int("runs", 20, "runs of the good scenario (false aborts are counted over them)")
	regressionRuns := flag.Int("regression-runs", 10, "runs of each of the bad and the slow scenario")
	interval := flag.Duration("interval", time.Second, "window of a step")
	rounds := flag.Int("rounds", 2000, "batches of 100 calls per variant for split_overhead_ns")
	flag.Parse()
	err := run(*runs, *regressionRuns, *interval, *rounds)
	guestbuild.Cleanup() // the guests built for this run
	if err != nil {
		log.Fatal(err)
	}
}

func run(runs, regressionRuns int, interval time.Duration, rounds int) error {
	cache, err := os.MkdirTemp("", "hotswap-bench-canary-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	code := map[string][]byte{}
	for name, v := range versions {
		b, err := benchutil.Guest(guestPkg, fmt.Sprintf("-X main.label=%s -X main.failPerMille=%d -X main.spin=%d", v.name, v.failPerMille, v.spin))
		if err != nil {
			return err
		}
		code[name] = b
	}
	policy := canary.Policy{Interval: interval}

	res := map[string]any{"runs": runs, "bad_runs": regressionRuns, "slow_runs": regressionRuns,
		"interval_ms": interval.Milliseconds(), "min_calls": canary.DefaultMinCalls, "first_step_percent": canary.DefaultSteps()[0]}
	scenarios := []struct {
		candidate string
		n         int
	}{{"v2", runs}, {"v3", regressionRuns}, {"v4", regressionRuns}}
	outcomes := map[string][]outcome{}
	for _, sc := range scenarios {
		for i := range sc.n {
			o, err := scenario(cache, code["v1"], sc.candidate, code[sc.candidate], policy)
			if err != nil {
				return fmt.Errorf("%s run %d: %w", sc.candidate, i+1, err)
			}
			fmt.Printf("%s run %2d: %-8s after %6.2fs, %6d canary calls, %8d calls in all: %s\n", sc.candidate, i+1, o.state,
				o.took.Seconds(), o.canaryCalls, o.totalCalls, o.last)
			outcomes[sc.candidate] = append(outcomes[sc.candidate], o)
		}
	}
	count := func(cand string, s canary.State) int {
		n := 0
		for _, o := range outcomes[cand] {
			if o.state == s {
				n++
			}
		}
		return n
	}
	res["good_promoted"] = count("v2", canary.Promoted)
	res["false_aborts"] = count("v2", canary.Aborted)
	res["bad_aborted"] = count("v3", canary.Aborted)
	res["slow_aborted"] = count("v4", canary.Aborted)
	var badAfter, slowAfter, goodAfter []float64
	var badServed []int64
	var slowRatio []float64
	for _, o := range outcomes["v3"] {
		badAfter = append(badAfter, o.took.Seconds())
		badServed = append(badServed, int64(o.canaryCalls))
	}
	for _, o := range outcomes["v4"] {
		slowAfter = append(slowAfter, o.took.Seconds())
		if o.stableP50 > 0 {
			slowRatio = append(slowRatio, float64(o.canaryP50)/float64(o.stableP50))
		}
	}
	for _, o := range outcomes["v2"] {
		goodAfter = append(goodAfter, o.took.Seconds())
	}
	res["abort_after_s"] = round2(benchutil.Percentile(badAfter, 50))
	res["abort_after_s_max"] = round2(benchutil.Percentile(badAfter, 100))
	res["bad_calls_served"] = benchutil.Percentile(badServed, 100)
	res["bad_calls_served_median"] = benchutil.Percentile(badServed, 50)
	res["slow_abort_after_s"] = round2(benchutil.Percentile(slowAfter, 50))
	res["slow_p50_ratio"] = round2(benchutil.Percentile(slowRatio, 50))
	res["good_promoted_after_s"] = round2(benchutil.Percentile(goodAfter, 50))

	split, err := splitOverhead(cache, rounds)
	if err != nil {
		return err
	}
	for k, v := range split {
		res[k] = v
	}
	benchutil.Result(res)
	return nil
}

// outcome is how one canary ended.
type outcome struct {
	state                   canary.State
	took                    time.Duration
	canaryCalls, totalCalls uint64
	last                    string
	stableP50, canaryP50    time.Duration // of the last step's window
}

// scenario serves v1 on a fresh registry under keyed load, runs the
// candidate as a canary and returns how it ended.
func scenario(cache string, v1 []byte, name string, candidate []byte, policy canary.Policy) (outcome, error) {
	ctx := context.Background()
	b, err := wasm.New(wasm.Options{CacheDir: cache})
	if err != nil {
		return outcome{}, err
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		return outcome{}, err
	}
	defer r.Close(ctx)
	if _, err := r.Load(ctx, "pricing", module.Source{Version: "v1", Artifact: v1}); err != nil {
		return outcome{}, err
	}
	m := r.Module("pricing")
	stop := startCallers(m)
	defer stop()
	time.Sleep(300 * time.Millisecond) // the stable version warm, as in production

	p, err := r.Prepare(ctx, "pricing", module.Source{Version: name, Artifact: candidate})
	if err != nil {
		return outcome{}, err
	}
	c, err := p.Canary(0)
	if err != nil {
		return outcome{}, err
	}
	start := time.Now()
	ro, err := canary.Start(c, canary.Options{Policy: policy})
	if err != nil {
		c.Abort()
		return outcome{}, err
	}
	select {
	case <-ro.Done():
	case <-time.After(runBudget):
		ro.Abort(ctx, "bench budget")
		return outcome{}, errors.New("the canary neither promoted nor aborted within " + runBudget.String())
	}
	took := time.Since(start)
	st := ro.Status()
	o := outcome{state: st.State, took: took, last: st.Last.String() + "\n        " + st.Last.Window.String()}
	for _, s := range m.Samples() {
		o.totalCalls += s.Calls
		if s.Version == name {
			o.canaryCalls = s.Calls
		}
	}
	o.stableP50, o.canaryP50 = st.Last.Window.Stable.P50, st.Last.Window.Canary.P50
	if st.State == canary.Promoted {
		o.stableP50, o.canaryP50 = 0, 0
	}
	return o, nil
}

// startCallers calls m's quote handler from callers goroutines with
// random routing keys until the returned function is called.
func startCallers(m *module.Module) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var unexpected atomic.Int64
	in := []byte(`{"item":"apple","qty":3}`)
	for g := range callers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			dst := make([]byte, 0, 512)
			for {
				select {
				case <-done:
					return
				default:
				}
				key := "user-" + strconv.Itoa(rng.IntN(keySpace))
				if _, err := m.AppendCallKey(context.Background(), dst[:0], key, "quote", in); err != nil && !errors.Is(err, module.ErrGuest) {
					if unexpected.Add(1) <= 3 {
						log.Printf("unexpected call error: %v", err)
					}
				}
			}
		})
	}
	return func() { close(done); wg.Wait() }
}

// splitOverhead measures what a canary at 1% adds to a call.
func splitOverhead(cache string, rounds int) (map[string]any, error) {
	ctx := context.Background()
	echo, err := benchutil.Guest("./internal/testguests/echo", "")
	if err != nil {
		return nil, err
	}
	newModule := func(withCanary bool) (*module.Module, *module.Registry, error) {
		b, err := wasm.New(wasm.Options{CacheDir: cache, Default: wasm.ModuleConfig{CallTimeout: wasm.NoCallTimeout, Grants: []wasm.Capability{wasm.CapKV}}})
		if err != nil {
			return nil, nil, err
		}
		r, err := module.New(module.Options{Backend: b})
		if err != nil {
			return nil, nil, err
		}
		if _, err := r.Load(ctx, "echo", module.Source{Version: "v1", Artifact: echo}); err != nil {
			return nil, nil, err
		}
		if withCanary {
			p, err := r.Prepare(ctx, "echo", module.Source{Version: "v2", Artifact: echo})
			if err != nil {
				return nil, nil, err
			}
			if _, err := p.Canary(canary.DefaultSteps()[0] / 100); err != nil {
				return nil, nil, err
			}
		}
		return r.Module("echo"), r, nil
	}
	plain, pr, err := newModule(false)
	if err != nil {
		return nil, err
	}
	defer pr.Close(ctx)
	split, sr, err := newModule(true)
	if err != nil {
		return nil, err
	}
	defer sr.Close(ctx)

	in := make([]byte, 1024)
	dst := make([]byte, 0, 2048)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "user-" + strconv.Itoa(rand.IntN(keySpace))
	}
	k := 0
	keyed := func(m *module.Module) func() error {
		return func() error {
			k = (k + 1) & (len(keys) - 1)
			_, err := m.AppendCallKey(ctx, dst[:0], keys[k], "echo", in)
			return err
		}
	}
	keyless := func(m *module.Module) func() error {
		return func() error { _, err := m.AppendCall(ctx, dst[:0], "echo", in); return err }
	}
	variants := []struct {
		call func() error
		ns   []float64
	}{{call: keyed(plain)}, {call: keyed(split)}, {call: keyless(plain)}, {call: keyless(split)}}
	for i := range variants {
		for range 20 * batch {
			if err := variants[i].call(); err != nil {
				return nil, err
			}
		}
	}
	for range rounds {
		for i := range variants {
			v := &variants[i]
			start := time.Now()
			for range batch {
				if err := v.call(); err != nil {
					return nil, err
				}
			}
			v.ns = append(v.ns, float64(time.Since(start).Nanoseconds())/batch)
		}
	}
	p50 := func(i int) float64 { return benchutil.Percentile(variants[i].ns, 50) }
	fmt.Printf("echo p50: keyed %.1f ns without a canary, %.1f ns with one at 1%%; no key %.1f / %.1f ns\n", p50(0), p50(1), p50(2), p50(3))
	return map[string]any{
		"split_overhead_ns":         round1(p50(1) - p50(0)),
		"keyless_split_overhead_ns": round1(p50(3) - p50(2)),
		"echo_keyed_p50_ns":         round1(p50(0)),
		"echo_plain_p50_ns":         round1(p50(2)),
	}, nil
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }
func round2(f float64) float64 { return math.Round(f*100) / 100 }
