package wasm

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm/internal/stopflag"
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

// moduleHost is what one named module runs in: its runtimes, bound to its
// configuration and state. Versions of the module share it, so compiled
// code and host state outlive any one version.
type moduleHost struct {
	name  string
	cfg   ModuleConfig
	state *module.KV
	log   *slog.Logger

	// fast has no runtime-wide runaway protection. It serves every call:
	// trusted modules run their code as it is, untrusted ones run it
	// instrumented with a stop flag (see package stopflag), which also
	// protects their initialization, self-test and migrate hook.
	fast wazero.Runtime
	// guarded has wazero's runaway protection (WithCloseOnContextDone); it
	// runs the initialization, self-test and migrate hook of trusted
	// modules, and is nil for untrusted ones.
	guarded wazero.Runtime

	mu       sync.Mutex // protects compiled
	compiled map[compiledKey]*compiledModule
}

// variant is a way of compiling an artifact.
type variant uint8

const (
	// plain is the artifact as it is, in the fast runtime: trusted calls.
	plain variant = iota
	// guarded is the artifact in the guarded runtime: trusted validation.
	guarded
	// stopFlag is the artifact instrumented with a stop flag, in the fast
	// runtime: everything an untrusted module runs.
	stopFlag
)

// compiledKey names compiled code: how it was compiled and the artifact's
// digest.
type compiledKey struct {
	variant variant
	digest  string
}

// compiledModule is compiled code shared by the versions made from the same
// artifact, closed when the last of them is. wazero decodes and validates a
// whole binary on every CompileModule, even when its own caches hold the
// machine code, so swapping back to a version still loaded (the previous
// one) would otherwise pay that again and keep a second decoded copy (and,
// for the stopFlag variant, instrument it again).
type compiledModule struct {
	cm   wazero.CompiledModule
	refs int
}

// compile returns the compiled code of bin in variant v, reusing it when a
// live version has it, and the function that releases it.
func (h *moduleHost) compile(ctx context.Context, v variant, digest string, bin []byte) (wazero.CompiledModule, func(), error) {
	key := compiledKey{v, digest}
	rt := h.fast
	if v == guarded {
		rt = h.guarded
	}
	h.mu.Lock()
	c := h.compiled[key]
	if c != nil {
		c.refs++
	}
	h.mu.Unlock()
	if c == nil {
		if v == stopFlag {
			var err error
			if bin, err = stopflag.Instrument(bin); err != nil {
				return nil, nil, err
			}
		}
		cm, err := rt.CompileModule(ctx, bin)
		if err != nil {
			return nil, nil, err
		}
		h.mu.Lock()
		if c = h.compiled[key]; c != nil { // compiled concurrently: keep one
			c.refs++
			cm.Close(context.Background())
		} else {
			c = &compiledModule{cm: cm, refs: 1}
			h.compiled[key] = c
		}
		h.mu.Unlock()
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if c.refs--; c.refs == 0 {
				delete(h.compiled, key)
				c.cm.Close(context.Background())
			}
		})
	}
	return c.cm, release, nil
}

func newModuleHost(ctx context.Context, name string, cfg ModuleConfig, state *module.KV, cache wazero.CompilationCache, log *slog.Logger) (*moduleHost, error) {
	h := &moduleHost{name: name, cfg: cfg, state: state, log: log.With("module", name), compiled: make(map[compiledKey]*compiledModule)}
	var err error
	if h.fast, err = h.newRuntime(ctx, cache, false); err != nil {
		return nil, err
	}
	if cfg.Trusted {
		if h.guarded, err = h.newRuntime(ctx, cache, true); err != nil {
			h.fast.Close(ctx)
			return nil, err
		}
	}
	return h, nil
}

func (h *moduleHost) newRuntime(ctx context.Context, cache wazero.CompilationCache, guarded bool) (wazero.Runtime, error) {
	cfg := wazero.NewRuntimeConfigCompiler().
		WithCompilationCache(cache).
		WithCloseOnContextDone(guarded).
		WithMemoryLimitPages(uint32(h.cfg.MemoryLimit >> 16))
	r := wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r); err != nil {
		r.Close(ctx)
		return nil, fmt.Errorf("instantiate WASI: %w", err)
	}
	b := r.NewHostModuleBuilder(hostModule)
	for _, f := range hostFuncs {
		if f.cap == "" || h.cfg.granted(f.cap) {
			fn := f.fn
			bound := func(ctx context.Context, m api.Module, s []uint64) { fn(h, ctx, m, s) }
			b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(bound), f.params, f.results).Export(f.name)
		}
	}
	if _, err := b.Instantiate(ctx); err != nil {
		r.Close(ctx)
		return nil, fmt.Errorf("instantiate host module: %w", err)
	}
	return r, nil
}

// instanceConfig grants the WASI side of the module's capabilities: no
// files, no environment, no arguments; real clocks and randomness only when
// granted.
func (h *moduleHost) instanceConfig(out io.Writer) wazero.ModuleConfig {
	c := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions(). // _initialize runs under a deadline in newInstance
		WithStdout(out).
		WithStderr(out)
	if h.cfg.granted(CapClock) {
		c = c.WithSysWalltime().WithSysNanotime().WithSysNanosleep()
	}
	if h.cfg.granted(CapRandom) {
		c = c.WithRandSource(rand.Reader)
	}
	return c
}

// checkImports refuses a module that imports what it was not granted.
func (h *moduleHost) checkImports(cm wazero.CompiledModule) error {
	for _, def := range cm.ImportedFunctions() {
		mod, name, _ := def.Import()
		switch mod {
		case wasi_snapshot_preview1.ModuleName:
			continue
		case hostModule:
			f, ok := lookupHostFunc(name)
			if !ok {
				return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s, which this host does not provide", module.ErrCapabilityDenied, mod, name))
			}
			if f.cap != "" && !h.cfg.granted(f.cap) {
				return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s, which needs capability %q", module.ErrCapabilityDenied, mod, name, f.cap))
			}
			if !sameTypes(def.ParamTypes(), f.params) || !sameTypes(def.ResultTypes(), f.results) {
				return module.Reject("capabilities", fmt.Errorf("%w: import %s.%s has type %s, want %s", module.ErrMissingExport, mod, name,
					formatSig(def.ParamTypes(), def.ResultTypes()), formatSig(f.params, f.results)))
			}
		default:
			return module.Reject("capabilities", fmt.Errorf("%w: imports %s.%s; only %s and %s are provided", module.ErrCapabilityDenied,
				mod, name, hostModule, wasi_snapshot_preview1.ModuleName))
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

func (h *moduleHost) close(ctx context.Context) {
	h.fast.Close(ctx)
	if h.guarded != nil {
		h.guarded.Close(ctx)
	}
}

// Host functions. A bad pointer from the guest traps the call, as a wasm
// out-of-bounds access would.

func read(m api.Module, ptr, n uint64) []byte {
	b, ok := m.Memory().Read(uint32(ptr), uint32(n))
	if !ok {
		panic(fmt.Errorf("host function read out of bounds: %d+%d", uint32(ptr), uint32(n)))
	}
	return b
}

func (h *moduleHost) hostLog(ctx context.Context, m api.Module, s []uint64) {
	msg := read(m, s[1], s[2])
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

// output keeps the last lines a guest wrote to stdout and stderr, for the
// diagnostics of a trap. Go's runtime prints a panic or fatal error as its
// first line followed by a goroutine dump, so enough lines are kept to reach
// back to it.
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
