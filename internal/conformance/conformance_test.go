package conformance_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

func TestMain(m *testing.M) {
	code := m.Run()
	guestbuild.Cleanup()
	os.Exit(code)
}

// A language builds the conformance guest; failing builds its variant
// whose self-test fails. Builds are cached for the test process (see
// guestbuild.Dir), so each variant is built once.
type language struct {
	name  string
	build func(failing bool) ([]byte, error)
}

var languages = []language{
	{"go", func(failing bool) ([]byte, error) {
		ldflags := ""
		if failing {
			ldflags = "-X main.selfTest=fail"
		}
		return guestbuild.Bytes("./internal/conformance/guests/go", ldflags)
	}},
	{"c", func(failing bool) ([]byte, error) {
		var flags []string
		if failing {
			flags = append(flags, "-DSELFTEST_FAIL")
		}
		return guestbuild.CBytes("internal/conformance/guests/c/guest.c", flags...)
	}},
	{"rust", func(failing bool) ([]byte, error) {
		var flags []string
		if failing {
			flags = append(flags, "--cfg", "selftest_fail")
		}
		return guestbuild.RustBytes("internal/conformance/guests/rust/lib.rs", flags...)
	}},
}

// guest returns lang's conformance guest, skipping the test when the
// language's toolchain is missing (failing instead when
// HOTSWAP_REQUIRE_GUEST_TOOLCHAINS is set).
func guest(t testing.TB, lang language, failing bool) []byte {
	t.Helper()
	b, err := lang.build(failing)
	switch {
	case errors.Is(err, guestbuild.ErrNoToolchain) && os.Getenv("HOTSWAP_REQUIRE_GUEST_TOOLCHAINS") == "":
		t.Skipf("no %s guest: %v", lang.name, err)
	case err != nil:
		t.Fatal(err)
	}
	return b
}

// cacheDir is the compilation cache shared by the tests, so a guest
// compiles once per process, as in production.
var cacheDir = sync.OnceValues(func() (string, error) {
	dir, err := guestbuild.Dir()
	if err != nil {
		return "", err
	}
	dir = filepath.Join(dir, "compiled")
	return dir, os.MkdirAll(dir, 0o700)
})

// callTimeout is the deadline of the calls that run away; others get
// 10s, ample on a loaded machine for what they do (filling 64 MiB of
// memory takes 30 to 300ms here).
const callTimeout = 300 * time.Millisecond

// config is the module configuration of every test: the key/value
// capability, a memory limit small enough to reach in milliseconds.
func config(timeout time.Duration) wasm.ModuleConfig {
	return wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, MemoryLimit: 64 << 20,
		CallTimeout: timeout, MinInstances: 1}
}

// newRegistry returns a registry over a wasm backend logging to logs (if
// not nil), closed when the test ends.
func newRegistry(t testing.TB, logs *syncBuffer) *module.Registry {
	return newRegistryTimeout(t, logs, 10*time.Second)
}

func newRegistryTimeout(t testing.TB, logs *syncBuffer, timeout time.Duration) *module.Registry {
	t.Helper()
	dir, err := cacheDir()
	if err != nil {
		t.Fatal(err)
	}
	opts := wasm.Options{CacheDir: dir, Default: config(timeout)}
	if logs != nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	b, err := wasm.New(opts)
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

func load(r *module.Registry, version string, art []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := r.Load(ctx, "m", module.Source{Version: version, Artifact: art})
	return err
}

func mustLoad(t testing.TB, r *module.Registry, version string, art []byte) {
	t.Helper()
	if err := load(r, version, art); err != nil {
		t.Fatalf("Load(m@%s) = %v", version, err)
	}
}

func call(r *module.Registry, handler, in string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := r.Call(ctx, "m", handler, []byte(in))
	return string(out), err
}

func mustCall(t testing.TB, r *module.Registry, handler, in string) string {
	t.Helper()
	out, err := call(r, handler, in)
	if err != nil {
		t.Fatalf("Call(%s, %.20q) = %v", handler, in, err)
	}
	return out
}

// TestCalls runs each call case against each guest on a fresh module:
// the answer or the failure, its classification, whether the instance was
// discarded, and that the version serves on.
func TestCalls(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 100<<10/16) // more than the initial exchange buffer
	tests := []struct {
		name      string
		handler   string
		in        string
		want      string // the output when wantErr is nil
		wantErr   error
		detail    string // in the CallError's Detail
		discarded bool
		slow      bool // stopped by the call deadline
	}{
		{name: "echo", handler: "echo", in: "hello", want: "hello"},
		{name: "echo empty", handler: "echo", in: "", want: ""},
		{name: "echo past the exchange buffer", handler: "echo", in: big, want: big},
		{name: "recursion within the stack bound", handler: "recurse", in: "1000", want: "1000"},
		{name: "handler error", handler: "fail", in: "no stock", wantErr: module.ErrGuest, detail: "refused: no stock"},
		{name: "unknown handler", handler: "nope", wantErr: module.ErrNoHandler, detail: `"nope"`},
		{name: "trap", handler: "trap", in: "boom", wantErr: module.ErrTrapped, detail: "trapped: boom", discarded: true},
		{name: "runaway loop", handler: "loop", wantErr: module.ErrTimeout, discarded: true, slow: true},
		{name: "loop-free recursion", handler: "spin", wantErr: module.ErrTimeout, discarded: true, slow: true},
		{name: "stack overflow", handler: "recurse", in: "100000000", wantErr: module.ErrStackOverflow, discarded: true},
		{name: "memory limit", handler: "grow", wantErr: module.ErrMemoryLimit, discarded: true},
	}
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			art := guest(t, lang, false)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					timeout := 10 * time.Second
					if tt.slow {
						timeout = callTimeout
					}
					r := newRegistryTimeout(t, nil, timeout)
					mustLoad(t, r, "v1", art)
					start := time.Now()
					out, err := call(r, tt.handler, tt.in)
					elapsed := time.Since(start)
					if tt.wantErr == nil {
						if err != nil || out != tt.want {
							t.Fatalf("Call(%s) = %.40q, %v; want %.40q", tt.handler, out, err, tt.want)
						}
					} else {
						var ce *module.CallError
						if !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) || ce.Version != "v1" || ce.Handler != tt.handler {
							t.Fatalf("Call(%s) = %v; want a CallError from m@v1 %s matching %v", tt.handler, err, tt.handler, tt.wantErr)
						}
						if !strings.Contains(ce.Detail, tt.detail) {
							t.Errorf("Detail = %q; want it to contain %q", ce.Detail, tt.detail)
						}
					}
					if tt.slow && (elapsed < callTimeout || elapsed > 3*time.Second) {
						t.Errorf("runaway call stopped after %v; want between the %v timeout and 3s", elapsed, callTimeout)
					}
					for i := range 3 {
						if got := mustCall(t, r, "echo", "still here"); got != "still here" {
							t.Fatalf("call %d after %s = %q", i, tt.name, got)
						}
					}
					st := r.Module("m").Status().Active
					if got := st.Discarded > 0; got != tt.discarded {
						t.Errorf("instance discarded = %v; want %v", got, tt.discarded)
					}
					wantFailures := uint64(0)
					if tt.wantErr != nil {
						wantFailures = 1
					}
					if st.Failures != wantFailures {
						t.Errorf("Status() failures = %d; want %d", st.Failures, wantFailures)
					}
				})
			}
		})
	}
}

// TestKV: the key/value host functions, values larger than a guest's
// first buffer included, and state that outlives a version.
func TestKV(t *testing.T) {
	large := strings.Repeat("v", 20<<10)
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			art := guest(t, lang, false)
			r := newRegistry(t, nil)
			mustLoad(t, r, "v1", art)
			for i, want := range []string{"1", "2"} {
				if got := mustCall(t, r, "count", ""); got != want {
					t.Fatalf("count call %d = %q; want %q", i, got, want)
				}
			}
			mustCall(t, r, "put", "colour=blue")
			if got := mustCall(t, r, "get", "colour"); got != "blue" {
				t.Fatalf("get(colour) = %q; want blue", got)
			}
			mustCall(t, r, "put", "large="+large)
			if got := mustCall(t, r, "get", "large"); got != large {
				t.Fatalf("get(large) = %d bytes; want %d", len(got), len(large))
			}
			mustCall(t, r, "del", "colour")
			if _, err := call(r, "get", "colour"); !errors.Is(err, module.ErrGuest) || !strings.Contains(err.Error(), "missing: colour") {
				t.Fatalf("get(colour) after del = %v; want ErrGuest missing: colour", err)
			}
			if _, err := call(r, "put", "nokey"); !errors.Is(err, module.ErrGuest) {
				t.Fatalf("put(nokey) = %v; want ErrGuest", err)
			}
			mustLoad(t, r, "v2", art)
			if got := mustCall(t, r, "count", ""); got != "3" {
				t.Fatalf("count after a swap = %q; want 3", got)
			}
		})
	}
}

// TestLog: a guest's log line reaches the host's logger, tagged with the
// module.
func TestLog(t *testing.T) {
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			art := guest(t, lang, false)
			var logs syncBuffer
			r := newRegistry(t, &logs)
			mustLoad(t, r, "v1", art)
			mustCall(t, r, "log", "hello from "+lang.name)
			got := logs.String()
			if !strings.Contains(got, `msg="hello from `+lang.name+`"`) || !strings.Contains(got, "module=m") {
				t.Fatalf("host log = %q; want the guest's line tagged module=m", got)
			}
		})
	}
}

// TestSelfTestRefused: a version whose self-test fails is refused with the
// guest's reason, and the version serving keeps serving.
func TestSelfTestRefused(t *testing.T) {
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			good, bad := guest(t, lang, false), guest(t, lang, true)
			r := newRegistry(t, nil)
			mustLoad(t, r, "v1", good)
			err := load(r, "v2", bad)
			var le *module.LoadError
			if !errors.Is(err, module.ErrSelfTestFailed) || !errors.As(err, &le) || le.Check != "selftest" {
				t.Fatalf("Load(failing self-test) = %v; want a LoadError from check selftest matching ErrSelfTestFailed", err)
			}
			if !strings.Contains(err.Error(), "self-test: answers are wrong") {
				t.Errorf("Load() = %v; want the guest's reason", err)
			}
			if v := r.Module("m").Status().Active.Version; v != "v1" {
				t.Errorf("active version after the refusal = %s; want v1", v)
			}
			if got := mustCall(t, r, "echo", "v1 serves"); got != "v1 serves" {
				t.Errorf("echo after the refusal = %q", got)
			}
		})
	}
}

// TestMigrate: the migrate hook runs once per activation with the version
// it replaces, "" for the first.
func TestMigrate(t *testing.T) {
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			art := guest(t, lang, false)
			r := newRegistry(t, nil)
			mustLoad(t, r, "v1", art)
			if got := mustCall(t, r, "get", "migrated"); got != "" {
				t.Fatalf("migrated after the first load = %q; want empty", got)
			}
			mustLoad(t, r, "v2", art)
			if got := mustCall(t, r, "get", "migrated"); got != "v1" {
				t.Fatalf("migrated after loading v2 = %q; want v1", got)
			}
		})
	}
}

// TestSwapAcrossLanguages: versions of one module written in different
// languages replace each other, sharing the host-kept state and migrating
// from each other.
func TestSwapAcrossLanguages(t *testing.T) {
	r := newRegistry(t, nil)
	var arts [][]byte
	for _, lang := range languages {
		arts = append(arts, guest(t, lang, false))
	}
	for i, art := range append(arts, arts[0]) {
		version := fmt.Sprintf("v%d-%s", i+1, languages[i%len(languages)].name)
		mustLoad(t, r, version, art)
		if got, want := mustCall(t, r, "count", ""), fmt.Sprint(i+1); got != want {
			t.Fatalf("count on %s = %q; want %q", version, got, want)
		}
		if i > 0 {
			want := fmt.Sprintf("v%d-%s", i, languages[(i-1)%len(languages)].name)
			if got := mustCall(t, r, "get", "migrated"); got != want {
				t.Fatalf("migrated on %s = %q; want %q", version, got, want)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
