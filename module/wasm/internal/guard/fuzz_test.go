package guard_test

import (
	"context"
	"testing"

	"github.com/tetratelabs/wazero"

	. "github.com/hotswapgo/hotswap/internal/hostile"
	"github.com/hotswapgo/hotswap/module/wasm/internal/guard"
)

// FuzzParse checks that Parse never panics and stays within its limits
// (the fuzzer's own memory limit would catch an allocation sized from a
// declared count), that Instrument never fails on what Parse accepts, and
// that instrumenting neither breaks a module nor repairs one: the
// instrumented module compiles exactly when its input does.
func FuzzParse(f *testing.F) {
	f.Add(runaway(spin))
	f.Add(runaway(exponential))
	f.Add(depthModule())
	f.Add(Header())
	for _, c := range Cases() {
		if len(c.Bytes) < 64<<10 {
			f.Add(c.Bytes)
		}
	}
	ctx := context.Background()
	// Configured as the backend is: without DWARF, wazero skips custom sections.
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter().WithDebugInfoEnabled(false))
	defer rt.Close(ctx)
	lim := limits
	lim.ModuleBytes, lim.Functions, lim.DataSegments, lim.TableEntries = 1<<20, 10_000, 10_000, 10_000
	f.Fuzz(func(t *testing.T, bin []byte) {
		m, err := guard.Parse(bin, lim)
		if err != nil {
			if m != nil {
				t.Fatalf("Parse() = a module and %v; want no module with an error", err)
			}
			return
		}
		out, err := m.Instrument(config)
		if err != nil {
			t.Fatalf("Instrument() of a parsed module = %v", err)
		}
		_, inErr := rt.CompileModule(ctx, bin)
		cm, outErr := rt.CompileModule(ctx, out)
		if outErr == nil {
			cm.Close(ctx)
		}
		switch {
		case inErr == nil && outErr != nil:
			t.Fatalf("the input compiles but the instrumented module does not: %v", outErr)
		case inErr != nil && outErr == nil:
			t.Fatalf("the input does not compile (%v) but the instrumented module does", inErr)
		}
	})
}
