package wasm_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// guest builds (or reuses) a guest module and returns its bytes.
func guest(t testing.TB, pkg, ldflags string) []byte {
	t.Helper()
	b, err := guestbuild.Bytes(pkg, ldflags)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func echo(t testing.TB, version string) []byte {
	return guest(t, "./internal/testguests/echo", "-X main.version="+version)
}

// cacheDir is shared by the tests of this package so compiled code is
// reused across tests, as in production.
func cacheDir() string { return wasm.SharedTestCacheDir() }

// newRegistry returns a registry over a wasm backend with cfg for every
// module, closed when the test ends.
func newRegistry(t testing.TB, cfg wasm.ModuleConfig) *module.Registry {
	t.Helper()
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(), Default: cfg})
	if err != nil {
		t.Fatal(err)
	}
	r, err := module.New(module.Options{Backend: b, DrainTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return r
}

func load(t testing.TB, r *module.Registry, name, version string, code []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := r.Load(ctx, name, module.Source{Version: version, Artifact: code}); err != nil {
		t.Fatalf("Load(%s@%s) = %v", name, version, err)
	}
}

func call(t testing.TB, r *module.Registry, name, handler, in string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := r.Call(ctx, name, handler, []byte(in))
	if err != nil {
		t.Fatalf("Call(%s, %s) = %v", name, handler, err)
	}
	return string(out)
}

// precompile loads each artifact as a module of its own, so that loading it
// later compiles from the cache: a call allocating in a loop (the echo
// guest's "wait") runs out of guest memory within seconds, sooner than a
// cold compile under the race detector ends.
func precompile(t testing.TB, r *module.Registry, arts ...[]byte) {
	t.Helper()
	for i, art := range arts {
		load(t, r, fmt.Sprint("precompiled-", i), "v", art)
	}
}
