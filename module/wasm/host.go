package wasm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm/internal/guard"
)

// hostFunc is one host function and the capability that grants it.
type hostFunc struct {
	name    string
	cap     Capability // "" means always granted
	params  []api.ValueType
	results []api.ValueType
	fn      func(*moduleHost, context.Context, api.Module, []uint64)
}

var hostFuncs = []hostFunc{
	{"log", "", []api.ValueType{i32, i32, i32}, nil, (*moduleHost).hostLog},
	{"kv_get", CapKV, []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i64}, (*moduleHost).kvGet},
	{"kv_set", CapKV, []api.ValueType{i32, i32, i32, i32}, nil, (*moduleHost).kvSet},
	{"kv_delete", CapKV, []api.ValueType{i32, i32}, nil, (*moduleHost).kvDelete},
	{"kv_add", CapKV, []api.ValueType{i32, i32, i64}, []api.ValueType{i64}, (*moduleHost).kvAdd},
}

// moduleHost is what one named module runs in: its runtime, bound to its
// configuration and state. Versions of the module share it, so compiled
// code and host state outlive any one version.
type moduleHost struct {
	name     string
	cfg      ModuleConfig
	state    *module.KV
	log      *slog.Logger
	compiler *compiler

	// rt runs every version of the module. It has no runtime-wide runaway
	// protection: the instrumentation (package guard) gives each instance
	// a stop flag, which also keeps the Go garbage collector able to stop
	// the world.
	rt wazero.Runtime
	// wasi holds the signatures of the WASI functions rt provides.
	wasi map[string]guard.FuncType

	logs logBucket

	mu       sync.Mutex // protects compiled
	compiled map[string]*compiledModule
}

// compiledModule is compiled code shared by the versions made from the same
// artifact, closed when the last of them is. wazero decodes and validates a
// whole binary on every CompileModule, even when its own caches hold the
// machine code, so swapping back to a version still loaded (the previous
// one) would otherwise pay that again, instrument it again and keep a
// second decoded copy.
type compiledModule struct {
	cm wazero.CompiledModule
	// tables is the table entries an instance starts with; growsTables
	// reports that it may add more with table.grow.
	tables      uint64
	growsTables bool

	// Guarded by moduleHost.mu.
	refs int
	// created lists the files this compile added to the compilation cache;
	// kept reports that a version made from it was accepted. When the last
	// version closes and none was, the files are removed: a refused module
	// leaves no compiled code behind.
	created []string
	kept    bool
}

func newModuleHost(ctx context.Context, name string, cfg ModuleConfig, state *module.KV, cache wazero.CompilationCache,
	c *compiler, log *slog.Logger) (*moduleHost, error) {
	h := &moduleHost{name: name, cfg: cfg, state: state, log: log.With(logkey.Module, name), compiler: c,
		compiled: make(map[string]*compiledModule)}
	h.logs.init(cfg.LogLimit)
	rcfg := wazero.NewRuntimeConfigCompiler().
		WithCompilationCache(cache).
		WithDebugInfoEnabled(false).
		WithMemoryLimitPages(uint32(cfg.MemoryLimit >> 16))
	h.rt = wazero.NewRuntimeWithConfig(ctx, rcfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, h.rt); err != nil {
		h.rt.Close(ctx)
		return nil, fmt.Errorf("instantiate WASI: %w", err)
	}
	h.wasi = make(map[string]guard.FuncType)
	for name, def := range h.rt.Module(wasi_snapshot_preview1.ModuleName).ExportedFunctionDefinitions() {
		h.wasi[name] = signatureOf(def.ParamTypes(), def.ResultTypes())
	}
	b := h.rt.NewHostModuleBuilder(hostModule)
	for _, f := range hostFuncs {
		if f.cap == "" || h.cfg.granted(f.cap) {
			fn := f.fn
			bound := func(ctx context.Context, m api.Module, s []uint64) { fn(h, ctx, m, s) }
			b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(bound), f.params, f.results).Export(f.name)
		}
	}
	if _, err := b.Instantiate(ctx); err != nil {
		h.rt.Close(ctx)
		return nil, fmt.Errorf("instantiate host module: %w", err)
	}
	return h, nil
}

// compile returns the compiled code of bin, reusing it when a live version
// has it, and the function that releases it; keep reports that the version
// was accepted. Before wazero sees bin, it is checked (package guard) within
// the module's limits, its exports and imports are checked against the
// guest ABI and the grants, and it is instrumented; every failure is a
// *module.LoadError naming the check.
func (h *moduleHost) compile(ctx context.Context, digest string, bin []byte) (*compiledModule, func(keep bool), error) {
	h.mu.Lock()
	c := h.compiled[digest]
	if c != nil {
		c.refs++
	}
	h.mu.Unlock()
	if c == nil {
		m, err := h.check(bin)
		if err != nil {
			return nil, nil, err
		}
		out, err := m.Instrument(guard.Config{MaxStack: h.cfg.MaxStack, MaxTableEntries: h.cfg.MaxTableEntries})
		if err != nil {
			return nil, nil, module.Reject("validate", fmt.Errorf("%w: %v", module.ErrInvalidModule, err))
		}
		cm, created, err := h.compiler.compile(ctx, h.rt, out)
		switch {
		case err != nil && ctx.Err() != nil: // wazero stops compiling functions when ctx ends
			return nil, nil, module.Reject("compile", fmt.Errorf("compile aborted: %w", ctx.Err()))
		case err != nil:
			return nil, nil, module.Reject("compile", fmt.Errorf("%w: %v", module.ErrInvalidModule, err))
		}
		h.mu.Lock()
		if c = h.compiled[digest]; c != nil { // compiled concurrently: keep one
			c.refs++
			cm.Close(context.Background())
		} else {
			c = &compiledModule{cm: cm, tables: m.TableEntries(), growsTables: m.GrowsTables(), refs: 1, created: created}
			h.compiled[digest] = c
		}
		h.mu.Unlock()
	}
	var once sync.Once
	release := func(keep bool) {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			c.kept = c.kept || keep
			if c.refs--; c.refs > 0 {
				return
			}
			delete(h.compiled, digest)
			c.cm.Close(context.Background())
			if !c.kept {
				h.compiler.remove(c.created)
			}
		})
	}
	return c, release, nil
}

// check parses bin within the module's limits and checks it against the
// guest ABI and the module's grants, before anything compiles it.
func (h *moduleHost) check(bin []byte) (*guard.Module, error) {
	lim := h.cfg.Limits
	m, err := guard.Parse(bin, guard.Limits{
		ModuleBytes: lim.ModuleBytes, Types: lim.Types, Params: lim.Params, Functions: lim.Functions,
		Imports: lim.Imports, Exports: lim.Exports, Globals: lim.Globals, Tables: lim.Tables,
		TableEntries: h.cfg.MaxTableEntries, MemoryPages: uint32(h.cfg.MemoryLimit >> 16),
		DataSegments: lim.DataSegments, ElementSegments: lim.ElementSegments, Locals: lim.Locals,
		BodyBytes: lim.BodyBytes, Nesting: lim.Nesting,
	})
	switch {
	case err == nil:
	case errors.Is(err, guard.ErrLimit):
		return nil, module.Reject("limits", fmt.Errorf("%w: %v", module.ErrLimitExceeded, err))
	default:
		return nil, module.Reject("validate", fmt.Errorf("%w: %v", module.ErrInvalidModule, err))
	}
	if err := checkExports(m); err != nil {
		return nil, err
	}
	if err := h.checkImports(m); err != nil {
		return nil, err
	}
	return m, nil
}

// checkImports refuses a module that imports what it was not granted.
func (h *moduleHost) checkImports(m *guard.Module) error {
	for _, imp := range m.Imports() {
		if imp.Kind != guard.KindFunc {
			return module.Reject("capabilities", fmt.Errorf("%w: imports %s %s.%s; only functions are provided",
				module.ErrCapabilityDenied, imp.Kind, imp.Module, imp.Name))
		}
		var want guard.FuncType
		switch imp.Module {
		case wasi_snapshot_preview1.ModuleName:
			t, ok := h.wasi[imp.Name]
			if !ok {
				return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s, which WASI does not define",
					module.ErrCapabilityDenied, imp.Module, imp.Name))
			}
			want = t
		case hostModule:
			f, ok := lookupHostFunc(imp.Name)
			if !ok {
				return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s, which this host does not provide",
					module.ErrCapabilityDenied, imp.Module, imp.Name))
			}
			if f.cap != "" && !h.cfg.granted(f.cap) {
				return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s, which needs capability %q",
					module.ErrCapabilityDenied, imp.Module, imp.Name, f.cap))
			}
			want = signatureOf(f.params, f.results)
		default:
			return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s; only %s and %s are provided",
				module.ErrCapabilityDenied, imp.Module, imp.Name, hostModule, wasi_snapshot_preview1.ModuleName))
		}
		if !imp.Type.Equal(want) {
			return module.Reject("capabilities", fmt.Errorf("%w: import %s.%s has type %s, want %s",
				module.ErrMissingExport, imp.Module, imp.Name, imp.Type, want))
		}
	}
	return nil
}

func lookupHostFunc(name string) (hostFunc, bool) {
	for _, f := range hostFuncs {
		if f.name == name {
			return f, true
		}
	}
	return hostFunc{}, false
}

// instanceConfig grants the WASI side of the module's capabilities: no
// files, no environment, no arguments; real clocks, sleeping and
// randomness only when granted.
func (h *moduleHost) instanceConfig(out io.Writer) wazero.ModuleConfig {
	c := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions(). // the instrumentation removed the start section; _initialize runs in newInstance
		WithStdout(out).
		WithStderr(out)
	if h.cfg.granted(CapClock) {
		c = c.WithSysWalltime().WithSysNanotime().WithNanosleep(sleepSlice)
	}
	if h.cfg.granted(CapRandom) {
		c = c.WithRandSource(rand.Reader)
	}
	return c
}

// maxSleep bounds one sleep of a guest: a call asleep in the host cannot be
// stopped until it returns to its code.
const maxSleep = 10 * time.Millisecond

func sleepSlice(ns int64) { time.Sleep(min(time.Duration(ns), maxSleep)) }

func (h *moduleHost) close(ctx context.Context) { h.rt.Close(ctx) }

// Host functions. A bad pointer from the guest traps the call, as a wasm
// out-of-bounds access would.

func read(m api.Module, ptr, n uint64) []byte {
	b, ok := m.Memory().Read(uint32(ptr), uint32(n))
	if !ok {
		panic(fmt.Errorf("host function read out of bounds: %d+%d", uint32(ptr), uint32(n)))
	}
	return b
}

// maxLogLine caps the bytes of one guest log line.
const maxLogLine = 4 << 10

func (h *moduleHost) hostLog(ctx context.Context, m api.Module, s []uint64) {
	msg := read(m, s[1], s[2]) // a view of guest memory: copied below, capped
	if !h.logs.take() {
		if st, ok := ctx.Value(logStatsKey{}).(*logStats); ok {
			st.dropped.Add(1)
		}
		if n := h.logs.droppedSinceWarning(); n > 0 {
			h.log.Warn("guest log lines dropped by the rate limit", "dropped", n, "limit_per_second", h.cfg.LogLimit)
		}
		return
	}
	if len(msg) > maxLogLine {
		msg = msg[:maxLogLine]
	}
	h.log.Log(ctx, slog.Level(int32(s[0])), strings.TrimRight(string(msg), "\n"), "source", "guest")
}

func (h *moduleHost) kvGet(_ context.Context, m api.Module, s []uint64) {
	key := read(m, s[0], s[1])
	v, ok := h.state.Get(string(key))
	if !ok {
		s[0] = api.EncodeI64(-1)
		return
	}
	if len(v) <= int(uint32(s[3])) && !m.Memory().Write(uint32(s[2]), v) {
		panic(fmt.Errorf("kv_get: value buffer out of bounds"))
	}
	s[0] = api.EncodeI64(int64(len(v)))
}

func (h *moduleHost) kvSet(_ context.Context, m api.Module, s []uint64) {
	h.state.Set(string(read(m, s[0], s[1])), read(m, s[2], s[3]))
}

func (h *moduleHost) kvDelete(_ context.Context, m api.Module, s []uint64) {
	h.state.Delete(string(read(m, s[0], s[1])))
}

func (h *moduleHost) kvAdd(_ context.Context, m api.Module, s []uint64) {
	n := h.state.Add(string(read(m, s[0], s[1])), int64(s[2]))
	s[0] = api.EncodeI64(n)
}

// logStats counts what one version's guests logged; calls carry it in their
// context (see code.bg).
type logStats struct{ dropped atomic.Uint64 }

type logStatsKey struct{}

// logBucket is a token bucket limiting a module's log lines: rate tokens a
// second, at most rate in the bucket.
type logBucket struct {
	mu      sync.Mutex // protects every field below
	rate    float64
	tokens  float64
	last    time.Time
	dropped uint64    // lines dropped since the last warning
	warned  time.Time // when the last warning was logged
}

func (b *logBucket) init(rate int) {
	b.rate, b.tokens, b.last = float64(rate), float64(rate), time.Now()
}

// take takes a token, reporting whether there was one.
func (b *logBucket) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.tokens = min(b.rate, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	b.dropped++
	return false
}

// droppedSinceWarning returns the lines dropped since the last warning when
// a warning is due (one a second at most), else 0.
func (b *logBucket) droppedSinceWarning() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if time.Since(b.warned) < time.Second {
		return 0
	}
	n := b.dropped
	b.dropped, b.warned = 0, time.Now()
	return n
}

// output keeps the last lines a guest wrote to stdout and stderr, for the
// diagnostics of a trap. Go's runtime prints a panic or fatal error as its
// first line followed by a goroutine dump, so enough lines are kept to reach
// back to it. What a guest writes is only ever shown, never interpreted.
type output struct {
	mu      sync.Mutex // protects lines, partial
	lines   []string   // ring of the last maxLines complete lines
	next    int
	partial []byte
}

const (
	maxLines   = 256
	maxLineLen = 256
)

func (o *output) Write(p []byte) (int, error) {
	n := len(p)
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			o.partial = appendCapped(o.partial, p)
			break
		}
		o.partial = appendCapped(o.partial, p[:i])
		o.push(string(o.partial))
		o.partial = o.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

func appendCapped(b, p []byte) []byte {
	return append(b, p[:min(len(p), max(0, maxLineLen-len(b)))]...)
}

func (o *output) push(line string) {
	if len(o.lines) < maxLines {
		o.lines = append(o.lines, line)
		return
	}
	o.lines[o.next] = line
	o.next = (o.next + 1) % maxLines
}

// summary returns the guest's last panic or fatal error message with the
// lines that follow it up to the goroutine dump, or else its last lines.
func (o *output) summary() string {
	o.mu.Lock()
	lines := append(append([]string(nil), o.lines[o.next:]...), o.lines[:o.next]...)
	if len(o.partial) > 0 {
		lines = append(lines, string(o.partial))
	}
	o.mu.Unlock()
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "panic: ") || strings.HasPrefix(lines[i], "fatal error: ") {
			msg := lines[i:]
			for j, l := range msg {
				if l == "" || strings.HasPrefix(l, "goroutine ") {
					msg = msg[:j]
					break
				}
			}
			return strings.Join(msg[:min(len(msg), 5)], "; ")
		}
	}
	return strings.Join(lines[max(0, len(lines)-5):], "; ")
}
