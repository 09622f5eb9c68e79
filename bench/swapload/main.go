// Command swapload measures calls while their module is swapped: several
// goroutines call the echo guest without pause while the module is swapped
// between two builds of it (v1 and v2) every 100 ms, 1,000 times.
//
//	go run ./bench/swapload [-goroutines 4] [-swaps 1000] [-interval 100ms] [-steady 10s] [-untrusted] [-plugin]
//
// Phase 1 (steady) calls for -steady without a swap; phase 2 (swapping)
// calls while the swaps run. Each goroutine calls handler "echo" through one
// *module.Module handle with AppendCall and a reused buffer, and handler
// "version" every 1,024th call. An echo answer must equal its input (which
// carries the goroutine and call number, so an answer meant for another call
// is caught) and a version answer must be exactly "v1" or "v2"; anything else,
// and every error, counts as failed, and the first few are printed. After
// each swap the swapper itself calls "version" and checks it gets the version
// just loaded.
//
// Every call is timed with time.Now/time.Since. A call takes a few hundred
// nanoseconds, so a run makes hundreds of millions of them; rather than keep
// gigabytes of samples, each goroutine counts every latency into its own
// histogram (a slice of counters, one per nanosecond below 2,048 ns, 1,024
// per power of two above). Percentiles are by nearest rank, like
// benchutil.Percentile, and report the lower bound of their bucket: exact
// below 2.048 µs, at most 0.1% low above. Maxima are exact.
//
// load_to_serving is the wall time of Registry.Load, which returns once the
// new version is active (the next call runs on it). The compilation caches
// are warm, which means:
//
//   - wazero's file cache: before measuring, a throwaway backend on the same
//     cache directory loads v1 and v2, so both versions' compiled code (in
//     trusted mode both the unguarded and the guarded compilation; they have
//     different wazero module IDs) are on disk.
//   - wazero's in-memory cache: the measured backend starts with nothing in
//     memory. wazero's engine, shared by every runtime built on one
//     CompilationCache, keeps a compiled module in memory by module ID
//     (sha256 of the binary and the termination flag) with a reference count
//     while any CompiledModule of it is open. The registry keeps the previous
//     version warm, so when v1 is loaded again the retired v1 still holds its
//     compiled module: every swap but the first finds its code in memory and
//     only decodes and validates the binary, instantiates and pre-warms.
//     Only the first swap (v1 → v2) reads from the file cache. So
//     load_to_serving_ms_* are the in-memory path; load_to_serving_first_ms
//     is the one file-cache swap, and load_to_serving_filecache_ms_p50 is the
//     median of -filecache-loads extra loads of v2 on fresh backends (v1
//     loaded first, so the runtimes exist), each reading v2's code from disk.
//
// The callers never pause, so they keep every core busy and a Load competes
// with them for the CPU: load_to_serving is the time under that load, not
// on an idle machine.
//
// -plugin builds the echo guest as two Go plugins (module/goplugin), v1 and
// v2, and swaps between them instead: the same source, built for the
// native backend. Plugins never unload, so the swaps alternate between the
// two builds; each load is a new version (prepared, self-tested,
// activated, drained) that reuses the plugin already open. There is no
// compilation cache, so the file-cache loads are skipped.
//
// -maintain-every sets the backend's MaintainEvery (calls between guest GC
// yields) to compare with the default; -cpuprofile profiles the swapping
// phase.
//
// The last line is
//
//	RESULT {"calls":…,"failed":…,"swaps":…,"steady_p99_us":…,"swapping_p99_us":…,"p99_ratio":…,"load_to_serving_ms_p50":…,…}
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/bits"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/bench/internal/pluginguest"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/goplugin"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const (
	guestPkg     = "./internal/testguests/echo"
	versionEvery = 1024 // every n-th call of a goroutine asks for the version
	maxErrors    = 5    // errors printed
)

type config struct {
	goroutines     int
	swaps          int
	interval       time.Duration
	steady         time.Duration
	warmup         time.Duration
	untrusted      bool
	plugin         bool
	inputSize      int
	timeout        time.Duration
	fileCacheLoads int
	cacheDir       string
	maintainEvery  int
	cpuProfile     string
}

func main() {
	var c config
	flag.IntVar(&c.goroutines, "goroutines", 4, "goroutines calling the module")
	flag.IntVar(&c.swaps, "swaps", 1000, "swaps in the swapping phase")
	flag.DurationVar(&c.interval, "interval", 100*time.Millisecond, "time between the starts of two swaps")
	flag.DurationVar(&c.steady, "steady", 10*time.Second, "length of the steady phase (no swaps)")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "calls before the steady phase, not measured")
	flag.BoolVar(&c.untrusted, "untrusted", false, "run the module untrusted (runaway protection on)")
	flag.BoolVar(&c.plugin, "plugin", false, "swap between two Go plugin builds instead of WebAssembly")
	flag.IntVar(&c.inputSize, "input", 64, "echo input size in bytes (at least 16)")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Minute, "stop the swapping phase after this long even if swaps remain")
	flag.IntVar(&c.fileCacheLoads, "filecache-loads", 5, "extra loads on fresh backends to time the file-cache path")
	flag.StringVar(&c.cacheDir, "cache", os.TempDir()+"/hotswap-bench-wazero-cache", "wazero compilation cache directory")
	flag.IntVar(&c.maintainEvery, "maintain-every", 0, "calls between guest GC yields (0: the backend's default)")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the swapping phase to this file")
	flag.Parse()
	if c.goroutines < 1 || c.swaps < 0 || c.inputSize < 16 {
		log.Fatal("swapload: need -goroutines ≥ 1, -swaps ≥ 0, -input ≥ 16")
	}
	if err := run(c); err != nil {
		log.Fatal("swapload: ", err)
	}
}

// failures counts failed calls and keeps the first few errors.
type failures struct {
	n     atomic.Int64
	mu    sync.Mutex // protects first
	first []string
}

func (f *failures) add(err error) {
	f.n.Add(1)
	f.mu.Lock()
	if len(f.first) < maxErrors {
		f.first = append(f.first, err.Error())
		fmt.Fprintln(os.Stderr, "failed:", err)
	}
	f.mu.Unlock()
}

// Phases of the callers.
const (
	phaseWarmup int32 = iota
	phaseSteady
	phaseSwapping
	phaseStop
)

func run(c config) error {
	ctx := context.Background()
	versions := []string{"v1", "v2"}
	var (
		artifacts   map[string][]byte
		newRegistry func() (*module.Registry, error)
		err         error
	)
	if c.plugin {
		dir, err := os.MkdirTemp("", "swapload-plugin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		artifacts, newRegistry, err = pluginSetup(versions, dir)
		if err != nil {
			return err
		}
		c.fileCacheLoads = 0
	} else if artifacts, newRegistry, err = wasmSetup(ctx, c, versions); err != nil {
		return err
	}

	reg, err := newRegistry()
	if err != nil {
		return err
	}
	defer reg.Close(ctx)
	start := time.Now()
	if _, err := reg.Load(ctx, "echo", module.Source{Version: "v1", Artifact: artifacts["v1"]}); err != nil {
		return err
	}
	firstLoad := time.Since(start)
	mod := reg.Module("echo")

	var (
		phase  atomic.Int32
		failed failures
		wg     sync.WaitGroup
	)
	workers := make([]*worker, c.goroutines)
	for i := range workers {
		w := &worker{id: uint32(i), mod: mod, phase: &phase, failed: &failed, in: make([]byte, c.inputSize)}
		workers[i] = w
		wg.Go(w.run)
	}

	time.Sleep(c.warmup)
	phase.Store(phaseSteady)
	steadyStart := time.Now()
	time.Sleep(c.steady)
	steadyElapsed := time.Since(steadyStart)
	fmt.Fprintf(os.Stderr, "steady phase done: %v\n", steadyElapsed)

	// Swapping phase: the swapper alternates v2, v1, v2, … starting a swap
	// every interval (at once if the previous one took longer).
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	phase.Store(phaseSwapping)
	swapStart := time.Now()
	deadline := swapStart.Add(c.timeout)
	var (
		loadTimes   []time.Duration
		swapErrs    int
		swapsDone   int
		maxInstance int
		dst         []byte
	)
	for i := range c.swaps {
		if next := swapStart.Add(time.Duration(i) * c.interval); time.Until(next) > 0 {
			time.Sleep(time.Until(next))
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "timeout: %d of %d swaps done\n", i, c.swaps)
			break
		}
		v := versions[(i+1)%2]
		t0 := time.Now()
		_, err := reg.Load(ctx, "echo", module.Source{Version: v, Artifact: artifacts[v]})
		took := time.Since(t0)
		if err != nil {
			swapErrs++
			failed.add(fmt.Errorf("swap %d to %s: %w", i, v, err))
			continue
		}
		swapsDone++
		loadTimes = append(loadTimes, took)
		// The version just loaded must serve the next call.
		out, err := mod.AppendCall(ctx, dst[:0], "version", nil)
		dst = out
		if err == nil && string(out) != v {
			err = fmt.Errorf("version answered %q right after loading %s", out, v)
		}
		if err != nil {
			failed.add(fmt.Errorf("swap %d: %w", i, err))
		}
		if s := mod.Status(); s.Active != nil {
			maxInstance = max(maxInstance, s.Active.Instances)
		}
	}
	// A last interval of calls after the last swap, still counted as swapping.
	time.Sleep(c.interval)
	swapElapsed := time.Since(swapStart)
	phase.Store(phaseStop)
	wg.Wait()
	if c.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	st := mod.Status()

	// The file-cache path: v2 loaded on fresh backends.
	var fileLoads []time.Duration
	for range c.fileCacheLoads {
		r, err := newRegistry()
		if err != nil {
			return err
		}
		if _, err := r.Load(ctx, "echo", module.Source{Version: "v1", Artifact: artifacts["v1"]}); err != nil {
			return err
		}
		t0 := time.Now()
		_, err = r.Load(ctx, "echo", module.Source{Version: "v2", Artifact: artifacts["v2"]})
		fileLoads = append(fileLoads, time.Since(t0))
		if err != nil {
			return err
		}
		if err := r.Close(ctx); err != nil {
			return err
		}
	}

	var steady, swapping histogram
	var calls, steadyCalls, swappingCalls int64
	for _, w := range workers {
		steady.merge(&w.hist[phaseSteady])
		swapping.merge(&w.hist[phaseSwapping])
		calls += w.calls
	}
	steadyCalls, swappingCalls = int64(steady.n), int64(swapping.n)
	steadyP99, swappingP99 := steady.percentile(99), swapping.percentile(99)
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	mode := "trusted"
	if c.untrusted {
		mode = "untrusted"
	}
	if c.plugin {
		mode = "plugin"
	}
	res := map[string]any{
		"mode":                 mode,
		"calls":                calls,
		"failed":               failed.n.Load(),
		"swaps":                swapsDone,
		"swap_errors":          swapErrs,
		"steady_p99_us":        us(steadyP99),
		"swapping_p99_us":      us(swappingP99),
		"p99_ratio":            floor2(float64(swappingP99) / float64(steadyP99)),
		"steady_p50_us":        us(steady.percentile(50)),
		"swapping_p50_us":      us(swapping.percentile(50)),
		"steady_p999_us":       us(steady.percentile(99.9)),
		"swapping_p999_us":     us(swapping.percentile(99.9)),
		"steady_max_us":        us(steady.max),
		"swapping_max_us":      us(swapping.max),
		"steady_calls":         steadyCalls,
		"swapping_calls":       swappingCalls,
		"steady_s":             floor2(steadyElapsed.Seconds()),
		"swapping_s":           floor2(swapElapsed.Seconds()),
		"goroutines":           c.goroutines,
		"input_bytes":          c.inputSize,
		"interval_ms":          ms(c.interval),
		"first_load_ms":        ms(firstLoad),
		"max_active_instances": maxInstance,
		"instances":            instances(st),
	}
	if len(loadTimes) > 0 {
		res["load_to_serving_ms_p50"] = ms(benchutil.Percentile(loadTimes, 50))
		res["load_to_serving_ms_p90"] = ms(benchutil.Percentile(loadTimes, 90))
		res["load_to_serving_ms_max"] = ms(slices.Max(loadTimes))
		res["load_to_serving_first_ms"] = ms(loadTimes[0])
	}
	if len(fileLoads) > 0 {
		res["load_to_serving_filecache_ms_p50"] = ms(benchutil.Percentile(fileLoads, 50))
	}
	fmt.Printf("%s, %d goroutines: %d calls (%d steady, %d swapping), %d failed, %d swaps\n",
		mode, c.goroutines, calls, steadyCalls, swappingCalls, failed.n.Load(), swapsDone)
	fmt.Printf("p99 steady %.3f µs, swapping %.3f µs; load-to-serving p50 %.3f ms\n",
		us(steadyP99), us(swappingP99), res["load_to_serving_ms_p50"])
	benchutil.Result(res)
	if err := reg.Close(ctx); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// wasmSetup builds v1 and v2 of the echo guest and warms wazero's file
// cache with both on a throwaway backend.
func wasmSetup(ctx context.Context, c config, versions []string) (map[string][]byte, func() (*module.Registry, error), error) {
	artifacts := map[string][]byte{}
	for _, v := range versions {
		b, err := benchutil.Guest(guestPkg, "-X main.version="+v)
		if err != nil {
			return nil, nil, err
		}
		artifacts[v] = b
	}
	mcfg := wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, MaintainEvery: c.maintainEvery}
	if !c.untrusted { // every module is stoppable now; "trusted" only drops the deadline
		mcfg.CallTimeout = wasm.NoCallTimeout
	}
	newRegistry := func() (*module.Registry, error) {
		b, err := wasm.New(wasm.Options{CacheDir: c.cacheDir, Default: mcfg})
		if err != nil {
			return nil, err
		}
		return module.New(module.Options{Backend: b})
	}
	r, err := newRegistry()
	if err != nil {
		return nil, nil, err
	}
	for _, v := range versions {
		if _, err := r.Load(ctx, "echo", module.Source{Version: v, Artifact: artifacts[v]}); err != nil {
			return nil, nil, fmt.Errorf("warm-up load: %w", err)
		}
	}
	if err := r.Close(ctx); err != nil {
		return nil, nil, err
	}
	return artifacts, newRegistry, nil
}

// pluginSetup builds v1 and v2 of the echo guest as Go plugins in dir.
func pluginSetup(versions []string, dir string) (map[string][]byte, func() (*module.Registry, error), error) {
	artifacts := map[string][]byte{}
	for _, v := range versions {
		b, err := pluginguest.Build(guestPkg, map[string]string{"version": v}, dir)
		if err != nil {
			return nil, nil, err
		}
		artifacts[v] = b
	}
	newRegistry := func() (*module.Registry, error) {
		b, err := goplugin.New(goplugin.Options{Dir: filepath.Join(dir, "plugins")})
		if err != nil {
			return nil, err
		}
		return module.New(module.Options{Backend: b})
	}
	return artifacts, newRegistry, nil
}

// instances is the number of live instances over every version of st.
func instances(st module.Status) int {
	n := 0
	for _, v := range st.Versions() {
		n += v.Instances
	}
	return n
}

// floor2 keeps two decimals, rounding down.
func floor2(f float64) float64 { return float64(int64(f*100)) / 100 }

// worker is one calling goroutine.
type worker struct {
	id     uint32
	mod    *module.Module
	phase  *atomic.Int32
	failed *failures
	in     []byte

	calls int64
	hist  [phaseStop]histogram // by phase; warm-up is counted but not reported
}

func (w *worker) run() {
	ctx := context.Background()
	binary.LittleEndian.PutUint32(w.in[0:], w.id)
	for i := 8; i < len(w.in); i++ {
		w.in[i] = byte(i)
	}
	dst := make([]byte, 0, 2*len(w.in))
	for n := uint64(1); ; n++ {
		p := w.phase.Load()
		if p == phaseStop {
			return
		}
		var (
			out []byte
			err error
		)
		if n%versionEvery == 0 {
			t0 := time.Now()
			out, err = w.mod.AppendCall(ctx, dst[:0], "version", nil)
			w.hist[p].add(int64(time.Since(t0)))
			if err == nil && string(out) != "v1" && string(out) != "v2" {
				err = fmt.Errorf("goroutine %d call %d: version answered %q", w.id, n, out)
			}
		} else {
			binary.LittleEndian.PutUint32(w.in[4:], uint32(n))
			t0 := time.Now()
			out, err = w.mod.AppendCall(ctx, dst[:0], "echo", w.in)
			w.hist[p].add(int64(time.Since(t0)))
			if err == nil && !bytes.Equal(out, w.in) {
				err = fmt.Errorf("goroutine %d call %d: echo answered %d bytes %x, want %x", w.id, n, len(out), out, w.in)
			}
		}
		w.calls++
		if err != nil {
			var ce *module.CallError
			if !errors.As(err, &ce) && !errors.Is(err, module.ErrNotFound) {
				err = fmt.Errorf("unexpected error type %T: %w", err, err)
			}
			w.failed.add(err)
		}
		if cap(out) > cap(dst) {
			dst = out[:0]
		}
	}
}

// subBits sets the histogram's resolution: values below 2<<subBits ns are
// exact, above each power of two is cut into 1<<subBits buckets.
const subBits = 10

// histogram counts latencies in nanoseconds.
type histogram struct {
	counts []uint64
	n      uint64
	max    int64
}

func bucket(ns int64) int {
	if ns < 0 {
		ns = 0
	}
	v := uint64(min(ns, 1<<40-1))
	if v < 2<<subBits {
		return int(v)
	}
	shift := bits.Len64(v) - 1 - subBits
	return (shift+1)<<subBits + int(v>>shift) - 1<<subBits
}

// lowerBound is the smallest value counted in bucket i.
func lowerBound(i int) int64 {
	if i < 2<<subBits {
		return int64(i)
	}
	shift := i>>subBits - 1
	m := i&(1<<subBits-1) + 1<<subBits
	return int64(m) << shift
}

func (h *histogram) add(ns int64) {
	i := bucket(ns)
	if i >= len(h.counts) {
		h.counts = slices.Grow(h.counts, i+1-len(h.counts))[:i+1]
	}
	h.counts[i]++
	h.n++
	h.max = max(h.max, ns)
}

func (h *histogram) merge(o *histogram) {
	if len(o.counts) > len(h.counts) {
		h.counts = slices.Grow(h.counts, len(o.counts)-len(h.counts))[:len(o.counts)]
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// percentile returns the lower bound of the bucket holding the p-th
// percentile by nearest rank (the same rank as benchutil.Percentile).
func (h *histogram) percentile(p float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := min(uint64(p/100*float64(h.n)), h.n-1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			return lowerBound(i)
		}
	}
	return h.max
}
