package stopflag_test

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
	"github.com/hotswapgo/hotswap/module/wasm/internal/stopflag"
)

// A minimal assembler for the modules of these tests.

func leb(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func sec(id byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	return append(append([]byte{id}, leb(uint64(len(b)))...), b...)
}

// vec prefixes the concatenated entries with their count.
func vec(entries ...[]byte) []byte {
	return append(leb(uint64(len(entries))), bytes.Join(entries, nil)...)
}

func name(s string) []byte { return append(leb(uint64(len(s))), s...) }

// body is a function body without locals.
func body(code ...byte) []byte {
	b := append([]byte{0x00}, code...)
	return append(leb(uint64(len(b))), b...)
}

func module(sections ...[]byte) []byte {
	return append([]byte("\x00asm\x01\x00\x00\x00"), bytes.Join(sections, nil)...)
}

var (
	typeVoid = []byte{0x60, 0x00, 0x00}       // () -> ()
	typeI32  = []byte{0x60, 0x00, 0x01, 0x7f} // () -> i32
)

// spinner has one export, "spin", that loops forever, and "count", which
// returns global 0, incremented by every iteration of spin.
func spinner() []byte {
	return module(
		sec(1, vec(typeVoid, typeI32)),
		sec(3, vec([]byte{0}, []byte{1})),
		sec(6, vec([]byte{0x7f, 0x01, 0x41, 0x00, 0x0b})),
		sec(7, vec(append(name("spin"), 0x00, 0x00), append(name("count"), 0x00, 0x01))),
		sec(10, vec(
			// loop; global.get 0; i32.const 1; i32.add; global.set 0; br 0; end; end
			body(0x03, 0x40, 0x23, 0x00, 0x41, 0x01, 0x6a, 0x24, 0x00, 0x0c, 0x00, 0x0b, 0x0b),
			body(0x23, 0x00, 0x0b),
		)),
	)
}

func TestInstrumentExactBytes(t *testing.T) {
	got, err := stopflag.Instrument(spinner())
	if err != nil {
		t.Fatal(err)
	}
	check := []byte{
		0x23, 0x02, 0x41, 0x01, 0x6b, 0x24, 0x02, // fuel--
		0x23, 0x02, 0x45, 0x04, 0x40, // if fuel == 0
		0x41, 0x80, 0x08, 0x24, 0x02, // fuel = 1024
		0x41, 0x00, 0x40, 0x00, 0x1a, // memory.grow 0
		0x23, 0x01, 0x04, 0x40, 0x00, 0x0b, // if flag: unreachable
		0x0b,
	}
	want := module(
		sec(1, vec(typeVoid, typeI32)),
		sec(3, vec([]byte{0}, []byte{1})),
		sec(5, vec([]byte{0x01, 0x00, 0x00})),
		sec(6, vec(
			[]byte{0x7f, 0x01, 0x41, 0x00, 0x0b},
			[]byte{0x7f, 0x01, 0x41, 0x00, 0x0b},
			[]byte{0x7f, 0x01, 0x41, 0x80, 0x08, 0x0b},
		)),
		sec(7, vec(append(name("spin"), 0x00, 0x00), append(name("count"), 0x00, 0x01), append(name(stopflag.Export), 0x03, 0x01))),
		sec(10, vec(
			body(append(append([]byte{0x03, 0x40}, check...), 0x23, 0x00, 0x41, 0x01, 0x6a, 0x24, 0x00, 0x0c, 0x00, 0x0b, 0x0b)...),
			body(0x23, 0x00, 0x0b),
		)),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("Instrument(spinner) =\n%x\nwant\n%x", got, want)
	}
}

// newRuntime returns a compiler runtime without wazero's runaway
// protection, closed when the test ends.
func newRuntime(t testing.TB) wazero.Runtime {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())
	t.Cleanup(func() { rt.Close(ctx) })
	return rt
}

func TestFlagStopsLoop(t *testing.T) {
	ctx := context.Background()
	bin, err := stopflag.Instrument(spinner())
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t)
	mod, err := rt.Instantiate(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	flag, ok := mod.ExportedGlobal(stopflag.Export).(api.MutableGlobal)
	if !ok || flag.Type() != api.ValueTypeI32 || flag.Get() != 0 {
		t.Fatalf("ExportedGlobal(%q) = %v; want a mutable i32 global holding 0", stopflag.Export, mod.ExportedGlobal(stopflag.Export))
	}
	done := make(chan error, 1)
	go func() {
		_, err := mod.ExportedFunction("spin").Call(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("spin returned %v before the flag was set", err)
	case <-time.After(50 * time.Millisecond):
	}
	// The loop leaves machine code often enough for the garbage collector
	// to stop the world: without that, runtime.GC would never return.
	gc := make(chan struct{})
	go func() {
		runtime.GC()
		close(gc)
	}()
	select {
	case <-gc:
	case <-time.After(10 * time.Second):
		t.Fatal("runtime.GC blocked for 10s by a spinning guest")
	}
	flag.Set(1)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("spin after the flag was set = %v; want an unreachable trap", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("spin still runs 5s after the flag was set")
	}
	// The loop ran: the instrumentation did not break it.
	n, err := mod.ExportedFunction("count").Call(ctx)
	if err != nil || n[0] < 1000 {
		t.Fatalf("count() = %v, %v; want at least 1000 iterations", n, err)
	}
}

// TestIndicesKept instruments a module that imports a global and has no
// global or export section: the flag is appended after the imported
// global, and the imported global keeps its index.
func TestIndicesKept(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t)
	// Module "env" exports an immutable i32 global holding 42.
	env := module(
		sec(6, vec([]byte{0x7f, 0x00, 0x41, 42, 0x0b})),
		sec(7, vec(append(name("g"), 0x03, 0x00))),
	)
	if _, err := rt.InstantiateWithConfig(ctx, env, wazero.NewModuleConfig().WithName("env")); err != nil {
		t.Fatal(err)
	}
	// Function 0 loops once and returns the imported global; the module
	// has no memory, no global and no export section.
	bin := module(
		sec(1, vec(typeI32)),
		sec(2, vec(append(append(name("env"), name("g")...), 0x03, 0x7f, 0x00))),
		sec(3, vec([]byte{0})),
		sec(10, vec(body(0x03, 0x40, 0x0b, 0x23, 0x00, 0x0b))),
	)
	out, err := stopflag.Instrument(bin)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := rt.Instantiate(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if g := mod.ExportedGlobal(stopflag.Export); g == nil || g.Get() != 0 {
		t.Fatalf("ExportedGlobal(%q) = %v; want a global holding 0", stopflag.Export, g)
	}
	// The flag is global 1 and the fuel global 2; the import keeps 0.
	if !bytes.Contains(out, []byte{0x03, 0x40, 0x23, 0x02, 0x41, 0x01, 0x6b}) ||
		!bytes.Contains(out, []byte{0x1a, 0x23, 0x01, 0x04, 0x40, 0x00, 0x0b, 0x0b, 0x0b, 0x23, 0x00, 0x0b}) {
		t.Fatalf("instrumented code does not use globals 1 and 2: %x", out)
	}
}

// TestStartSectionBecomesExport checks that the start function does not run
// at instantiation (where no flag could stop it) but is exported.
func TestStartSectionBecomesExport(t *testing.T) {
	ctx := context.Background()
	bin := module(
		sec(1, vec(typeVoid, typeI32)),
		sec(3, vec([]byte{0}, []byte{1})),
		sec(6, vec([]byte{0x7f, 0x01, 0x41, 0x00, 0x0b})),
		sec(7, vec(append(name("get"), 0x00, 0x01))),
		sec(8, leb(0)),
		sec(10, vec(
			body(0x41, 0x07, 0x24, 0x00, 0x0b), // global 0 = 7
			body(0x23, 0x00, 0x0b),
		)),
	)
	out, err := stopflag.Instrument(bin)
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(t)
	mod, err := rt.Instantiate(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := mod.ExportedFunction("get").Call(ctx); r[0] != 0 {
		t.Fatalf("get() before %s = %d; want 0 (the start function must not run at instantiation)", stopflag.StartExport, r[0])
	}
	if _, err := mod.ExportedFunction(stopflag.StartExport).Call(ctx); err != nil {
		t.Fatalf("%s() = %v", stopflag.StartExport, err)
	}
	if r, _ := mod.ExportedFunction("get").Call(ctx); r[0] != 7 {
		t.Fatalf("get() after %s = %d; want 7", stopflag.StartExport, r[0])
	}
}

func TestInstrumentRefuses(t *testing.T) {
	valid := spinner()
	tests := []struct {
		name string
		bin  []byte
		want error
	}{
		{"empty", nil, stopflag.ErrMalformed},
		{"not wasm", []byte("\x7fELF\x02\x01\x01\x00"), stopflag.ErrMalformed},
		{"truncated", valid[:len(valid)-3], stopflag.ErrMalformed},
		{"sections out of order", module(sec(3, vec()), sec(1, vec())), stopflag.ErrMalformed},
		{"already instrumented", mustInstrument(t, valid), stopflag.ErrUnsupported},
		{"tail call", module(
			sec(1, vec(typeVoid)),
			sec(3, vec([]byte{0})),
			sec(10, vec(body(0x12, 0x00, 0x0b))), // return_call 0
		), stopflag.ErrUnsupported},
		{"atomics", module(
			sec(1, vec(typeVoid)),
			sec(3, vec([]byte{0})),
			sec(10, vec(body(0xfe, 0x03, 0x00, 0x0b))), // atomic.fence
		), stopflag.ErrUnsupported},
		{"body ends inside a block", module(
			sec(1, vec(typeVoid)),
			sec(3, vec([]byte{0})),
			sec(10, vec(body(0x03, 0x40, 0x0b))),
		), stopflag.ErrMalformed},
		{"bytes after the body", module(
			sec(1, vec(typeVoid)),
			sec(3, vec([]byte{0})),
			sec(10, vec(body(0x0b, 0x01))),
		), stopflag.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := stopflag.Instrument(tt.bin)
			if !errors.Is(err, tt.want) || out != nil {
				t.Fatalf("Instrument() = %d bytes, %v; want %v", len(out), err, tt.want)
			}
		})
	}
}

func mustInstrument(t testing.TB, bin []byte) []byte {
	t.Helper()
	out, err := stopflag.Instrument(bin)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// guest builds a guest module of this repository.
func guest(t testing.TB, pkg string) []byte {
	t.Helper()
	b, err := guestbuild.Bytes(pkg, "")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var guests = []string{
	"./internal/testguests/echo",
	"./examples/pricing/guests/v1",
	"./examples/pricing/guests/v2",
	"./examples/pricing/guests/broken/loopcall",
	"./examples/pricing/guests/broken/loopinit",
	"./examples/pricing/guests/broken/membomb",
	"./examples/pricing/guests/broken/trapcall",
}

// TestGuests instruments the Go guests of this repository, compiles the
// result and checks that only the code, global and export sections changed,
// the code by one check per loop.
func TestGuests(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t)
	for _, pkg := range guests {
		t.Run(filepath.Base(pkg), func(t *testing.T) {
			bin := guest(t, pkg)
			start := time.Now()
			out := mustInstrument(t, bin)
			elapsed := time.Since(start)
			if _, err := rt.CompileModule(ctx, out); err != nil {
				t.Fatalf("CompileModule(instrumented) = %v", err)
			}
			in, got := sections(t, bin), sections(t, out)
			if len(in) != len(got) { // Go guests have a memory: none added
				t.Fatalf("%d sections instrumented; want %d", len(got), len(in))
			}
			for i := range in {
				if in[i].id != got[i].id {
					t.Fatalf("section %d has id %d; want %d", i, got[i].id, in[i].id)
				}
				switch in[i].id {
				case 6, 7:
				case 10:
					if grow := len(got[i].body) - len(in[i].body); grow <= 0 {
						t.Fatalf("code section grew by %d bytes; want checks inserted", grow)
					}
				default:
					if !bytes.Equal(in[i].body, got[i].body) {
						t.Fatalf("section %d (id %d) changed", i, in[i].id)
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

// FuzzInstrument checks that Instrument never panics, and that whenever
// the input compiles, an instrumented result compiles too and exports the
// flag.
func FuzzInstrument(f *testing.F) {
	f.Add(spinner())
	f.Add(module())
	f.Add(module(sec(1, vec(typeVoid)), sec(3, vec([]byte{0})), sec(8, leb(0)), sec(10, vec(body(0x0b)))))
	if !testing.Short() {
		f.Add(guest(f, "./examples/pricing/guests/broken/loopcall"))
	}
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer rt.Close(ctx)
	f.Fuzz(func(t *testing.T, bin []byte) {
		out, err := stopflag.Instrument(bin)
		if err != nil {
			if out != nil {
				t.Fatalf("Instrument() = %d bytes and %v; want no bytes with an error", len(out), err)
			}
			return
		}
		if !plausible(bin) {
			return
		}
		cm, err := rt.CompileModule(ctx, bin)
		if err != nil {
			return
		}
		cm.Close(ctx)
		cm, err = rt.CompileModule(ctx, out)
		if err != nil {
			t.Fatalf("input compiles but the instrumented module does not: %v", err)
		}
		cm.Close(ctx)
	})
}

// plausible reports whether every vector section of the (instrumentable,
// so well-framed) module bin has no more entries than bytes. wazero
// allocates a vector's entries before reading them, so a few bytes claiming
// hundreds of millions of tables make it allocate gigabytes and the fuzzer
// kill the worker; such modules are malformed anyway.
func plausible(bin []byte) bool {
	for b := bin[8:]; len(b) > 0; {
		size, n := binary.Uvarint(b[1:])
		body := b[1+n : 1+n+int(size)]
		if id := b[0]; id != 0 && id != 8 && id != 12 {
			if count, m := binary.Uvarint(body); m <= 0 || count > uint64(len(body)) {
				return false
			}
		}
		b = b[1+n+int(size):]
	}
	return true
}
