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
	opts     Options
	log      *slog.Logger
	cache    wazero.CompilationCache
	compiler *compiler

	mu     sync.Mutex // protects hosts, closed
	hosts  map[string]*moduleHost
	closed bool
}

var _ module.Backend = (*Backend)(nil)

// New returns a Backend. It checks every module configuration and the
// compilation cache directory now.
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
		dir, err := DefaultCacheDir()
		if err != nil {
			return nil, fmt.Errorf("wasm: %w", err)
		}
		opts.CacheDir = dir
	}
	cache, err := openCache(opts.CacheDir)
	if err != nil {
		return nil, fmt.Errorf("wasm: compilation cache %s: %w", opts.CacheDir, err)
	}
	b := &Backend{opts: opts, log: opts.Logger, cache: cache, hosts: make(map[string]*moduleHost)}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.compiler = &compiler{dir: opts.CacheDir, log: b.log}
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
	h, err := newModuleHost(ctx, name, cfg, state, b.cache, b.compiler, b.log)
	if err != nil {
		return nil, err
	}
	b.hosts[name] = h
	return h, nil
}

// Prepare checks spec.Artifact, compiles it (from the compilation cache
// when it was compiled before), validates it and pre-warms its instances.
// Before anything compiles it, in milliseconds and bounded memory:
//
//   - it is a well-formed module within the module's Limits, its memory
//     within MemoryLimit and its tables within MaxTableEntries ("limits",
//     "validate");
//   - the exports of the guest ABI are present with the right types, and
//     the module is a reactor (built with -buildmode=c-shared) ("exports");
//   - it imports only host functions it was granted ("capabilities").
//
// Then, each under InitTimeout:
//
//   - it initializes, start function included, within its limits ("init");
//   - it speaks ABI major ABIMajor ("abi");
//   - it registers every RequiredHandlers entry ("exports");
//   - its self-test, if any, passes ("selftest").
//
// Each failure is a *module.LoadError naming the check. A version refused
// after its compile removes what the compile added to the cache.
func (b *Backend) Prepare(ctx context.Context, spec module.Spec) (module.Code, error) {
	start := time.Now()
	h, err := b.host(ctx, spec.Module, spec.State)
	if err != nil {
		return nil, err
	}
	digest := spec.Digest
	if digest == "" {
		sum := sha256.Sum256(spec.Artifact)
		digest = hex.EncodeToString(sum[:])
	}
	cm, release, err := h.compile(experimental.WithCompilationWorkers(ctx, procs()), digest, spec.Artifact)
	if err != nil {
		return nil, err
	}
	logs := &logStats{}
	ctx = context.WithValue(ctx, logStatsKey{}, logs)
	c, err := b.validate(ctx, h, cm, spec)
	if err != nil {
		release(false)
		return nil, err
	}
	c.compiled, c.release, c.logs = cm, release, logs
	c.bg = context.WithValue(context.Background(), logStatsKey{}, logs)
	c.pool = newPool(h, cm, c.bg)
	if h.cfg.CallTimeout != NoCallTimeout {
		c.wd = startWatchdog(c.pool, h.cfg.CallTimeout)
	}
	// The validation instance joins the pool after Migrate.
	warm := min(max(h.cfg.MinInstances, spec.Warm), h.cfg.MaxInstances) - 1
	if err := c.pool.warm(ctx, warm); err != nil {
		c.Close(ctx)
		return nil, module.Reject("prewarm", loadFailure(err))
	}
	c.prepared = time.Since(start)
	return c, nil
}

// validate instantiates the module and runs the checks that need a live
// instance, each under InitTimeout. The instance is kept for Migrate.
func (b *Backend) validate(ctx context.Context, h *moduleHost, cm *compiledModule, spec module.Spec) (*code, error) {
	ictx, cancel := context.WithTimeout(ctx, h.cfg.InitTimeout)
	defer cancel()
	inst, err := newInstance(ictx, h, cm)
	if err != nil {
		return nil, module.Reject("init", initFailure(err))
	}
	c := &code{host: h, cfg: &h.cfg, version: spec.Version, validator: inst}
	fail := func(check string, err error) (*code, error) {
		inst.close()
		return nil, module.Reject(check, err)
	}
	// Each check has its own deadline.
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, h.cfg.InitTimeout) }

	sctx, scancel := step()
	abi, err := inst.invoke(sctx, inst.mod.ExportedFunction(exportABIVersion))
	scancel()
	if err != nil {
		return fail("abi", loadFailure(err))
	}
	if major := uint32(abi) >> 16; major != ABIMajor {
		return fail("abi", fmt.Errorf("%w: the module speaks ABI %d.%d; this host speaks %d.x", module.ErrABIMismatch,
			major, uint32(abi)&0xffff, ABIMajor))
	}

	sctx, scancel = step()
	r, err := inst.invoke(sctx, inst.mod.ExportedFunction(exportHandlers))
	scancel()
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

	sctx, scancel = step()
	r, err = inst.invoke(sctx, inst.mod.ExportedFunction(exportSelfTest))
	scancel()
	if err != nil {
		return fail("selftest", loadFailure(err))
	}
	if _, err := inst.result(r); err != nil {
		return fail("selftest", fmt.Errorf("%w: %v", module.ErrSelfTestFailed, err))
	}
	return c, nil
}

// initFailure names an initialization failure: a trap or exit during
// the start function or _initialize is ErrInitFailed, unless it was a
// timeout, a memory limit or a stack overflow.
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
