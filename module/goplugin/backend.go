package goplugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"plugin"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// PluginABI is the version of the protocol between this package and the
// code `hotswap build --plugin` adds to a plugin. A plugin that speaks
// another is refused.
const PluginABI = 1

// Backend runs Go plugins built by Build (`hotswap build --plugin`). It is
// safe for concurrent use.
//
// Before it opens a plugin it compares the plugin's build (Go version,
// build settings, module versions and sums, package fingerprints) with the
// running host's and refuses the first difference, because a failed
// plugin.Open cannot be retried in the same process. It opens each plugin
// from a unique copy, and never twice: a version loaded again from the same
// bytes reuses the plugin already open. Plugins are never unloaded; see
// Retained and Options.MaxRetained.
type Backend struct {
	opts Options
	log  *slog.Logger
	host *identity
	run  string // this process's directory of plugin copies, under opts.Dir

	mu     sync.Mutex          // protects mine, closed
	mine   map[string]*library // the plugins this backend loaded, by digest
	closed bool
}

var (
	_ module.Backend  = (*Backend)(nil)
	_ module.Retainer = (*Backend)(nil)
)

// opened mirrors the runtime's own table of plugins, which is one per
// process: a plugin opened by any Backend can be opened by no other, and
// the packages it brought in bind every later plugin. It is the one
// package-level variable here because the state it mirrors is global.
var opened = struct {
	mu     sync.Mutex          // protects libs, paths, hashes, seq; held across an open so the checks and the open agree
	libs   map[string]*library // by artifact digest
	paths  map[string]string   // plugin path (main package) -> digest
	hashes map[string]string   // package -> fingerprint, of packages plugins brought in
	seq    int                 // numbers the copies
}{libs: map[string]*library{}, paths: map[string]string{}, hashes: map[string]string{}}

// library is one opened plugin. Its code and data stay mapped until the
// process exits.
type library struct {
	module, version, digest string // the first version loaded from it
	path                    string // the copy opened
	pluginPath              string
	mapped                  uint64 // bytes of the file mapped into the process
	openedAt                time.Time
	// err is why the plugin cannot serve (its open or binding failed); a
	// later load of the same bytes fails the same way without a new open.
	err      *module.LoadError
	names    []string
	fns      []func([]byte) ([]byte, error)
	selfTest func() error
	migrate  func(string) error

	// host is what the plugin's host functions reach: the state and logger
	// of the module it serves. It changes only when no version of the
	// plugin is live.
	host atomic.Pointer[pluginHost]
	live atomic.Int32 // versions (Code) prepared from it and not closed
}

// pluginHost is the module a plugin serves.
type pluginHost struct {
	state *module.KV
	log   *slog.Logger
}

// New returns a Backend. It reads the running binary's build identity and
// prepares Options.Dir now.
func New(opts Options) (*Backend, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("goplugin: %w", err)
	}
	host, err := hostIdentity()
	if err != nil {
		return nil, fmt.Errorf("goplugin: %w", err)
	}
	run, err := runDir(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("goplugin: plugin directory %s: %w", opts.Dir, err)
	}
	return &Backend{opts: opts, log: opts.Logger, host: host, run: run, mine: make(map[string]*library)}, nil
}

// Prepare checks spec.Artifact without loading it, opens it (or reuses the
// plugin already open from the same bytes) and validates it:
//
//   - it is an ELF shared object built with -buildmode=plugin ("validate");
//   - it was built like the host: same Go version, build settings, module
//     versions and sums and package fingerprints, and a plugin path no
//     other plugin in the process has ("compat"); the error names the first
//     difference;
//   - the backend holds fewer than MaxRetained plugins ("retained");
//   - its initialization does not panic, and it was built by Build with
//     the SDK protocol PluginABI ("init", "abi");
//   - it registers every RequiredHandlers entry ("exports");
//   - its self-test passes within InitTimeout ("selftest").
//
// Cancelling ctx aborts the preparation before the plugin is opened;
// opening cannot be interrupted.
func (b *Backend) Prepare(ctx context.Context, spec module.Spec) (module.Code, error) {
	start := time.Now()
	digest := spec.Digest
	if digest == "" {
		sum := sha256.Sum256(spec.Artifact)
		digest = hex.EncodeToString(sum[:])
	}
	lib, err := b.library(ctx, spec, digest)
	if err != nil {
		return nil, err
	}
	handlers := make(map[string]func([]byte) ([]byte, error), len(lib.names))
	for i, name := range lib.names {
		handlers[name] = lib.fns[i]
	}
	for _, name := range b.opts.RequiredHandlers {
		if handlers[name] == nil {
			return nil, module.Reject("exports", fmt.Errorf("%w: handler %q is required but the plugin registers only [%s]",
				module.ErrMissingExport, name, strings.Join(lib.names, ", ")))
		}
	}
	lib.live.Add(1) // before the self-test: the plugin now serves spec.Module
	if err := b.runHook(ctx, "self-test", lib.selfTest); err != nil {
		lib.live.Add(-1)
		return nil, module.Reject("selftest", fmt.Errorf("%w: %w", module.ErrSelfTestFailed, err))
	}
	c := &code{lib: lib, migrate: lib.migrate, b: b, prepared: time.Since(start)}
	c.handlers.Store(&handlers)
	return c, nil
}

// library returns the opened plugin of spec's artifact, opening it if this
// is the first load of those bytes in the process, and points its host
// functions at spec's module.
func (b *Backend) library(ctx context.Context, spec module.Spec, digest string) (*library, error) {
	opened.mu.Lock()
	defer opened.mu.Unlock()
	b.mu.Lock()
	closed, retained, mine := b.closed, len(b.mine), b.mine[digest] != nil
	b.mu.Unlock()
	if closed {
		return nil, module.ErrClosed
	}
	if !mine && retained >= b.opts.MaxRetained {
		return nil, module.Reject("retained", &RetainedError{Retained: retained, Max: b.opts.MaxRetained})
	}
	host := &pluginHost{state: spec.State, log: b.log.With(logkey.Module, spec.Module, "plugin", digest[:min(12, len(digest))])}
	if lib := opened.libs[digest]; lib != nil {
		if le := lib.err; le != nil {
			return nil, module.Reject(le.Check, le.Err) // a fresh error: the registry fills it in
		}
		if cur := lib.host.Load(); cur.state != spec.State && lib.live.Load() > 0 {
			return nil, module.Reject("compat", fmt.Errorf("%w: this plugin serves module %s (with its own state) and a plugin serves one module at a time",
				module.ErrInvalidModule, lib.module))
		}
		lib.host.Store(host)
		b.keep(lib)
		return lib, nil
	}

	id, err := pluginIdentity(spec.Artifact)
	if err != nil {
		return nil, module.Reject("validate", err)
	}
	if err := compatible(b.host, id, opened.hashes); err != nil {
		return nil, module.Reject("compat", err)
	}
	if other, clash := opened.paths[id.info.Path]; clash {
		o := opened.libs[other]
		return nil, module.Reject("compat", &IncompatibleError{What: "plugin path " + id.info.Path,
			Host:   fmt.Sprintf("it open already as %s@%s", o.module, o.version),
			Plugin: "it too; build every version with `hotswap build --plugin`, which gives each build fresh import paths"})
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opened.seq++
	path, err := b.copyOf(spec, digest, opened.seq)
	if err != nil {
		return nil, fmt.Errorf("copy the plugin: %w", err)
	}
	lib := &library{module: spec.Module, version: spec.Version, digest: digest, path: path,
		pluginPath: id.info.Path, openedAt: time.Now()}
	lib.host.Store(host)
	p, err := open(path)
	lib.mapped = mappedBytes(path)
	if err == nil {
		err = bind(lib, p)
	}
	if err != nil {
		lib.err = asLoadError(err)
	}
	opened.libs[digest] = lib
	opened.paths[id.info.Path] = digest
	for k, v := range id.hashes {
		if _, ok := b.host.hashes[k]; !ok {
			opened.hashes[k] = v
		}
	}
	b.keep(lib)
	b.log.Info("plugin opened", logkey.Module, spec.Module, logkey.Version, spec.Version, logkey.Digest, digest,
		logkey.Path, path, "mapped_bytes", lib.mapped, logkey.Err, err)
	return lib, err
}

// keep counts lib as one of the backend's plugins.
func (b *Backend) keep(lib *library) {
	b.mu.Lock()
	b.mine[lib.digest] = lib
	b.mu.Unlock()
}

// open runs plugin.Open, turning a panic in the plugin's initialization into
// an error.
func open(path string) (p *plugin.Plugin, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = module.Reject("init", fmt.Errorf("%w: panic: %v", module.ErrInitFailed, r))
		}
	}()
	p, err = plugin.Open(path)
	if err != nil {
		return nil, module.Reject("init", fmt.Errorf("%w: %v", module.ErrInitFailed, err))
	}
	return p, nil
}

// bind looks up the SDK's symbols, binds the host functions and reads the
// handler table.
func bind(lib *library, p *plugin.Plugin) error {
	missing := func(name string) error {
		return module.Reject("abi", notPlugin("symbol %s is missing or mistyped; build the plugin with `hotswap build --plugin`", name))
	}
	abiSym, err := p.Lookup("HotswapPluginABI")
	abi, ok := abiSym.(func() uint32)
	if err != nil || !ok {
		return missing("HotswapPluginABI")
	}
	if v := abi(); v != PluginABI {
		return module.Reject("abi", fmt.Errorf("%w: the plugin speaks plugin ABI %d; this host speaks %d", module.ErrABIMismatch, v, PluginABI))
	}
	bindSym, _ := p.Lookup("HotswapPluginBind")
	bind, ok := bindSym.(func(func(int32, string), func(string) ([]byte, bool), func(string, []byte), func(string), func(string, int64) int64))
	if !ok {
		return missing("HotswapPluginBind")
	}
	handlersSym, _ := p.Lookup("HotswapPluginHandlers")
	handlers, ok := handlersSym.(func() ([]string, []func([]byte) ([]byte, error)))
	if !ok {
		return missing("HotswapPluginHandlers")
	}
	selfTestSym, _ := p.Lookup("HotswapPluginSelfTest")
	if lib.selfTest, ok = selfTestSym.(func() error); !ok {
		return missing("HotswapPluginSelfTest")
	}
	migrateSym, _ := p.Lookup("HotswapPluginMigrate")
	if lib.migrate, ok = migrateSym.(func(string) error); !ok {
		return missing("HotswapPluginMigrate")
	}
	h := &lib.host
	bind(func(level int32, msg string) { h.Load().log.Log(context.Background(), slog.Level(level), msg) },
		func(key string) ([]byte, bool) {
			v, ok := h.Load().state.Get(key)
			return slices.Clone(v), ok
		},
		func(key string, v []byte) { h.Load().state.Set(key, v) },
		func(key string) { h.Load().state.Delete(key) },
		func(key string, delta int64) int64 { return h.Load().state.Add(key, delta) })
	lib.names, lib.fns = handlers()
	if len(lib.names) != len(lib.fns) {
		return module.Reject("abi", notPlugin("handler table has %d names and %d functions", len(lib.names), len(lib.fns)))
	}
	return nil
}

// runHook runs a self-test or migrate hook, bounded by InitTimeout and ctx.
// A panic fails the hook. Native code cannot be stopped: a hook past its
// deadline keeps running on its goroutine.
func (b *Backend) runHook(ctx context.Context, what string, hook func() error) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("%w: %s panicked: %v", module.ErrTrapped, what, r)
			}
		}()
		done <- hook()
	}()
	t := time.NewTimer(b.opts.InitTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w: %s still running after %v (it cannot be stopped and keeps running)", module.ErrTimeout, what, b.opts.InitTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// copyOf writes the artifact to a path no plugin was opened from.
func (b *Backend) copyOf(spec module.Spec, digest string, n int) (string, error) {
	path := filepath.Join(b.run, fmt.Sprintf("%s-%s-%d.so", safeName(spec.Module), safeName(digest[:min(16, len(digest))]), n))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o500)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(spec.Artifact); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// safeName keeps a file name to letters, digits, '-' and '_'.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// Close stops taking loads and removes this process's plugin copies. The
// plugins stay mapped: Go cannot unload them.
func (b *Backend) Close(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if err := os.RemoveAll(b.run); err != nil {
		return fmt.Errorf("goplugin: remove plugin copies: %w", err)
	}
	return nil
}

// Retained lists every plugin this backend loaded, in the order opened.
func (b *Backend) Retained() module.Retained {
	b.mu.Lock()
	libs := make([]*library, 0, len(b.mine))
	for _, l := range b.mine {
		libs = append(libs, l)
	}
	b.mu.Unlock()
	slices.SortFunc(libs, func(x, y *library) int { return x.openedAt.Compare(y.openedAt) })
	r := module.Retained{Max: b.opts.MaxRetained, Versions: make([]module.RetainedVersion, 0, len(libs))}
	for _, l := range libs {
		v := module.RetainedVersion{Module: l.module, Version: l.version, Digest: l.digest, MappedBytes: l.mapped,
			InUse: l.live.Load() > 0, LoadedAt: l.openedAt}
		if l.err != nil {
			v.Failed = l.err.Error()
		}
		r.Versions = append(r.Versions, v)
		r.MappedBytes += l.mapped
	}
	return r
}

// asLoadError returns err as the *module.LoadError it is or wraps.
func asLoadError(err error) *module.LoadError {
	var le *module.LoadError
	if errors.As(err, &le) {
		return le
	}
	return &module.LoadError{Check: "init", Err: err}
}
