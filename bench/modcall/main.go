// Command modcall measures the cost of a call through the module registry
// against the best hand-written raw wazero call of the same guest, and the
// guest memory of a handler that allocates 256 KiB per call.
//
//	go run ./bench/modcall
//
// A call echoes 1 KiB in and 1 KiB out. "raw" is the best hand-written wazero
// call of the same guest; "raw guarded" is the same with wazero's own runaway
// protection on (WithCloseOnContextDone: a goroutine per call watches the
// context), for comparison with the registry's untrusted mode, which gets
// its protection from stop-flag instrumentation instead (see RATIONALE.md). Latencies are medians of the mean
// per-call time of batches of 100 calls (timing single 60 ns calls would
// measure the clock); trusted, untrusted and raw batches are interleaved so
// machine noise hits them alike.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const batch = 100

var maintainEvery int

func main() {
	rounds := flag.Int("rounds", 2000, "batches of 100 calls per variant")
	allocCalls := flag.Int("alloc-calls", 100000, "calls of the allocating handler")
	flag.IntVar(&maintainEvery, "maintain-every", 0, "calls between GC yields (0: the default)")
	flag.Parse()
	if err := run(*rounds, *allocCalls); err != nil {
		log.Fatal(err)
	}
}

func run(rounds, allocCalls int) error {
	ctx := context.Background()
	code, err := benchutil.Guest("./internal/testguests/echo", "")
	if err != nil {
		return err
	}
	cache := os.TempDir() + "/hotswap-bench-wazero-cache"

	newReg := func(trusted bool) (*module.Module, *module.Registry, error) {
		b, err := wasm.New(wasm.Options{CacheDir: cache, Default: wasm.ModuleConfig{MaintainEvery: maintainEvery, CallTimeout: map[bool]time.Duration{true: wasm.NoCallTimeout}[trusted], Grants: []wasm.Capability{wasm.CapKV}}})
		if err != nil {
			return nil, nil, err
		}
		r, err := module.New(module.Options{Backend: b})
		if err != nil {
			return nil, nil, err
		}
		if _, err := r.Load(ctx, "echo", module.Source{Version: "v1", Artifact: code}); err != nil {
			return nil, nil, err
		}
		return r.Module("echo"), r, nil
	}
	trusted, tr, err := newReg(true)
	if err != nil {
		return err
	}
	defer tr.Close(ctx)
	untrusted, ur, err := newReg(false)
	if err != nil {
		return err
	}
	defer ur.Close(ctx)
	raw, err := newRaw(ctx, code, cache, false)
	if err != nil {
		return err
	}
	defer raw.close(ctx)
	rawGuarded, err := newRaw(ctx, code, cache, true)
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
		{name: "trusted", call: viaRegistry(trusted)},
		{name: "untrusted", call: viaRegistry(untrusted)},
		{name: "raw guarded", call: func() error { return rawGuarded.echo(ctx, in, &dst) }},
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
	trustedP50 := benchutil.Percentile(variants[1].ns, 50)
	untrustedP50 := benchutil.Percentile(variants[2].ns, 50)
	rawGuardedP50 := benchutil.Percentile(variants[3].ns, 50)

	// The allocating handler, on a fresh trusted registry.
	allocMod, ar, err := newReg(true)
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

	fmt.Printf("raw p50 %.1f ns, trusted p50 %.1f ns, untrusted p50 %.1f ns, raw guarded p50 %.1f ns\n", rawP50, trustedP50, untrustedP50, rawGuardedP50)
	fmt.Printf("alloc: %d calls in %v, %d instances, guest memory %.1f MiB\n", allocCalls, allocElapsed,
		st.Active.Instances, float64(st.Active.MemoryBytes)/(1<<20))
	benchutil.Result(map[string]any{
		"trusted_p50_ns":       round1(trustedP50),
		"untrusted_p50_ns":     round1(untrustedP50),
		"raw_p50_ns":           round1(rawP50),
		"raw_guarded_p50_ns":   round1(rawGuardedP50),
		"untrusted_ratio":      round2(untrustedP50 / rawGuardedP50),
		"ratio":                round2(trustedP50 / rawP50),
		"alloc_calls":          allocCalls,
		"alloc_guest_mem_mb":   round1(float64(st.Active.MemoryBytes) / (1 << 20)),
		"alloc_instances":      st.Active.Instances,
		"alloc_call_mean_ns":   allocElapsed.Nanoseconds() / int64(allocCalls),
		"batches_per_variant":  rounds,
		"calls_per_batch":      batch,
		"payload_bytes_in_out": len(in),
	})
	return nil
}

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
func newRaw(ctx context.Context, code []byte, cacheDir string, guarded bool) (*rawEcho, error) {
	cache, err := wazero.NewCompilationCacheWithDir(cacheDir)
	if err != nil {
		return nil, err
	}
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCompilationCache(cache).WithCloseOnContextDone(guarded))
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	noop := api.GoModuleFunc(func(context.Context, api.Module, []uint64) {})
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	_, err = rt.NewHostModuleBuilder("hotswap").
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
