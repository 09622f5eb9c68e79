package goplugin_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/goplugin"
)

// otherSys is the version of golang.org/x/sys the depvar plugin is built
// against; the host's is newer. It is in this machine's module cache; the go
// command fetches it elsewhere.
const otherSys = "v0.45.0"

// testPlugins are the plugins the tests load, built once per test process
// with the test binary's toolchain and flags (-race included) and kept in
// memory.
type testPlugins struct {
	echoA, echoB []byte // the same source built twice
	tagged       []byte // echo built with an extra build tag
	depvar       []byte // built against another golang.org/x/sys
	goVersion    []byte // echoA with another Go version in its build info
	pricing      []byte // examples/pricing/guests/v2, the WebAssembly example's source
	err          error
}

var (
	buildOnce sync.Once
	built     testPlugins
)

// plugins builds the test plugins on first use, under the calling test's
// t.TempDir(); the bytes outlive it.
func plugins(t *testing.T) *testPlugins {
	t.Helper()
	buildOnce.Do(func() { built = buildPlugins(t.TempDir()) })
	if built.err != nil {
		t.Fatalf("build test plugins: %v", built.err)
	}
	return &built
}

func buildPlugins(dir string) testPlugins {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var p testPlugins
	build := func(src, name string, opts goplugin.BuildOptions) ([]byte, error) {
		if opts.Dir == "" {
			opts.Dir = filepath.Join("testdata", src)
		}
		opts.Out, opts.WorkDir = filepath.Join(dir, name+".so"), dir
		if _, err := goplugin.Build(ctx, opts); err != nil {
			return nil, err
		}
		return os.ReadFile(opts.Out)
	}
	// The first build fills the build cache the others then share.
	if p.echoA, p.err = build("echo", "a", goplugin.BuildOptions{}); p.err != nil {
		return p
	}
	root, err := guestbuild.Root()
	if err != nil {
		p.err = err
		return p
	}
	modfile, err := otherModfile(root, dir)
	if err != nil {
		p.err = err
		return p
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	wg.Go(func() { p.echoB, errs[0] = build("echo", "b", goplugin.BuildOptions{}) })
	wg.Go(func() {
		p.tagged, errs[1] = build("echo", "tagged", goplugin.BuildOptions{Flags: []string{"-tags=hotswap_other"}})
	})
	wg.Go(func() {
		p.depvar, errs[2] = build("depvar", "depvar", goplugin.BuildOptions{
			Flags: []string{"-modfile=" + modfile},
			Env:   []string{"GOFLAGS=-mod=mod -buildvcs=false", "GOSUMDB=off"},
		})
	})
	wg.Go(func() {
		p.pricing, errs[3] = build("", "pricing", goplugin.BuildOptions{Dir: filepath.Join(root, "examples", "pricing", "guests", "v2")})
	})
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			p.err = err
			return p
		}
	}
	p.goVersion, p.err = otherGoVersion(p.echoA)
	return p
}

// otherModfile writes a copy of the module's go.mod (and go.sum) that
// replaces golang.org/x/sys with otherSys, and returns its path.
func otherModfile(root, dir string) (string, error) {
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "other.mod")
	mod = append(mod, "\nreplace golang.org/x/sys => golang.org/x/sys "+otherSys+"\n"...)
	if err := os.WriteFile(p, mod, 0o600); err != nil {
		return "", err
	}
	return p, os.WriteFile(filepath.Join(dir, "other.sum"), sum, 0o600)
}

// otherGoVersion returns so with the Go version in its build info changed,
// as if another release had built it.
func otherGoVersion(so []byte) ([]byte, error) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil, fmt.Errorf("no build info")
	}
	magic := bytes.Index(so, []byte("\xff Go buildinf:"))
	if magic < 0 {
		return nil, fmt.Errorf("no build info header in the plugin")
	}
	v := []byte(info.GoVersion)
	i := bytes.Index(so[magic:], v)
	if i < 0 {
		return nil, fmt.Errorf("no %s after the build info header", v)
	}
	out := bytes.Clone(so)
	last := magic + i + len(v) - 1
	out[last] = "10"[min(1, int(out[last]-'0'))] // another digit, same length
	return out, nil
}

// newBackend returns a Backend over a private directory under t.TempDir().
func newBackend(t *testing.T, opts goplugin.Options) (*goplugin.Backend, string) {
	t.Helper()
	opts.Dir = filepath.Join(t.TempDir(), "plugins")
	b, err := goplugin.New(opts)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return b, opts.Dir
}

// capture is a backend that remembers the Code of every version it
// prepared, so a test can look at a version after the registry let go.
type capture struct {
	*goplugin.Backend
	mu    sync.Mutex // protects codes
	codes map[string]module.Code
}

func (c *capture) Prepare(ctx context.Context, spec module.Spec) (module.Code, error) {
	code, err := c.Backend.Prepare(ctx, spec)
	if err == nil {
		c.mu.Lock()
		c.codes[spec.Version] = code
		c.mu.Unlock()
	}
	return code, err
}

func (c *capture) code(version string) module.Code {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.codes[version]
}

// newRegistry returns a registry over a fresh backend, closed when t ends.
func newRegistry(t *testing.T, opts goplugin.Options) (*module.Registry, *capture, string) {
	t.Helper()
	b, dir := newBackend(t, opts)
	c := &capture{Backend: b, codes: make(map[string]module.Code)}
	r, err := module.New(module.Options{Backend: c, DrainTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("module.New() = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return r, c, dir
}

// filesWith lists the files under dir whose name contains s.
func filesWith(t *testing.T, dir, s string) []string {
	t.Helper()
	var found []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(d.Name(), s) {
			found = append(found, p)
		}
		return nil
	})
	return found
}

// mapped reports whether the process maps a file whose path contains s.
func mapped(t *testing.T, s string) bool {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(maps, []byte(s))
}
