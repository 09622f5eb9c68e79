package wasm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/hostile"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// cacheFiles lists the files in a compilation cache directory.
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

// TestRefusedModulesLeaveNoCompiledCode: a module refused after it compiled
// (in its start function, its self-test, its migrate hook) removes what its
// compile added to the cache; an accepted one keeps it, after it closed too.
func TestRefusedModulesLeaveNoCompiledCode(t *testing.T) {
	byName := map[string]hostile.Case{}
	for _, c := range hostile.Cases() {
		byName[c.Name] = c
	}
	dir := t.TempDir()
	b, err := wasm.New(wasm.Options{CacheDir: dir, Default: wasm.ModuleConfig{InitTimeout: time.Second, MinInstances: 1}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	ctx := context.Background()
	for _, name := range []string{"start-trap", "selftest-unbounded", "migrate-loop", "abi-major-2"} {
		before := cacheFiles(t, dir)
		if _, err := r.Load(ctx, name, module.Source{Version: "v1", Artifact: byName[name].Bytes}); !errors.Is(err, module.ErrRejected) {
			t.Fatalf("Load(%s) = %v; want it refused", name, err)
		}
		if after := cacheFiles(t, dir); !slices.Equal(before, after) {
			t.Errorf("after %s was refused the cache holds %v; want %v, as before", name, after, before)
		}
	}
	var g hostile.Guest
	g.Handle("h", nil, hostile.Echo())
	before := cacheFiles(t, dir)
	if _, err := r.Load(ctx, "good", module.Source{Version: "v1", Artifact: g.Bytes()}); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if after := cacheFiles(t, dir); len(after) != len(before)+1 {
		t.Errorf("after an accepted module closed the cache holds %d files; want %d", len(after), len(before)+1)
	}
}

// TestCacheDirMustBePrivate: compiled code is run unchecked, so a cache
// directory others could write to, or belonging to someone else, is
// refused; and the default never falls back to a shared directory.
func TestCacheDirMustBePrivate(t *testing.T) {
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := wasm.New(wasm.Options{CacheDir: open}); err == nil || !strings.Contains(err.Error(), "go-w") {
		t.Errorf("New(CacheDir mode 0777) = %v; want it refused", err)
	}
	inside := filepath.Join(t.TempDir(), "cache")
	if _, err := wasm.New(wasm.Options{CacheDir: inside}); err != nil {
		t.Fatalf("New(a new directory) = %v", err)
	}
	if fi, err := os.Stat(inside); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the new cache directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	// wazero's subdirectory is checked too.
	sub, err := filepath.Glob(filepath.Join(inside, "wazero-*"))
	if err != nil || len(sub) != 1 {
		t.Fatalf("wazero's subdirectory: %v, %v", sub, err)
	}
	if err := os.Chmod(sub[0], 0o775); err != nil {
		t.Fatal(err)
	}
	if _, err := wasm.New(wasm.Options{CacheDir: inside}); err == nil {
		t.Errorf("New(a cache whose subdirectory is group-writable) = nil; want it refused")
	}
	if os.Geteuid() == 0 {
		theirs := t.TempDir()
		if err := os.Chown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := wasm.New(wasm.Options{CacheDir: theirs}); err == nil || !strings.Contains(err.Error(), "uid 65534") {
			t.Errorf("New(CacheDir of uid 65534) = %v; want it refused", err)
		}
	}
	t.Setenv("HOME", "")
	t.Setenv("XDG_CACHE_HOME", "")
	if dir, err := wasm.DefaultCacheDir(); err == nil {
		t.Errorf("DefaultCacheDir() without HOME = %q; want an error, not a shared directory", dir)
	}
	if _, err := wasm.New(wasm.Options{}); err == nil {
		t.Errorf("New() without a cache directory = nil; want an error")
	}
}

// TestTablesInStatus: table entries are counted, growth included, per
// instance.
func TestTablesInStatus(t *testing.T) {
	var g hostile.Guest
	g.Table(hostile.FuncRef, 1000, -1)
	g.Handle("grow", nil, []byte{0xd0, hostile.FuncRef}, hostile.I32Const(500), []byte{0xfc, 15, 0, hostile.Drop}, hostile.OK())
	r := newRegistry(t, wasm.ModuleConfig{MinInstances: 2, MaxInstances: 2})
	load(t, r, "m", "v1", g.Bytes())
	m := r.Module("m")
	if st := m.Status().Active; st.TableEntries != 2000 {
		t.Fatalf("TableEntries = %d on %d instances; want 2000", st.TableEntries, st.Instances)
	}
	call(t, r, "m", "grow", "")
	if st := m.Status().Active; st.TableEntries != 2500 {
		t.Fatalf("TableEntries after a grow of 500 = %d; want 2500", st.TableEntries)
	}
}

// TestGoRecursion: a Go guest recursing thousands deep is within the
// default stack bound; one recursing without a useful end stops in
// milliseconds with ErrStackOverflow, and the version keeps serving.
func TestGoRecursion(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv, MinInstances: 1, CallTimeout: 10 * time.Second})
	load(t, r, "m", "v1", echo(t, "v1"))
	if got := call(t, r, "m", "recurse", "20000"); got != "20000" {
		t.Fatalf("recurse(20000) = %q", got)
	}
	start := time.Now()
	_, err := r.Call(context.Background(), "m", "recurse", []byte(strconv.Itoa(100_000_000)))
	if !errors.Is(err, module.ErrStackOverflow) {
		t.Fatalf("recurse(1e8) = %v; want ErrStackOverflow", err)
	}
	t.Logf("stack overflow after %v", time.Since(start))
	if got := call(t, r, "m", "echo", "still here"); got != "still here" {
		t.Fatalf("echo after the overflow = %q", got)
	}
}

// TestNoCallTimeout: without a deadline a call runs on, yet its caller's
// context stops it and the collector can stop the world meanwhile.
func TestNoCallTimeout(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv, MinInstances: 1, CallTimeout: wasm.NoCallTimeout})
	load(t, r, "m", "v1", echo(t, "v1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.Call(ctx, "m", "loop", nil)
		done <- err
	}()
	waitFor(t, "the loop to start", func() bool { return r.Module("m").Status().Active.InFlight == 1 })
	select {
	case err := <-done:
		t.Fatalf("Call(loop) without a deadline returned %v", err)
	case <-time.After(1500 * time.Millisecond): // past DefaultCallTimeout
	}
	gc := make(chan struct{})
	go func() {
		start := time.Now()
		runtime.GC()
		t.Logf("GC with a guest looping took %v", time.Since(start))
		close(gc)
	}()
	select {
	case <-gc:
	case <-time.After(10 * time.Second):
		t.Fatal("runtime.GC blocked by a guest looping without a deadline")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Call(loop) cancelled = %v; want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the call did not stop it")
	}
}

// TestCancelAbortsCompile: a load whose context ends stops compiling and
// says so, rather than calling the module invalid, and leaves no compiled
// code behind.
func TestCancelAbortsCompile(t *testing.T) {
	dir := t.TempDir() // a cold cache: the compile takes a while
	b, err := wasm.New(wasm.Options{CacheDir: dir, Default: wasm.ModuleConfig{Grants: kv}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	art := echo(t, "v1")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = r.Load(ctx, "m", module.Source{Version: "v1", Artifact: art})
	// No check refused the module: the error is the deadline, not a
	// rejection (see module.Registry.Prepare).
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, module.ErrRejected) || errors.Is(err, module.ErrInvalidModule) {
		t.Fatalf("Load() past its deadline = %v; want DeadlineExceeded, neither ErrRejected nor ErrInvalidModule", err)
	}
	t.Logf("aborted after %v", time.Since(start))
	if files := cacheFiles(t, dir); len(files) != 0 {
		t.Errorf("after an aborted compile the cache holds %v; want nothing", files)
	}
}
