package wasm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental"

	"github.com/hotswapgo/hotswap/module"
)

// Backend runs WebAssembly modules on wazero. It is safe for concurrent use.
type Backend struct {
	opts  Options
	log   *slog.Logger
	cache wazero.CompilationCache

	mu     sync.Mutex // protects hosts, closed
	hosts  map[string]*moduleHost
	closed bool
}

var _ module.Backend = (*Backend)(nil)

// New returns a Backend. It checks every module configuration now.
func New(opts Options) (*Backend, error) {
	if _, err := opts.Default.withDefaults(); err != nil {
		return nil, fmt.Errorf("wasm: default module config: %w", err)
	}
	for name, c := range opts.Modules {
		if _, err := c.withDefaults(); err != nil {
			return nil, fmt.Errorf("wasm: module %q config: %w", name, err)
		}
	}
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir()
	}
	cache, err := wazero.NewCompilationCacheWithDir(opts.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("wasm: compilation cache %s: %w", opts.CacheDir, err)
	}
	b := &Backend{opts: opts, log: opts.Logger, cache: cache, hosts: make(map[string]*moduleHost)}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	return b, nil
}

func (b *Backend) host(ctx context.Context, name string, state *module.KV) (*moduleHost, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, module.ErrClosed
	}
	if h := b.hosts[name]; h != nil {
		if h.state != state {
			return nil, fmt.Errorf("module %q is already bound to another registry's state", name)
		}
		return h, nil
	}
	cfg, ok := b.opts.Modules[name]
	if !ok {
		cfg = b.opts.Default
	}
	cfg, _ = cfg.withDefaults() // checked in New
	h, err := newModuleHost(ctx, name, cfg, state, b.cache, b.log)
	if err != nil {
		return nil, err
	}
	b.hosts[name] = h
	return h, nil
}

// Prepare compiles spec.Artifact (from the compilation cache when it was
// compiled before), validates it and pre-warms its instances:
//
//   - the exports of the guest ABI are present with the right types, and
//     the module is a reactor (built with -buildmode=c-shared);
//   - it imports only host functions it was granted;
//   - it initializes within InitTimeout and memory limits;
//   - it speaks ABI major ABIMajor;
//   - it registers every RequiredHandlers entry;
//   - its self-test, if any, passes.
//
// Each failure is a *module.LoadError naming the check.
func (b *Backend) Prepare(ctx context.Context, spec module.Spec) (module.Code, error) {
	start := time.Now()
	h, err := b.host(ctx, spec.Module, spec.State)
	if err != nil {
		return nil, err
	}
	cctx := experimental.WithCompilationWorkers(ctx, procs())

	digest := spec.Digest
	if digest == "" {
		sum := sha256.Sum256(spec.Artifact)
		digest = hex.EncodeToString(sum[:])
	}
	var (
		validation, serving wazero.CompiledModule
		release             func()
		rt                  = h.fast // what validation runs in
	)
	if h.cfg.Trusted {
		// Served as compiled; validated in the guarded runtime. Both
		// compile at once.
		var (
			releaseServing, releaseValidation func()
			servingErr                        error
			wg                                sync.WaitGroup
		)
		wg.Go(func() { serving, releaseServing, servingErr = h.compile(cctx, plain, digest, spec.Artifact) })
		validation, releaseValidation, err = h.compile(cctx, guarded, digest, spec.Artifact)
		wg.Wait()
		release = func() {
			for _, r := range []func(){releaseServing, releaseValidation} {
				if r != nil {
					r()
				}
			}
		}
		if err == nil {
			err = servingErr
		}
		rt = h.guarded
	} else {
		// Instrumented with a stop flag, which protects validation and
		// calls alike.
		validation, release, err = h.compile(cctx, stopFlag, digest, spec.Artifact)
		serving = validation
	}
	if err != nil {
		if release != nil {
			release()
		}
		return nil, module.Reject("compile", fmt.Errorf("%w: %v", module.ErrInvalidModule, err))
	}
	if err := checkExports(validation); err != nil {
		release()
		return nil, err
	}
	if err := h.checkImports(validation); err != nil {
		release()
		return nil, err
	}

	c, err := b.validate(ctx, h, rt, validation, spec)
	if err != nil {
		release()
		return nil, err
	}
	c.release = release
	c.serving = serving
	c.bg = context.Background()
	untrusted := !h.cfg.Trusted
	c.pool = newPool(h, h.fast, serving, untrusted)
	warm := min(max(h.cfg.MinInstances, spec.Warm), h.cfg.MaxInstances)
	if untrusted {
		warm-- // the validation instance joins the pool after Migrate
		c.wd = startWatchdog(c.pool, h.cfg.CallTimeout)
	}
	if err := c.pool.warm(ctx, warm); err != nil {
		c.Close(ctx)
		return nil, module.Reject("prewarm", loadFailure(err))
	}
	c.prepared = time.Since(start)
	return c, nil
}

func checkExports(cm wazero.CompiledModule) error {
	exports := cm.ExportedFunctions()
	if _, ok := exports[exportInit]; !ok {
		if _, cmd := exports["_start"]; cmd {
			return module.Reject("exports", fmt.Errorf("%w: the module is a WASI command; build it as a reactor with -buildmode=c-shared", module.ErrMissingExport))
		}
	}
	for name, want := range requiredExports {
		def, ok := exports[name]
		if !ok {
			return module.Reject("exports", fmt.Errorf("%w: %s (is the module built with the hotswap guest SDK?)", module.ErrMissingExport, name))
		}
		if !sameTypes(def.ParamTypes(), want.params) || !sameTypes(def.ResultTypes(), want.results) {
			return module.Reject("exports", fmt.Errorf("%w: %s has type %s, want %s", module.ErrMissingExport, name,
				formatSig(def.ParamTypes(), def.ResultTypes()), formatSig(want.params, want.results)))
		}
	}
	return nil
}

// validate instantiates the module under runaway protection (cm is
// guarded or instrumented with a stop flag) and runs the checks that need a
// live instance. The instance is kept for Migrate.
func (b *Backend) validate(ctx context.Context, h *moduleHost, rt wazero.Runtime, cm wazero.CompiledModule, spec module.Spec) (*code, error) {
	ictx, cancel := context.WithTimeout(ctx, h.cfg.InitTimeout)
	defer cancel()
	inst, err := newInstance(ictx, h, rt, cm, !h.cfg.Trusted)
	if err != nil {
		return nil, module.Reject("init", initFailure(err))
	}
	c := &code{host: h, cfg: &h.cfg, version: spec.Version, validator: inst}
	fail := func(check string, err error) (*code, error) {
		inst.close()
		return nil, module.Reject(check, err)
	}

	abi, err := inst.invoke(ictx, inst.mod.ExportedFunction(exportABIVersion))
	if err != nil {
		return fail("abi", loadFailure(err))
	}
	if major := uint32(abi) >> 16; major != ABIMajor {
		return fail("abi", fmt.Errorf("%w: the module speaks ABI %d.%d; this host speaks %d.x", module.ErrABIMismatch,
			major, uint32(abi)&0xffff, ABIMajor))
	}

	r, err := inst.invoke(ictx, inst.mod.ExportedFunction(exportHandlers))
	if err != nil {
		return fail("exports", loadFailure(err))
	}
	list, err := inst.result(r)
	if err != nil {
		return fail("exports", err)
	}
	c.handlers = make(map[string]uint32)
	if len(list) > 0 {
		c.names = strings.Split(string(list), "\n")
	}
	for i, name := range c.names {
		c.handlers[name] = uint32(i)
	}
	for _, name := range h.cfg.RequiredHandlers {
		if _, ok := c.handlers[name]; !ok {
			return fail("exports", fmt.Errorf("%w: handler %q is required but the module registers only [%s]",
				module.ErrMissingExport, name, strings.Join(c.names, ", ")))
		}
	}

	r, err = inst.invoke(ictx, inst.mod.ExportedFunction(exportSelfTest))
	if err != nil {
		return fail("selftest", loadFailure(err))
	}
	if _, err := inst.result(r); err != nil {
		return fail("selftest", fmt.Errorf("%w: %v", module.ErrSelfTestFailed, err))
	}
	return c, nil
}

// initFailure names an initialization failure: a trap or exit during
// _initialize is ErrInitFailed, unless it was a timeout or memory limit.
func initFailure(err error) error {
	err = loadFailure(err)
	if errors.Is(err, module.ErrTrapped) {
		return fmt.Errorf("%w: %v", module.ErrInitFailed, err)
	}
	return err
}

// Close closes every runtime. Versions must be closed first (the registry
// does that).
func (b *Backend) Close(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	for _, h := range b.hosts {
		h.close(ctx)
	}
	return b.cache.Close(ctx)
}

func procs() int { return runtime.GOMAXPROCS(0) }
