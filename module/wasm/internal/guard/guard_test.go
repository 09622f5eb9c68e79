package guard_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	. "github.com/hotswapgo/hotswap/internal/hostile"
	"github.com/hotswapgo/hotswap/module/wasm/internal/guard"
)

// limits are generous: the tests of limits set their own.
var limits = guard.Limits{ModuleBytes: 32 << 20, Types: 10_000, Params: 1_000, Functions: 100_000, Imports: 1_000,
	Exports: 10_000, Globals: 10_000, Tables: 100, TableEntries: 1 << 20, MemoryPages: 4096, DataSegments: 1_000_000,
	ElementSegments: 10_000, Locals: 10_000, BodyBytes: 256 << 10, Nesting: 8_192}

var config = guard.Config{MaxStack: 1 << 24, MaxTableEntries: 1 << 20}

func instrument(t testing.TB, bin []byte, cfg guard.Config) []byte {
	t.Helper()
	m, err := guard.Parse(bin, limits)
	if err != nil {
		t.Fatalf("Parse() = %v", err)
	}
	out, err := m.Instrument(cfg)
	if err != nil {
		t.Fatalf("Instrument() = %v", err)
	}
	return out
}

// instance instruments bin with cfg and instantiates it in a runtime
// without wazero's own runaway protection, closed when the test ends.
func instance(t testing.TB, bin []byte, cfg guard.Config, imports ...func(wazero.HostModuleBuilder)) api.Module {
	t.Helper()
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())
	t.Cleanup(func() { rt.Close(ctx) })
	for _, f := range imports {
		hb := rt.NewHostModuleBuilder("env")
		f(hb)
		if _, err := hb.Instantiate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mod, err := rt.InstantiateWithConfig(ctx, instrument(t, bin, cfg), wazero.NewModuleConfig().WithStartFunctions())
	if err != nil {
		t.Fatalf("instantiate the instrumented module: %v", err)
	}
	return mod
}

func stopFlag(t testing.TB, mod api.Module) api.MutableGlobal {
	t.Helper()
	flag, ok := mod.ExportedGlobal(guard.StopExport).(api.MutableGlobal)
	if !ok || flag.Type() != api.ValueTypeI32 {
		t.Fatalf("ExportedGlobal(%q) = %v; want a mutable i32", guard.StopExport, mod.ExportedGlobal(guard.StopExport))
	}
	return flag
}

func signal(mod api.Module) uint64 { return mod.ExportedGlobal(guard.SignalExport).Get() }

var (
	none = []byte{}
	i32  = []byte{I32}
)

// runaway is a module exporting "run", which never returns by itself: the
// code given.
func runaway(code func(b *Builder) []byte) []byte {
	var b Builder
	b.Memory(1, -1)
	body := code(&b)
	b.Export("run", KindFunc, b.Func(nil, nil, nil, body))
	return b.Bytes()
}

func spin(*Builder) []byte { return Code([]byte{Loop, Void}, Op(Br, 0), []byte{End}) }

// exponential calls f(64), f recursing twice per level and no loop.
func exponential(b *Builder) []byte {
	f := b.Declare(i32, nil)
	dec := Code(Op(LocalGet, 0), I32Const(1), []byte{I32Sub}, Op(Call, uint64(f)))
	b.Body(f, nil, Op(LocalGet, 0), []byte{I32Eqz, If, Void, Return, End}, dec, dec)
	return Code(I32Const(64), Op(Call, uint64(f)))
}

// TestStopFlagStopsRunaways: code that runs forever through a loop or
// through loop-free recursion lets the Go garbage collector stop the world
// while it runs, and stops once the flag is set.
func TestStopFlagStopsRunaways(t *testing.T) {
	for name, code := range map[string]func(*Builder) []byte{"loop": spin, "exponential recursion": exponential} {
		t.Run(name, func(t *testing.T) {
			mod := instance(t, runaway(code), config)
			done := make(chan error, 1)
			go func() {
				_, err := mod.ExportedFunction("run").Call(context.Background())
				done <- err
			}()
			select {
			case err := <-done:
				t.Fatalf("run returned %v before the flag was set", err)
			case <-time.After(50 * time.Millisecond):
			}
			gc := make(chan struct{})
			go func() {
				runtime.GC()
				close(gc)
			}()
			select {
			case <-gc:
			case <-time.After(10 * time.Second):
				t.Fatal("runtime.GC blocked for 10s by a guest running away")
			}
			stopFlag(t, mod).Set(1)
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "unreachable") {
					t.Fatalf("run after the flag was set = %v; want an unreachable trap", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("run still runs 5s after the flag was set")
			}
			if s := signal(mod); s != 0 {
				t.Errorf("signal = %#x; want 0 for a stop", s)
			}
		})
	}
}

// depthModule exports "down"(n), which recurses n deep through a function
// of some weight and returns n, using return inside nested blocks and a
// branch to the function's label.
func depthModule() []byte {
	var b Builder
	b.Memory(1, -1)
	f := b.Declare(i32, i32)
	b.Body(f, nil,
		[]byte{Block, Void, Block, Void}, Op(LocalGet, 0), []byte{I32Eqz, If, Void}, I32Const(0), []byte{Return, End, End, End},
		Op(LocalGet, 0), I32Const(1), []byte{I32Sub}, Op(Call, uint64(f)), I32Const(1), []byte{I32Add},
		Op(Br, 0), // to the function's label: a return
	)
	b.Export("down", KindFunc, f)
	return b.Bytes()
}

// TestStackBound: recursion within MaxStack returns, over and over (returns
// and branches out of the body give the depth back); recursion past it
// traps with SignalStack.
func TestStackBound(t *testing.T) {
	mod := instance(t, depthModule(), guard.Config{MaxStack: 1 << 22, MaxTableEntries: 1})
	down := mod.ExportedFunction("down")
	// Each frame weighs the 64-unit minimum: 2^22/64 = 65,536 frames fit.
	for i := range 1000 {
		r, err := down.Call(context.Background(), 20_000)
		if err != nil || r[0] != 20_000 {
			t.Fatalf("call %d: down(20000) = %v, %v; want 20000", i, r, err)
		}
	}
	_, err := down.Call(context.Background(), 1_000_000)
	if err == nil || signal(mod)&guard.SignalStack == 0 {
		t.Fatalf("down(1000000) = %v, signal %#x; want a trap with SignalStack", err, signal(mod))
	}
}

// TestMultipleResults: a function returning two values keeps them through
// the block that wraps its body.
func TestMultipleResults(t *testing.T) {
	var b Builder
	b.Memory(1, -1)
	g := b.Func(nil, []byte{I32, I64}, nil, I32Const(7), I64Const(8), []byte{Return})
	b.Export("pair", KindFunc, b.Func(nil, []byte{I32, I64}, nil, Op(Call, uint64(g))))
	mod := instance(t, b.Bytes(), config)
	r, err := mod.ExportedFunction("pair").Call(context.Background())
	if err != nil || len(r) != 2 || r[0] != 7 || r[1] != 8 {
		t.Fatalf("pair() = %v, %v; want [7 8]", r, err)
	}
}

// TestGrowSignals: a refused memory.grow or table.grow returns -1 and sets
// its signal; table.grow stops at MaxTableEntries and counts what it added.
func TestGrowSignals(t *testing.T) {
	var b Builder
	b.Memory(1, 4)
	b.Table(FuncRef, 10, -1)
	b.Export("mem", KindFunc, b.Func(i32, i32, nil, Op(LocalGet, 0), []byte{MemoryGrow, 0}))
	b.Export("table", KindFunc, b.Func(i32, i32, nil, []byte{0xd0, FuncRef}, Op(LocalGet, 0), []byte{0xfc, 15, 0}))
	mod := instance(t, b.Bytes(), guard.Config{MaxStack: 1 << 20, MaxTableEntries: 100})
	ctx := context.Background()
	call := func(name string, n uint64) int32 {
		r, err := mod.ExportedFunction(name).Call(ctx, n)
		if err != nil {
			t.Fatalf("%s(%d) = %v", name, n, err)
		}
		return int32(r[0])
	}
	if got := call("mem", 3); got != 1 || signal(mod) != 0 {
		t.Fatalf("memory.grow 3 = %d, signal %#x; want 1 and no signal", got, signal(mod))
	}
	if got := call("mem", 1); got != -1 || signal(mod) != guard.SignalMemory {
		t.Fatalf("memory.grow past the maximum = %d, signal %#x; want -1 and SignalMemory", got, signal(mod))
	}
	if got := call("table", 90); got != 10 {
		t.Fatalf("table.grow 90 = %d; want 10", got)
	}
	if got := mod.ExportedGlobal(guard.TableGrowthExport).Get(); got != 90 {
		t.Fatalf("%s = %d; want 90", guard.TableGrowthExport, got)
	}
	if got := call("table", 1); got != -1 || signal(mod)&guard.SignalTable == 0 {
		t.Fatalf("table.grow past MaxTableEntries = %d, signal %#x; want -1 and SignalTable", got, signal(mod))
	}
}

// TestHostCallsReadTheFlag: a guest that spends its time in host functions
// (sleeping, say) spends no fuel, so the flag is read after every host
// call.
func TestHostCallsReadTheFlag(t *testing.T) {
	var b Builder
	wait := b.ImportFunc("env", "wait", nil, nil)
	b.Memory(1, -1)
	b.Export("run", KindFunc, b.Func(nil, nil, nil, []byte{Loop, Void}, Op(Call, uint64(wait)), Op(Br, 0), []byte{End}))
	var calls int
	var flag api.MutableGlobal
	mod := instance(t, b.Bytes(), config, func(hb wazero.HostModuleBuilder) {
		hb.NewFunctionBuilder().WithFunc(func() {
			if calls++; calls == 3 {
				flag.Set(1)
			}
		}).Export("wait")
	})
	flag = stopFlag(t, mod)
	_, err := mod.ExportedFunction("run").Call(context.Background())
	if err == nil || calls != 3 {
		t.Fatalf("run() = %v after %d host calls; want a trap after the third", err, calls)
	}
}

// TestBulkMemoryIsCharged: memory.fill in a loop, each of a whole memory,
// is charged by its size: the flag stops it as fast as any loop.
func TestBulkMemoryIsCharged(t *testing.T) {
	mod := instance(t, runaway(func(*Builder) []byte {
		return Code([]byte{Loop, Void}, I32Const(0), I32Const(0), I32Const(1<<16), []byte{0xfc, 11, 0}, Op(Br, 0), []byte{End})
	}), config)
	done := make(chan error, 1)
	go func() {
		_, err := mod.ExportedFunction("run").Call(context.Background())
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it run; not synchronisation
	stopFlag(t, mod).Set(1)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("run() = nil; want a trap")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run still runs 5s after the flag was set")
	}
}

// TestStartSectionBecomesExport: the start function does not run at
// instantiation, where no flag could stop it, but is exported.
func TestStartSectionBecomesExport(t *testing.T) {
	var b Builder
	b.Memory(1, -1)
	g := b.Global(I32, true, I32Const(0))
	b.Start(b.Func(nil, nil, nil, I32Const(7), Op(GlobalSet, uint64(g))))
	b.Export("get", KindFunc, b.Func(nil, i32, nil, Op(GlobalGet, uint64(g))))
	mod := instance(t, b.Bytes(), config)
	ctx := context.Background()
	if r, _ := mod.ExportedFunction("get").Call(ctx); r[0] != 0 {
		t.Fatalf("get() before %s = %d; want 0", guard.StartExport, r[0])
	}
	if _, err := mod.ExportedFunction(guard.StartExport).Call(ctx); err != nil {
		t.Fatalf("%s() = %v", guard.StartExport, err)
	}
	if r, _ := mod.ExportedFunction("get").Call(ctx); r[0] != 7 {
		t.Fatalf("get() after %s = %d; want 7", guard.StartExport, r[0])
	}
}

// TestRefusals: every malformed, unsupported or oversized hostile module is
// refused by Parse with the right class of error.
func TestRefusals(t *testing.T) {
	for _, c := range Cases() {
		var want []error
		switch c.Want.Check {
		case "validate":
			want = []error{guard.ErrMalformed, guard.ErrUnsupported}
		case "limits":
			want = []error{guard.ErrLimit}
		default:
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			_, err := guard.Parse(c.Bytes, limits)
			for _, w := range want {
				if errors.Is(err, w) {
					return
				}
			}
			t.Fatalf("Parse(%s) = %v; want an error matching one of %v", c.What, err, want)
		})
	}
}

func TestLimitError(t *testing.T) {
	lim := limits
	lim.Functions = 2
	var b Builder
	for range 3 {
		b.Func(nil, nil, nil)
	}
	_, err := guard.Parse(b.Bytes(), lim)
	var le *guard.LimitError
	if !errors.As(err, &le) || le.What != "functions" || le.Declared != 3 || le.Limit != 2 || !errors.Is(err, guard.ErrLimit) {
		t.Fatalf("Parse(3 functions, limit 2) = %v; want a LimitError of 3 functions over 2", err)
	}
}

// TestGuests instruments the Go guests of this repository and compiles the
// result: only the type, function, global, export and code sections change
// (Go guests have a memory and no start section).
func TestGuests(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())
	defer rt.Close(ctx)
	for _, pkg := range []string{"./internal/testguests/echo", "./examples/pricing/guests/v1"} {
		t.Run(filepath.Base(pkg), func(t *testing.T) {
			bin, err := guestbuild.Bytes(pkg, "")
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out := instrument(t, bin, config)
			elapsed := time.Since(start)
			if _, err := rt.CompileModule(ctx, out); err != nil {
				t.Fatalf("CompileModule(instrumented) = %v", err)
			}
			in, got := sections(t, bin), sections(t, out)
			if len(in) != len(got) {
				t.Fatalf("%d sections instrumented; want %d", len(got), len(in))
			}
			for i := range in {
				if in[i].id != got[i].id {
					t.Fatalf("section %d has id %d; want %d", i, got[i].id, in[i].id)
				}
				switch in[i].id {
				case 1, 3, 6, 7, 10:
					if len(got[i].body) <= len(in[i].body) {
						t.Errorf("section %d (id %d) did not grow", i, in[i].id)
					}
				default:
					if !bytes.Equal(in[i].body, got[i].body) {
						t.Errorf("section %d (id %d) changed", i, in[i].id)
					}
				}
			}
			t.Logf("%d -> %d bytes (+%.1f%%) in %v", len(bin), len(out), 100*float64(len(out)-len(bin))/float64(len(bin)), elapsed)
		})
	}
}

type section struct {
	id   byte
	body []byte
}

func sections(t testing.TB, b []byte) []section {
	t.Helper()
	var out []section
	b = b[8:]
	for len(b) > 0 {
		id := b[0]
		size, n := binary.Uvarint(b[1:])
		if n <= 0 || uint64(len(b)-1-n) < size {
			t.Fatalf("bad section header at %d", len(b))
		}
		out = append(out, section{id, b[1+n : 1+n+int(size)]})
		b = b[1+n+int(size):]
	}
	return out
}
