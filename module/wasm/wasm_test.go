package wasm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

var kv = []wasm.Capability{wasm.CapKV}

func pricing(t testing.TB, variant string) []byte {
	return guest(t, "./examples/pricing/guests/"+variant, "")
}

type price struct {
	Version    string `json:"version"`
	TotalCents int64  `json:"total_cents"`
	Quotes     int64  `json:"quotes"`
}

func quote(ctx context.Context, m *module.Module, item string, qty int) (price, error) {
	out, err := m.Call(ctx, "quote", fmt.Appendf(nil, `{"item":%q,"qty":%d}`, item, qty))
	if err != nil {
		return price{}, err
	}
	var p price
	return p, json.Unmarshal(out, &p)
}

// served is what serveDuring saw.
type served struct {
	calls    int
	failures []error
	slowest  time.Duration
}

// serveDuring makes calls from two goroutines while f runs, and returns
// how many were made, which failed and the slowest. Each caller pauses
// briefly between calls, so that the load under test (a compile, on a
// machine of two cores) is not starved.
func serveDuring(t *testing.T, call func(context.Context) error, f func()) served {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex // protects s
	var s served
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				start := time.Now()
				err := call(ctx)
				d := time.Since(start)
				cancel()
				mu.Lock()
				s.calls++
				s.slowest = max(s.slowest, d)
				if err != nil {
					s.failures = append(s.failures, err)
				}
				mu.Unlock()
				time.Sleep(200 * time.Microsecond) // pacing, not synchronisation
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return s.calls }
	waitFor(t, "calls before", func() bool { return count() > 0 })
	f()
	after := count()
	waitFor(t, "calls after", func() bool { return count() > after+10 })
	close(stop)
	wg.Wait()
	return s
}

// quoteFrom returns a call of m's quote handler that must be answered by
// version want.
func quoteFrom(m *module.Module, want string) func(context.Context) error {
	return func(ctx context.Context) error {
		p, err := quote(ctx, m, "apple", 1)
		if err == nil && p.Version != want {
			err = fmt.Errorf("served by %q; want %q", p.Version, want)
		}
		return err
	}
}

// TestBrokenArtifactsRefused loads each broken Go artifact over a serving
// v1: each is refused with a LoadError naming its check and a specific
// sentinel, and v1 serves every call made meanwhile. (A refused module's
// compiled code is not cached, so each costs a cold compile: the other
// kinds of refusal are covered by hand-made modules in
// TestHostileModules.)
func TestBrokenArtifactsRefused(t *testing.T) {
	base := wasm.ModuleConfig{Grants: kv, InitTimeout: time.Second, MemoryLimit: 64 << 20, RequiredHandlers: []string{"quote"}}
	echoCfg := wasm.ModuleConfig{Grants: kv, InitTimeout: time.Second}
	bomb := base
	bomb.InitTimeout, bomb.MemoryLimit = 30*time.Second, 32<<20
	tests := []struct {
		name     string
		artifact func(testing.TB) []byte
		cfg      wasm.ModuleConfig
		check    string
		want     error
		detail   string
	}{
		{"trap in init", func(t testing.TB) []byte { return pricing(t, "broken/trapinit") }, base, "init", module.ErrInitFailed, "pricing table missing"},
		{"memory bomb", func(t testing.TB) []byte { return pricing(t, "broken/membomb") }, bomb, "init", module.ErrMemoryLimit, "out of memory"},
		{"missing export", func(t testing.TB) []byte { return pricing(t, "broken/noexport") }, base, "exports", module.ErrMissingExport, "hotswap_"},
		{"missing handler", func(t testing.TB) []byte { return echo(t, "v1") }, base, "exports", module.ErrMissingExport, `"quote"`},
		{"self-test fails", func(t testing.TB) []byte {
			return guest(t, "./internal/testguests/echo", "-X main.selfTest=fail")
		}, echoCfg, "selftest", module.ErrSelfTestFailed, "answers are wrong"},
		{"migrate fails", func(t testing.TB) []byte {
			return guest(t, "./internal/testguests/echo", "-X main.migrateResult=fail")
		}, echoCfg, "migrate", module.ErrMigrateFailed, "cannot migrate state from v1"},
		{"not WebAssembly", func(testing.TB) []byte { return []byte("#!/bin/sh\necho pwned\n") }, base, "validate", module.ErrInvalidModule, ""},
	}
	v1 := pricing(t, "v1")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			art := tt.artifact(t)
			r := newRegistry(t, tt.cfg)
			load(t, r, "pricing", "v1", v1)
			m := r.Module("pricing")
			var err error
			s := serveDuring(t, quoteFrom(m, "v1"), func() {
				// A refused module's compiled code is not cached, so this
				// compiles cold: under the race detector, minutes.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				_, err = r.Load(ctx, "pricing", module.Source{Version: "broken", Artifact: art})
			})
			var le *module.LoadError
			if !errors.As(err, &le) {
				t.Fatalf("Load() = %v; want a *module.LoadError", err)
			}
			if le.Check != tt.check || !errors.Is(err, tt.want) || !errors.Is(err, module.ErrRejected) {
				t.Fatalf("Load() = %v (check %q); want check %q matching %v and ErrRejected", err, le.Check, tt.check, tt.want)
			}
			if !strings.Contains(err.Error(), tt.detail) || !strings.Contains(err.Error(), "pricing@broken") {
				t.Errorf("Load() = %q; want it to name pricing@broken and contain %q", err, tt.detail)
			}
			if len(s.failures) > 0 || s.calls == 0 {
				t.Fatalf("while refusing: %d calls, %d failed (first: %v); want >0 calls, none failed", s.calls, len(s.failures), s.failures)
			}
			st := m.Status()
			if st.Active == nil || st.Active.Version != "v1" || st.Previous != nil {
				t.Fatalf("Status() = %+v; want v1 active and nothing else", st)
			}
		})
	}
}

func TestCapabilityDenied(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{}) // no grants
	_, err := r.Load(context.Background(), "pricing", module.Source{Version: "v1", Artifact: pricing(t, "v1")})
	var le *module.LoadError
	if !errors.As(err, &le) || le.Check != "capabilities" || !errors.Is(err, module.ErrCapabilityDenied) ||
		!strings.Contains(err.Error(), `hotswap.kv_add, which needs capability "kv"`) {
		t.Fatalf("Load() = %v; want capabilities check naming hotswap.kv_add and capability kv", err)
	}
}

// TestCallFailuresAreIsolated: a failing call fails alone; the version keeps
// serving from other instances.
func TestCallFailuresAreIsolated(t *testing.T) {
	tests := []struct {
		name      string
		handler   string
		in        string
		want      error
		detail    string
		discarded bool
	}{
		{"guest error", "fail", "no stock", module.ErrGuest, "refused: no stock", false},
		{"panic", "panic", "boom", module.ErrTrapped, "handler panicked: boom", true},
		{"unknown handler", "nope", "", module.ErrNoHandler, `"nope"`, false},
		{"memory blow-up", "big", "100000000", module.ErrMemoryLimit, "out of memory", true},
		{"output too large", "big", "2000000", module.ErrTooLarge, "MaxOutput", false},
		{"runaway loop", "loop", "", module.ErrTimeout, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, wasm.ModuleConfig{Grants: kv, MemoryLimit: 64 << 20,
				MaxOutput: 1 << 20, CallTimeout: 200 * time.Millisecond, MinInstances: 1})
			load(t, r, "m", "v1", echo(t, "v1"))
			m := r.Module("m")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			_, err := m.Call(ctx, tt.handler, []byte(tt.in))
			elapsed := time.Since(start)
			var ce *module.CallError
			if !errors.Is(err, tt.want) || !errors.As(err, &ce) || ce.Module != "m" || ce.Version != "v1" || ce.Handler != tt.handler {
				t.Fatalf("Call(%s) = %v; want a CallError from m@v1 %s matching %v", tt.handler, err, tt.handler, tt.want)
			}
			if !strings.Contains(ce.Detail, tt.detail) {
				t.Errorf("Detail = %q; want it to contain %q", ce.Detail, tt.detail)
			}
			if tt.want == module.ErrTimeout && (elapsed < 200*time.Millisecond || elapsed > 2*time.Second) {
				t.Errorf("runaway call stopped after %v; want between the 200ms timeout and 2s", elapsed)
			}
			for i := range 3 {
				if got := call(t, r, "m", "echo", "still here"); got != "still here" {
					t.Fatalf("call %d after the failure = %q", i, got)
				}
			}
			st := m.Status().Active
			if got := st.Discarded > 0; got != tt.discarded {
				t.Errorf("instance discarded = %v; want %v", got, tt.discarded)
			}
			if st.Failures != 1 || st.Calls < 4 {
				t.Errorf("Status() calls %d failures %d; want ≥4 calls and 1 failure", st.Calls, st.Failures)
			}
		})
	}
}

func TestCancelStopsCall(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv, CallTimeout: time.Minute, MinInstances: 1})
	load(t, r, "m", "v1", echo(t, "v1"))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := r.Call(ctx, "m", "loop", nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Call(loop) cancelled = %v; want context.Canceled", err)
	}
	if got := call(t, r, "m", "version", ""); got != "v1" {
		t.Fatalf("after cancel: version = %q", got)
	}
}

// callTimeouts are the two deadline modes: none, and one longer than any
// test.
var callTimeouts = []time.Duration{wasm.NoCallTimeout, time.Minute}

func TestInFlightCallFinishesOnOldVersion(t *testing.T) {
	for _, timeout := range callTimeouts {
		t.Run(fmt.Sprintf("CallTimeout=%v", timeout), func(t *testing.T) {
			r := newRegistry(t, wasm.ModuleConfig{CallTimeout: timeout, Grants: kv})
			precompile(t, r, echo(t, "v2"))
			load(t, r, "m", "v1", echo(t, "v1"))
			m := r.Module("m")
			done := make(chan string, 1)
			go func() {
				out, err := m.Call(context.Background(), "wait", []byte("release"))
				if err != nil {
					out = []byte(err.Error())
				}
				done <- string(out)
			}()
			waitFor(t, "the slow call to start", func() bool {
				st := m.Status()
				return st.Active.InFlight == 1
			})
			load(t, r, "m", "v2", echo(t, "v2"))
			if got := call(t, r, "m", "version", ""); got != "v2" {
				t.Fatalf("new call after swap = %q; want v2", got)
			}
			if st := m.Status(); st.Previous.InFlight != 1 {
				t.Fatalf("previous version in flight = %d; want 1", st.Previous.InFlight)
			}
			m.State().Set("release", nil)
			select {
			case got := <-done:
				if got != "v1" {
					t.Fatalf("in-flight call answered %q; want v1 (the version it started on)", got)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("in-flight call never finished")
			}
		})
	}
}

func TestRollbackIsInstant(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv})
	load(t, r, "m", "v1", echo(t, "v1"))
	m := r.Module("m")
	call(t, r, "m", "echo", "x")
	before := *m.Status().Active
	load(t, r, "m", "v2", echo(t, "v2"))
	start := time.Now()
	st, err := r.Rollback(context.Background(), "m")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Rollback() = %v", err)
	}
	t.Logf("rollback took %v", took)
	// The version rolled back to is the very one that served before: same
	// load time, its call count continues, its instances were kept.
	if st.Version != "v1" || !st.LoadedAt.Equal(before.LoadedAt) || st.Calls != before.Calls || st.Instances != before.Instances {
		t.Fatalf("Rollback() = %+v; want the warm v1 %+v", st, before)
	}
	if took > time.Second {
		t.Errorf("rollback took %v; it should only swap a pointer", took)
	}
	if got := call(t, r, "m", "version", ""); got != "v1" {
		t.Fatalf("after rollback: version = %q", got)
	}
}

func TestConcurrentLoadsOneWins(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv})
	v1, v2 := echo(t, "v1"), echo(t, "v2")
	load(t, r, "m", "v0", v1)
	sawBusy := false
	for attempt := 0; attempt < 10 && !sawBusy; attempt++ {
		start := make(chan struct{})
		errs := make(chan error, 2)
		for i, art := range [][]byte{v1, v2} {
			go func() {
				<-start
				_, err := r.Load(context.Background(), "m", module.Source{Version: fmt.Sprint("v", i+1), Artifact: art})
				errs <- err
			}()
		}
		close(start)
		var ok, busy int
		for range 2 {
			switch err := <-errs; {
			case err == nil:
				ok++
			case errors.Is(err, module.ErrBusy):
				busy++
			default:
				t.Fatalf("Load() = %v; want nil or ErrBusy", err)
			}
		}
		if ok == 0 {
			t.Fatalf("both concurrent loads failed")
		}
		sawBusy = busy == 1
	}
	if !sawBusy {
		t.Fatal("ten rounds of two concurrent loads never overlapped")
	}
}

func TestStateSurvivesSwaps(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv})
	m := r.Module("pricing")
	ctx := context.Background()
	load(t, r, "pricing", "v1", pricing(t, "v1"))
	for i := 1; i <= 3; i++ {
		p, err := quote(ctx, m, "apple", 1)
		if err != nil || p.Quotes != int64(i) || p.Version != "v1" {
			t.Fatalf("quote %d = %+v, %v", i, p, err)
		}
	}
	load(t, r, "pricing", "v2", pricing(t, "v2"))
	p, err := quote(ctx, m, "apple", 10)
	if err != nil || p.Quotes != 4 || p.Version != "v2" {
		t.Fatalf("quote after swap = %+v, %v; want v2 with counter 4", p, err)
	}
	if v, _ := m.State().Get("schema"); string(v) != "2" {
		t.Errorf("schema after v2's migrate hook = %q; want 2", v)
	}
	if _, err := r.Rollback(ctx, "pricing"); err != nil {
		t.Fatal(err)
	}
	p, err = quote(ctx, m, "apple", 1)
	if err != nil || p.Quotes != 5 || p.Version != "v1" {
		t.Fatalf("quote after rollback = %+v, %v; want v1 with counter 5", p, err)
	}
}

func TestGuestGarbageCollectionKeepsUp(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv, MinInstances: 1, MaxInstances: 2})
	load(t, r, "m", "v1", echo(t, "v1"))
	m := r.Module("m")
	ctx := context.Background()
	const calls = 5000 // 1.25 GB of garbage at 256 KiB per call
	for i := range calls {
		if _, err := m.Call(ctx, "alloc", []byte("x")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	st := m.Status().Active
	if st.MemoryBytes > 128<<20 {
		t.Fatalf("guest memory after %d allocating calls = %d MiB on %d instances; want ≤ 128 MiB", calls, st.MemoryBytes>>20, st.Instances)
	}
	t.Logf("guest memory %d MiB on %d instances", st.MemoryBytes>>20, st.Instances)
}

func TestNoLeaksAfterClose(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	fds := openFDs(t)
	for _, timeout := range []time.Duration{wasm.NoCallTimeout, 100 * time.Millisecond} {
		b, err := wasm.New(wasm.Options{CacheDir: cacheDir(), Default: wasm.ModuleConfig{CallTimeout: timeout, Grants: kv}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := module.New(module.Options{Backend: b, DrainTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			load(t, r, "m", fmt.Sprint("v", i), echo(t, fmt.Sprint("v", i%2)))
			call(t, r, "m", "echo", "x")
			r.Call(context.Background(), "m", "panic", nil)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := r.Close(ctx); err != nil {
			t.Fatalf("Close() = %v", err)
		}
		cancel()
	}
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= goroutines })
	if got := openFDs(t); got > fds {
		t.Errorf("open file descriptors %d after Close; %d before", got, fds)
	}
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSwapUnderLoad swaps between two real versions while calls run: no
// call fails and each sees a whole version.
func TestSwapUnderLoad(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv})
	v1, v2 := echo(t, "v1"), echo(t, "v2")
	load(t, r, "m", "v1", v1)
	m := r.Module("m")
	var calls atomic.Int64
	var failed []error
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				out, err := m.Call(context.Background(), "version", nil)
				if err == nil && string(out) != "v1" && string(out) != "v2" {
					err = fmt.Errorf("answer %q", out)
				}
				if err != nil {
					mu.Lock()
					failed = append(failed, err)
					mu.Unlock()
				}
				calls.Add(1)
			}
		})
	}
	for i := range 20 {
		art := v1
		if i%2 == 0 {
			art = v2
		}
		load(t, r, "m", fmt.Sprint("v", i), art)
	}
	close(stop)
	wg.Wait()
	if len(failed) > 0 || calls.Load() == 0 {
		t.Fatalf("%d calls, %d failed (first: %v)", calls.Load(), len(failed), failed)
	}
}

// TestDrainDeadlineStopsCall: a call still running on a retired version
// when the drain deadline passes is stopped and fails with ErrDrained, with
// or without a call deadline; the serving version is untouched.
func TestDrainDeadlineStopsCall(t *testing.T) {
	for _, timeout := range callTimeouts {
		t.Run(fmt.Sprintf("CallTimeout=%v", timeout), func(t *testing.T) { testDrainDeadlineStopsCall(t, timeout) })
	}
}

func testDrainDeadlineStopsCall(t *testing.T, timeout time.Duration) {
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(), Default: wasm.ModuleConfig{Grants: kv, CallTimeout: timeout}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := module.New(module.Options{Backend: b, DrainTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	precompile(t, r, echo(t, "v2"), echo(t, "v3"))
	load(t, r, "m", "v1", echo(t, "v1"))
	m := r.Module("m")
	done := make(chan error, 1)
	go func() {
		_, err := m.Call(context.Background(), "wait", []byte("never-set"))
		done <- err
	}()
	waitFor(t, "the call to start", func() bool { return m.Status().Active.InFlight == 1 })
	load(t, r, "m", "v2", echo(t, "v2"))
	load(t, r, "m", "v3", echo(t, "v3")) // retires v1
	select {
	case err := <-done:
		var ce *module.CallError
		if !errors.Is(err, module.ErrDrained) || !errors.As(err, &ce) || ce.Version != "v1" {
			t.Fatalf("call past the drain deadline = %v; want ErrDrained from m@v1", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the call was not stopped at the drain deadline")
	}
	if got := call(t, r, "m", "version", ""); got != "v3" {
		t.Fatalf("version = %q; want v3", got)
	}
}

// TestRunawayCallLetsTheWorldStop: a guest looping in machine code cannot
// be preempted, so a call must leave it regularly, or the Go
// garbage collector's stop-the-world phase (and with it the whole process,
// the watchdog included) would wait for the loop forever.
func TestRunawayCallLetsTheWorldStop(t *testing.T) {
	r := newRegistry(t, wasm.ModuleConfig{Grants: kv, CallTimeout: 3 * time.Second, MinInstances: 1})
	load(t, r, "m", "v1", echo(t, "v1"))
	m := r.Module("m")
	done := make(chan error, 1)
	go func() {
		_, err := m.Call(context.Background(), "loop", nil)
		done <- err
	}()
	waitFor(t, "the loop to start", func() bool { return m.Status().Active.InFlight == 1 })
	start := time.Now()
	runtime.GC()
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("runtime.GC() took %v while a guest looped; want well under the 3s call timeout", elapsed)
	}
	select {
	case err := <-done:
		if !errors.Is(err, module.ErrTimeout) {
			t.Fatalf("Call(loop) = %v; want ErrTimeout", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the runaway call was never stopped")
	}
}
