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

// A language builds the conformance guest. Builds are cached for the test
// process (see guestbuild.Dir), so each is built once.
type language struct {
	name  string
	build func() ([]byte, error)
}

var languages = []language{
	{"go", func() ([]byte, error) { return guestbuild.Bytes("./internal/conformance/guests/go", "") }},
	{"c", func() ([]byte, error) { return guestbuild.CBytes("internal/conformance/guests/c/guest.c") }},
	{"rust", func() ([]byte, error) { return guestbuild.RustBytes("internal/conformance/guests/rust/lib.rs") }},
}

// guest returns lang's conformance guest, skipping the test when the
// language's toolchain is missing (failing instead when
// HOTSWAP_REQUIRE_GUEST_TOOLCHAINS is set).
func guest(t testing.TB, lang language) []byte {
	t.Helper()
	b, err := lang.build()
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

// The modules the suite loads: runaway has a short call deadline for the
// calls that never end; the others have a deadline ample on a loaded
// machine for what they do (filling 64 MiB of guest memory takes 30 to
// 300ms here).
const (
	callTimeout = 300 * time.Millisecond
	runaway     = "runaway"
)

func config(timeout time.Duration) wasm.ModuleConfig {
	return wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, MemoryLimit: 64 << 20,
		CallTimeout: timeout, MinInstances: 1}
}

// newRegistry returns a registry over a wasm backend logging to logs (if
// not nil), closed when the test ends.
func newRegistry(t testing.TB, logs *syncBuffer) *module.Registry {
	t.Helper()
	dir, err := cacheDir()
	if err != nil {
		t.Fatal(err)
	}
	opts := wasm.Options{CacheDir: dir, Default: config(10 * time.Second),
		Modules: map[string]wasm.ModuleConfig{runaway: config(callTimeout)}}
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

func load(r *module.Registry, name, version string, art []byte) error {
	// A cold compile of the Go guest under the race detector on a loaded
	// machine takes a minute or more.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err := r.Load(ctx, name, module.Source{Version: version, Artifact: art})
	return err
}

func mustLoad(t testing.TB, r *module.Registry, name, version string, art []byte) {
	t.Helper()
	if err := load(r, name, version, art); err != nil {
		t.Fatalf("Load(%s@%s) = %v", name, version, err)
	}
}

func call(r *module.Registry, name, handler, in string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := r.Call(ctx, name, handler, []byte(in))
	return string(out), err
}

func mustCall(t testing.TB, r *module.Registry, handler, in string) string {
	t.Helper()
	out, err := call(r, "m", handler, in)
	if err != nil {
		t.Fatalf("Call(%s, %.20q) = %v", handler, in, err)
	}
	return out
}

// callCases are the calls every guest must answer alike: the answer or the
// failure, its classification, and whether the instance was discarded.
var callCases = []struct {
	name      string
	handler   string
	in        string
	want      string // the output when wantErr is nil
	wantErr   error
	detail    string // in the CallError's Detail
	discarded bool
	runaway   bool // never ends: stopped by the call deadline
}{
	{name: "echo", handler: "echo", in: "hello", want: "hello"},
	{name: "echo empty", handler: "echo", in: "", want: ""},
	{name: "echo past the exchange buffer", handler: "echo", in: strings.Repeat("0123456789abcdef", 100<<10/16),
		want: strings.Repeat("0123456789abcdef", 100<<10/16)},
	{name: "recursion within the stack bound", handler: "recurse", in: "1000", want: "1000"},
	{name: "handler error", handler: "fail", in: "no stock", wantErr: module.ErrGuest, detail: "refused: no stock"},
	{name: "unknown handler", handler: "nope", wantErr: module.ErrNoHandler, detail: `"nope"`},
	{name: "trap", handler: "trap", in: "boom", wantErr: module.ErrTrapped, detail: "trapped: boom", discarded: true},
	{name: "runaway loop", handler: "loop", wantErr: module.ErrTimeout, discarded: true, runaway: true},
	{name: "loop-free recursion", handler: "spin", wantErr: module.ErrTimeout, discarded: true, runaway: true},
	{name: "stack overflow", handler: "recurse", in: "100000000", wantErr: module.ErrStackOverflow, discarded: true},
	{name: "memory limit", handler: "grow", wantErr: module.ErrMemoryLimit, discarded: true},
}

// TestConformance runs the suite against each language's guest. The
// subtests of a language share its registry and run in order: module m
// serves the calls, then the state, log, migrate and self-test cases.
func TestConformance(t *testing.T) {
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			art := guest(t, lang)
			var logs syncBuffer
			r := newRegistry(t, &logs)
			mustLoad(t, r, "m", "v1", art)
			mustLoad(t, r, runaway, "v1", art)

			for _, tt := range callCases {
				t.Run("call/"+tt.name, func(t *testing.T) {
					name := "m"
					if tt.runaway {
						name = runaway
					}
					before := r.Module(name).Status().Active
					start := time.Now()
					out, err := call(r, name, tt.handler, tt.in)
					elapsed := time.Since(start)
					if tt.wantErr == nil {
						if err != nil || out != tt.want {
							t.Fatalf("Call(%s) = %.40q, %v; want %.40q", tt.handler, out, err, tt.want)
						}
					} else {
						var ce *module.CallError
						if !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) || ce.Version != "v1" || ce.Handler != tt.handler {
							t.Fatalf("Call(%s) = %v; want a CallError from %s@v1 %s matching %v", tt.handler, err, name, tt.handler, tt.wantErr)
						}
						if !strings.Contains(ce.Detail, tt.detail) {
							t.Errorf("Detail = %q; want it to contain %q", ce.Detail, tt.detail)
						}
					}
					if tt.runaway && (elapsed < callTimeout || elapsed > 5*time.Second) {
						t.Errorf("runaway call stopped after %v; want between the %v deadline and 5s", elapsed, callTimeout)
					}
					for i := range 3 {
						if got, err := call(r, name, "echo", "still here"); err != nil || got != "still here" {
							t.Fatalf("call %d after %s = %q, %v", i, tt.name, got, err)
						}
					}
					after := r.Module(name).Status().Active
					if got := after.Discarded > before.Discarded; got != tt.discarded {
						t.Errorf("instance discarded = %v; want %v", got, tt.discarded)
					}
					wantFailures := uint64(0)
					if tt.wantErr != nil {
						wantFailures = 1
					}
					if got := after.Failures - before.Failures; got != wantFailures {
						t.Errorf("Status() failures grew by %d; want %d", got, wantFailures)
					}
				})
			}

			t.Run("kv", func(t *testing.T) {
				for i, want := range []string{"1", "2"} {
					if got := mustCall(t, r, "count", ""); got != want {
						t.Fatalf("count call %d = %q; want %q", i, got, want)
					}
				}
				mustCall(t, r, "put", "colour=blue")
				if got := mustCall(t, r, "get", "colour"); got != "blue" {
					t.Fatalf("get(colour) = %q; want blue", got)
				}
				if got, ok := r.Module("m").State().Get("colour"); !ok || string(got) != "blue" {
					t.Fatalf("host state colour = %q, %v; want blue", got, ok)
				}
				large := strings.Repeat("v", 20<<10) // more than a guest's first buffer
				mustCall(t, r, "put", "large="+large)
				if got := mustCall(t, r, "get", "large"); got != large {
					t.Fatalf("get(large) = %d bytes; want %d", len(got), len(large))
				}
				mustCall(t, r, "del", "colour")
				if _, err := call(r, "m", "get", "colour"); !errors.Is(err, module.ErrGuest) || !strings.Contains(err.Error(), "missing: colour") {
					t.Fatalf("get(colour) after del = %v; want ErrGuest missing: colour", err)
				}
			})

			t.Run("log", func(t *testing.T) {
				mustCall(t, r, "log", "hello from "+lang.name)
				got := logs.String()
				if !strings.Contains(got, `msg="hello from `+lang.name+`"`) || !strings.Contains(got, "module=m") {
					t.Fatalf("host log = %q; want the guest's line tagged module=m", got)
				}
			})

			// The migrate hook runs once per activation with the version
			// it replaces, "" for the first; host-kept state carries over.
			t.Run("migrate", func(t *testing.T) {
				if got := mustCall(t, r, "get", "migrated"); got != "" {
					t.Fatalf("migrated after the first load = %q; want empty", got)
				}
				mustLoad(t, r, "m", "v2", art)
				if got := mustCall(t, r, "get", "migrated"); got != "v1" {
					t.Fatalf("migrated after loading v2 = %q; want v1", got)
				}
				if got := mustCall(t, r, "count", ""); got != "3" {
					t.Fatalf("count after the swap = %q; want 3", got)
				}
			})

			// A version whose self-test fails is refused with the guest's
			// reason, and the version serving keeps serving.
			t.Run("self-test refused", func(t *testing.T) {
				state := r.Module("m").State()
				state.Set("selftest", []byte("fail"))
				defer state.Delete("selftest")
				err := load(r, "m", "v3", art)
				var le *module.LoadError
				if !errors.Is(err, module.ErrSelfTestFailed) || !errors.As(err, &le) || le.Check != "selftest" {
					t.Fatalf("Load(failing self-test) = %v; want a LoadError from check selftest matching ErrSelfTestFailed", err)
				}
				if !strings.Contains(err.Error(), "self-test: answers are wrong") {
					t.Errorf("Load() = %v; want the guest's reason", err)
				}
				if v := r.Module("m").Status().Active.Version; v != "v2" {
					t.Errorf("active version after the refusal = %s; want v2", v)
				}
				if got := mustCall(t, r, "echo", "v2 serves"); got != "v2 serves" {
					t.Errorf("echo after the refusal = %q", got)
				}
			})
		})
	}
}

// TestSwapAcrossLanguages: versions of one module written in different
// languages replace each other, sharing the host-kept state and migrating
// from each other.
func TestSwapAcrossLanguages(t *testing.T) {
	var arts [][]byte
	for _, lang := range languages {
		arts = append(arts, guest(t, lang))
	}
	r := newRegistry(t, nil)
	for i, art := range append(arts, arts[0]) {
		version := fmt.Sprintf("v%d-%s", i+1, languages[i%len(languages)].name)
		mustLoad(t, r, "m", version, art)
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
