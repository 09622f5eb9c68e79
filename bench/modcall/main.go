// Command modcall measures the cost of a call through the module registry
// against the best hand-written raw wazero call of the same guest, the
// guest memory of a handler that allocates 256 KiB per call, and how long a
// plain goroutine of the process is kept from running while every hostile
// module of internal/hostile is loaded and called.
//
//	go run ./bench/modcall
//
// A call echoes 1 KiB in and 1 KiB out. "raw" is the best hand-written
// wazero call of the same guest, uninstrumented; "untrusted" (the name the
// field had when modules could run unprotected) is a call through the
// registry with the default deadline, "no deadline" one with
// CallTimeout = NoCallTimeout: both run the guest instrumented (stop flag,
// fuel at loop heads and function entries, stack depth). "raw guarded" is
// raw wazero with its own runaway protection on (WithCloseOnContextDone: a
// goroutine per call watches the context), for comparison. "telemetry" is the registry call with metrics
// on (Options.TimeCalls = metricsTimeCalls: a random draw per
// call, two clock reads for the calls timed), "labels" with profiling
// labels on (Options.ProfileLabels); telemetry_extra_ns and labels_extra_ns
// are their p50 minus untrusted_p50_ns of the same run. Latencies are
// medians of the mean per-call time of batches of 100 calls (timing single
// 60 ns calls would measure the clock); the variants' batches are
// interleaved so machine noise hits them alike.
//
// "plugin" (with -plugin, the default) is the same echo guest built as a Go
// plugin (module/goplugin) and called through the registry:
// plugin_p50_ns, and plugin_vs_wasm_ratio against untrusted_p50_ns, the
// WASM call through the registry measured in the same run.
//
// The hostile phase loads each hostile module into a registry that also
// serves a healthy Go module called every millisecond, while a goroutine
// measures by how much its 1 ms ticks come late (hostile_max_stall_ms). The
// same measurement over as long with the healthy module alone gives the
// machine's own noise (baseline_max_stall_ms).
// hostile_case_load_call_stall_ms gives each case's load and call times and
// the longest stall meanwhile. The hostile modules run with a
// 250 ms call deadline and a 500 ms InitTimeout.
//
// The language phase (languages.go) compares the same module in Go, Rust
// and C: call p50, module size, Load to serving.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/bench/internal/pluginguest"
	"github.com/hotswapgo/hotswap/internal/hostile"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/goplugin"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const batch = 100

// metricsTimeCalls is telemetry.DefaultTimeCalls, the share of calls a host
// with metrics times. The program does not import package telemetry, so
// that it links what the call path links and nothing else (client_golang
// and the OpenTelemetry SDK moved the everything-off ratio by code layout
// alone); a test in telemetry keeps the two equal.
const metricsTimeCalls = 0.01

func main() {
	rounds := flag.Int("rounds", 2000, "batches of 100 calls per variant")
	allocCalls := flag.Int("alloc-calls", 100000, "calls of the allocating handler")
	maintainEvery := flag.Int("maintain-every", 0, "calls between GC yields (0: the default)")
	hostileRuns := flag.Int("hostile", 1, "passes over the hostile modules (0: none)")
	withPlugin := flag.Bool("plugin", true, "also call the echo guest built as a Go plugin")
	withTelemetry := flag.Bool("telemetry", true, "measure the telemetry and labels variants too")
	flag.Parse()
	dir, err := os.MkdirTemp("", "modcall-")
	if err != nil {
		log.Fatal(err)
	}
	err = run(dir, *rounds, *allocCalls, *maintainEvery, *hostileRuns, *withPlugin, *withTelemetry)
	os.RemoveAll(dir)
	if err != nil {
		log.Fatal(err)
	}
}

func run(cache string, rounds, allocCalls, maintainEvery, hostileRuns int, withPlugin, withTelemetry bool) error {
	ctx := context.Background()
	code, err := benchutil.Guest("./internal/testguests/echo", "")
	if err != nil {
		return err
	}
	newReg := func(timeout time.Duration, opts module.Options) (*module.Module, *module.Registry, error) {
		b, err := wasm.New(wasm.Options{CacheDir: cache, Default: wasm.ModuleConfig{MaintainEvery: maintainEvery,
			CallTimeout: timeout, Grants: []wasm.Capability{wasm.CapKV}}})
		if err != nil {
			return nil, nil, err
		}
		opts.Backend = b
		r, err := module.New(opts)
		if err != nil {
			return nil, nil, err
		}
		if _, err := r.Load(ctx, "echo", module.Source{Version: "v1", Artifact: code}); err != nil {
			return nil, nil, err
		}
		return r.Module("echo"), r, nil
	}
	deadline, dr, err := newReg(0, module.Options{})
	if err != nil {
		return err
	}
	defer dr.Close(ctx)
	noDeadline, nr, err := newReg(wasm.NoCallTimeout, module.Options{})
	if err != nil {
		return err
	}
	defer nr.Close(ctx)
	// Metrics on: the share of calls a host with metrics times (the
	// counters themselves are always kept and read at scrape time).
	withMetrics, mr, err := newReg(0, module.Options{TimeCalls: metricsTimeCalls})
	if err != nil {
		return err
	}
	defer mr.Close(ctx)
	withLabels, lr, err := newReg(0, module.Options{ProfileLabels: true})
	if err != nil {
		return err
	}
	defer lr.Close(ctx)
	raw, err := newRaw(ctx, code, false)
	if err != nil {
		return err
	}
	defer raw.close(ctx)
	rawGuarded, err := newRaw(ctx, code, true)
	if err != nil {
		return err
	}
	defer rawGuarded.close(ctx)

	in := make([]byte, 1024)
	for i := range in {
		in[i] = byte(i)
	}
	dst := make([]byte, 0, 2048)
	viaRegistry := func(m *module.Module) func() error {
		return func() error {
			out, err := m.AppendCall(ctx, dst[:0], "echo", in)
			if err == nil && len(out) != len(in) {
				err = fmt.Errorf("echo returned %d bytes", len(out))
			}
			return err
		}
	}
	variants := []struct {
		name string
		call func() error
		ns   []float64
	}{
		{name: "raw", call: func() error { return raw.echo(ctx, in, &dst) }},
		{name: "untrusted", call: viaRegistry(deadline)},
		{name: "no deadline", call: viaRegistry(noDeadline)},
		{name: "raw guarded", call: func() error { return rawGuarded.echo(ctx, in, &dst) }},
		{name: "telemetry", call: viaRegistry(withMetrics)},
		{name: "labels", call: viaRegistry(withLabels)},
	}
	if !withTelemetry {
		// The program as it was before them, to compare the variants
		// without telemetry with earlier runs.
		variants = variants[:4]
	}
	if withPlugin {
		pm, pr, err := pluginModule(ctx, cache)
		if err != nil {
			return err
		}
		defer pr.Close(ctx)
		variants = append(variants, struct {
			name string
			call func() error
			ns   []float64
		}{name: "plugin", call: viaRegistry(pm)})
	}
	for i := range variants { // warm up
		for range 20 * batch {
			if err := variants[i].call(); err != nil {
				return fmt.Errorf("%s: %w", variants[i].name, err)
			}
		}
	}
	for range rounds {
		for i := range variants {
			v := &variants[i]
			start := time.Now()
			for range batch {
				if err := v.call(); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
			}
			v.ns = append(v.ns, float64(time.Since(start).Nanoseconds())/batch)
		}
	}
	rawP50 := benchutil.Percentile(variants[0].ns, 50)
	untrustedP50 := benchutil.Percentile(variants[1].ns, 50)
	noDeadlineP50 := benchutil.Percentile(variants[2].ns, 50)
	rawGuardedP50 := benchutil.Percentile(variants[3].ns, 50)

	// The allocating handler, on a fresh registry.
	allocMod, ar, err := newReg(0, module.Options{})
	if err != nil {
		return err
	}
	start := time.Now()
	for range allocCalls {
		if _, err := allocMod.AppendCall(ctx, dst[:0], "alloc", in[:16]); err != nil {
			return fmt.Errorf("alloc: %w", err)
		}
	}
	allocElapsed := time.Since(start)
	st := allocMod.Status()
	ar.Close(ctx)

	fmt.Printf("raw p50 %.1f ns, untrusted p50 %.1f ns (%.2fx), no deadline p50 %.1f ns, raw guarded p50 %.1f ns\n",
		rawP50, untrustedP50, untrustedP50/rawP50, noDeadlineP50, rawGuardedP50)
	fmt.Printf("alloc: %d calls in %v, %d instances, guest memory %.1f MiB\n", allocCalls, allocElapsed,
		st.Active.Instances, float64(st.Active.MemoryBytes)/(1<<20))

	res := map[string]any{
		"raw_p50_ns":           round1(rawP50),
		"untrusted_p50_ns":     round1(untrustedP50),
		"no_deadline_p50_ns":   round1(noDeadlineP50),
		"raw_guarded_p50_ns":   round1(rawGuardedP50),
		"untrusted_ratio":      round2(untrustedP50 / rawP50),
		"no_deadline_ratio":    round2(noDeadlineP50 / rawP50),
		"alloc_calls":          allocCalls,
		"alloc_guest_mem_mb":   round1(float64(st.Active.MemoryBytes) / (1 << 20)),
		"alloc_instances":      st.Active.Instances,
		"alloc_call_mean_ns":   allocElapsed.Nanoseconds() / int64(allocCalls),
		"batches_per_variant":  rounds,
		"calls_per_batch":      batch,
		"payload_bytes_in_out": len(in),
	}
	if withTelemetry {
		telemetryP50 := benchutil.Percentile(variants[4].ns, 50)
		labelsP50 := benchutil.Percentile(variants[5].ns, 50)
		fmt.Printf("telemetry p50 %.1f ns (%+.1f ns), labels p50 %.1f ns (%+.1f ns)\n",
			telemetryP50, telemetryP50-untrustedP50, labelsP50, labelsP50-untrustedP50)
		res["telemetry_p50_ns"] = round1(telemetryP50)
		res["labels_p50_ns"] = round1(labelsP50)
		res["telemetry_extra_ns"] = round1(telemetryP50 - untrustedP50)
		res["labels_extra_ns"] = round1(labelsP50 - untrustedP50)
	}
	if hostileRuns > 0 {
		h, err := hostilePhase(ctx, cache, code, hostileRuns)
		if err != nil {
			return err
		}
		fmt.Printf("hostile: %d cases x %d, %d answered wrongly, took %v; longest stall %v (baseline %v); healthy calls %d, slowest %v (baseline %v)\n",
			h.cases, hostileRuns, h.wrong, h.took.Round(time.Millisecond), h.stall, h.baselineStall, h.healthyCalls,
			h.healthyMax, h.baselineHealthyMax)
		res["hostile_cases"] = h.cases * hostileRuns
		res["hostile_wrong_answers"] = h.wrong
		res["hostile_max_stall_ms"] = ms(h.stall)
		res["baseline_max_stall_ms"] = ms(h.baselineStall)
		res["hostile_healthy_calls"] = h.healthyCalls
		res["hostile_healthy_failures"] = h.healthyFailures
		res["hostile_healthy_max_ms"] = ms(h.healthyMax)
		res["baseline_healthy_max_ms"] = ms(h.baselineHealthyMax)
		res["hostile_seconds"] = round2(h.took.Seconds())
		res["hostile_case_load_call_stall_ms"] = h.caseMS
	}
	langs, err := languagePhase(ctx, rounds) // see languages.go
	if err != nil {
		return fmt.Errorf("languages: %w", err)
	}
	maps.Copy(res, langs)

	if withPlugin {
		pluginP50 := benchutil.Percentile(variants[len(variants)-1].ns, 50) // appended last
		fmt.Printf("plugin p50 %.1f ns (%.2fx the WASM call through the registry)\n", pluginP50, pluginP50/untrustedP50)
		res["plugin_p50_ns"] = round1(pluginP50)
		res["plugin_vs_wasm_ratio"] = round2(pluginP50 / untrustedP50)
	}
	benchutil.Result(res)
	return nil
}

// pluginModule builds the echo guest as a Go plugin and loads it into a
// registry of its own.
func pluginModule(ctx context.Context, dir string) (*module.Module, *module.Registry, error) {
	so, err := pluginguest.Build("./internal/testguests/echo", nil, dir)
	if err != nil {
		return nil, nil, err
	}
	b, err := goplugin.New(goplugin.Options{Dir: filepath.Join(dir, "plugins")})
	if err != nil {
		return nil, nil, err
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		return nil, nil, err
	}
	if _, err := r.Load(ctx, "echo", module.Source{Version: "v1", Artifact: so}); err != nil {
		r.Close(ctx)
		return nil, nil, err
	}
	return r.Module("echo"), r, nil
}

type hostileResult struct {
	// caseMS holds, per case, how long its load and its call took in the
	// first pass and the longest stall meanwhile, in milliseconds.
	caseMS map[string][3]float64

	cases, wrong                   int
	took                           time.Duration
	stall, baselineStall           time.Duration
	healthyCalls, healthyFailures  int
	healthyMax, baselineHealthyMax time.Duration
}

// hostilePhase runs every hostile case runs times against a registry that
// also serves the healthy echo module, then measures as long with the
// healthy module alone.
func hostilePhase(ctx context.Context, cache string, healthyCode []byte, runs int) (hostileResult, error) {
	var res hostileResult
	cases := hostile.Cases()
	res.cases = len(cases)
	modules := map[string]wasm.ModuleConfig{}
	for _, c := range cases {
		cfg := wasm.ModuleConfig{CallTimeout: 250 * time.Millisecond, InitTimeout: 500 * time.Millisecond,
			MemoryLimit: 64 << 20, MinInstances: 1, MaxInstances: 2, MaintainEvery: 1, LogLimit: 100}
		for _, g := range c.Grants {
			cfg.Grants = append(cfg.Grants, wasm.Capability(g))
		}
		modules[c.Name] = cfg
	}
	b, err := wasm.New(wasm.Options{CacheDir: cache, Modules: modules,
		Default: wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, MinInstances: 2}})
	if err != nil {
		return res, err
	}
	r, err := module.New(module.Options{Backend: b, DrainTimeout: time.Second})
	if err != nil {
		return res, err
	}
	defer r.Close(ctx)
	if _, err := r.Load(ctx, "healthy", module.Source{Version: "v1", Artifact: healthyCode}); err != nil {
		return res, err
	}
	healthy := r.Module("healthy")

	// measure runs f while the healthy module is called every millisecond
	// and a probe ticks every millisecond.
	measure := func(f func()) (stall, slowest time.Duration, calls, failures int) {
		var (
			mu   sync.Mutex
			stop = make(chan struct{})
			wg   sync.WaitGroup
		)
		wg.Go(func() {
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Now()
				out, err := healthy.Call(cctx, "echo", []byte("ping"))
				d := time.Since(start)
				cancel()
				mu.Lock()
				calls++
				slowest = max(slowest, d)
				if err != nil || string(out) != "ping" {
					failures++
				}
				mu.Unlock()
			}
		})
		probe := hostile.StartProbe(time.Millisecond)
		f()
		stall = probe.Stop()
		close(stop)
		wg.Wait()
		return stall, slowest, calls, failures
	}

	var stall, slowest time.Duration
	start := time.Now()
	res.caseMS = make(map[string][3]float64)
	stall, slowest, res.healthyCalls, res.healthyFailures = measure(func() {
		for i := range runs {
			for _, c := range cases {
				caseProbe := hostile.StartProbe(time.Millisecond)
				got, err := hostile.Check(ctx, r, c, 30*time.Second)
				caseStall := caseProbe.Stop()
				if err != nil {
					res.wrong++
					fmt.Printf("hostile %s: %v\n", c.Name, err)
				}
				if i == 0 {
					res.caseMS[c.Name] = [3]float64{ms3(got.Load), ms3(got.Call), ms3(caseStall)}
				}
			}
		}
	})
	res.took = time.Since(start)
	res.stall, res.healthyMax = stall, slowest
	res.baselineStall, res.baselineHealthyMax, _, _ = measure(func() { time.Sleep(res.took) })
	return res, nil
}

func ms(d time.Duration) float64 { return round1(float64(d) / float64(time.Millisecond)) }

func ms3(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// rawEcho is the best raw wazero code for the same call: one instance, the
// exchange buffer located once, a reused stack, no registry.
type rawEcho struct {
	rt    wazero.Runtime
	mem   api.Memory
	call  api.Function
	xptr  uint32
	stack []uint64
}

// newRaw instantiates the guest on a bare wazero runtime; guarded turns on
// wazero's own runaway protection (WithCloseOnContextDone).
func newRaw(ctx context.Context, code []byte, guarded bool) (*rawEcho, error) {
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCloseOnContextDone(guarded))
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	noop := api.GoModuleFunc(func(context.Context, api.Module, []uint64) {})
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	_, err := rt.NewHostModuleBuilder("hotswap").
		NewFunctionBuilder().WithGoModuleFunction(noop, []api.ValueType{i32, i32, i32}, nil).Export("log").
		NewFunctionBuilder().WithGoModuleFunction(noop, []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i64}).Export("kv_get").
		NewFunctionBuilder().WithGoModuleFunction(noop, []api.ValueType{i32, i32, i32, i32}, nil).Export("kv_set").
		NewFunctionBuilder().WithGoModuleFunction(noop, []api.ValueType{i32, i32}, nil).Export("kv_delete").
		NewFunctionBuilder().WithGoModuleFunction(noop, []api.ValueType{i32, i32, i64}, []api.ValueType{i64}).Export("kv_add").
		Instantiate(ctx)
	if err != nil {
		return nil, err
	}
	cm, err := rt.CompileModule(ctx, code)
	if err != nil {
		return nil, err
	}
	mod, err := rt.InstantiateModule(ctx, cm, wazero.NewModuleConfig().WithStartFunctions("_initialize"))
	if err != nil {
		return nil, err
	}
	r := &rawEcho{rt: rt, mem: mod.Memory(), call: mod.ExportedFunction("hotswap_call"), stack: make([]uint64, 2)}
	r.stack[0] = 16 << 10
	if err := mod.ExportedFunction("hotswap_exchange").CallWithStack(ctx, r.stack); err != nil {
		return nil, err
	}
	r.xptr = uint32(r.stack[0])
	// The echo handler is the first one the guest registers: id 0.
	return r, nil
}

func (r *rawEcho) echo(ctx context.Context, in []byte, dst *[]byte) error {
	r.mem.Write(r.xptr, in)
	r.stack[0], r.stack[1] = 0, uint64(len(in))
	if err := r.call.CallWithStack(ctx, r.stack); err != nil {
		return err
	}
	res := r.stack[0]
	b, _ := r.mem.Read(uint32(res>>32), uint32(res&(1<<30-1)))
	*dst = append((*dst)[:0], b...)
	return nil
}

func (r *rawEcho) close(ctx context.Context) { r.rt.Close(ctx) }
