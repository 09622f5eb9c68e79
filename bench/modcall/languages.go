package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// The language phase compares the same module written in Go, Rust and C
// (the conformance guests of internal/conformance, which answer the same
// handlers): the p50 of the 1 KiB echo through the registry, measured as
// above with the three interleaved; the module's size; and the time from
// Load to the first call served, cold (an empty compilation cache: the
// compile included) and warm (the file cache holds the compiled code, as
// after a restart or on a swap back), medians of langLoads each.
//
// Fields: go_p50_ns, rust_p50_ns, c_p50_ns, rust_ratio_to_go,
// c_ratio_to_go, {go,rust,c}_module_bytes, {go,rust,c}_load_cold_ms,
// {go,rust,c}_load_warm_ms. A language whose toolchain is missing is left
// out, with a note.

const langLoads = 5

type benchLanguage struct {
	name  string
	build func() ([]byte, error)
}

var benchLanguages = []benchLanguage{
	{"go", func() ([]byte, error) { return guestbuild.Bytes("./internal/conformance/guests/go", "") }},
	{"rust", func() ([]byte, error) { return guestbuild.RustBytes("internal/conformance/guests/rust/lib.rs") }},
	{"c", func() ([]byte, error) { return guestbuild.CBytes("internal/conformance/guests/c/guest.c") }},
}

func languagePhase(ctx context.Context, rounds int) (map[string]any, error) {
	res := map[string]any{}
	type measured struct {
		name string
		code []byte
		mod  *module.Module
		ns   []float64
	}
	var langs []*measured
	for _, l := range benchLanguages {
		code, err := l.build()
		if errors.Is(err, guestbuild.ErrNoToolchain) {
			fmt.Printf("languages: %s left out: %v\n", l.name, err)
			continue
		}
		if err != nil {
			return nil, err
		}
		langs = append(langs, &measured{name: l.name, code: code})
		res[l.name+"_module_bytes"] = len(code)
	}

	// Load to serving, cold then warm, each on a fresh backend.
	for _, l := range langs {
		var cold, warm []time.Duration
		for range langLoads {
			dir, err := os.MkdirTemp("", "modcall-lang-")
			if err != nil {
				return nil, err
			}
			c, err := loadToServing(ctx, dir, l.code)
			if err == nil {
				var w time.Duration
				w, err = loadToServing(ctx, dir, l.code)
				warm = append(warm, w)
			}
			os.RemoveAll(dir)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", l.name, err)
			}
			cold = append(cold, c)
		}
		res[l.name+"_load_cold_ms"] = ms3(benchutil.Percentile(cold, 50))
		res[l.name+"_load_warm_ms"] = ms3(benchutil.Percentile(warm, 50))
	}

	// Call cost, interleaved.
	dir, err := os.MkdirTemp("", "modcall-lang-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b, err := wasm.New(wasm.Options{CacheDir: dir, Default: wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}}})
	if err != nil {
		return nil, err
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		return nil, err
	}
	defer r.Close(ctx)
	for _, l := range langs {
		if _, err := r.Load(ctx, l.name, module.Source{Version: "v1", Artifact: l.code}); err != nil {
			return nil, fmt.Errorf("%s: %w", l.name, err)
		}
		l.mod = r.Module(l.name)
	}
	in := make([]byte, 1024)
	for i := range in {
		in[i] = byte(i)
	}
	dst := make([]byte, 0, 2048)
	call := func(l *measured) error {
		out, err := l.mod.AppendCall(ctx, dst[:0], "echo", in)
		if err == nil && len(out) != len(in) {
			err = fmt.Errorf("echo returned %d bytes", len(out))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
		return nil
	}
	for _, l := range langs { // warm up
		for range 20 * batch {
			if err := call(l); err != nil {
				return nil, err
			}
		}
	}
	for range rounds {
		for _, l := range langs {
			start := time.Now()
			for range batch {
				if err := call(l); err != nil {
					return nil, err
				}
			}
			l.ns = append(l.ns, float64(time.Since(start).Nanoseconds())/batch)
		}
	}
	p50 := map[string]float64{}
	for _, l := range langs {
		p50[l.name] = benchutil.Percentile(l.ns, 50)
		res[l.name+"_p50_ns"] = round1(p50[l.name])
		fmt.Printf("languages: %s p50 %.1f ns, module %d bytes, load to serving %v ms cold, %v ms warm\n", l.name,
			p50[l.name], len(l.code), res[l.name+"_load_cold_ms"], res[l.name+"_load_warm_ms"])
	}
	if g := p50["go"]; g > 0 {
		for _, name := range []string{"rust", "c"} {
			if p, ok := p50[name]; ok {
				res[name+"_ratio_to_go"] = round2(p / g)
			}
		}
	}
	return res, nil
}

// loadToServing loads code as a new module on a fresh backend over the
// compilation cache dir and returns the time until its first call was
// served.
func loadToServing(ctx context.Context, dir string, code []byte) (time.Duration, error) {
	b, err := wasm.New(wasm.Options{CacheDir: dir, Default: wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}}})
	if err != nil {
		return 0, err
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		return 0, err
	}
	defer r.Close(ctx)
	start := time.Now()
	if _, err := r.Load(ctx, "m", module.Source{Version: "v1", Artifact: code}); err != nil {
		return 0, err
	}
	if out, err := r.Call(ctx, "m", "echo", []byte("ping")); err != nil || string(out) != "ping" {
		return 0, fmt.Errorf("first call = %q, %v", out, err)
	}
	return time.Since(start), nil
}
