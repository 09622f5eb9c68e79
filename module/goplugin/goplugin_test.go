package goplugin_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/goplugin"
)

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func load(t *testing.T, r *module.Registry, name, version string, so []byte) {
	t.Helper()
	if _, err := r.Load(context.Background(), name, module.Source{Version: version, Artifact: so}); err != nil {
		t.Fatalf("Load(%s@%s) = %v", name, version, err)
	}
}

func call(t *testing.T, r *module.Registry, handler, in string) string {
	t.Helper()
	out, err := r.Call(context.Background(), "echo", handler, []byte(in))
	if err != nil {
		t.Fatalf("Call(%s) = %v", handler, err)
	}
	return string(out)
}

func TestLoadAndCall(t *testing.T) {
	p := plugins(t)
	r, _, _ := newRegistry(t, goplugin.Options{RequiredHandlers: []string{"echo"}})
	load(t, r, "echo", "v1", p.echoA)

	in := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	out, err := r.Call(context.Background(), "echo", "echo", in)
	if err != nil || !bytes.Equal(out, in) {
		t.Fatalf("Call(echo, 1 KiB) = %d bytes, %v; want the input back", len(out), err)
	}
	for want := 1; want <= 3; want++ {
		if got := call(t, r, "count", ""); got != strconv.Itoa(want) {
			t.Fatalf("Call(count) = %s; want %d (kept in the host's state)", got, want)
		}
	}
	m := r.Module("echo")
	if v, ok := m.State().Get("count"); !ok || string(v) != "3" {
		t.Errorf("State().Get(count) = %q, %v; want 3", v, ok)
	}
	if v, ok := m.State().Get("migrated-from"); !ok || string(v) != "" {
		t.Errorf("State().Get(migrated-from) = %q, %v; want \"\" (the migrate hook ran for the first version)", v, ok)
	}

	_, err = r.Call(context.Background(), "echo", "fail", []byte("x"))
	var ce *module.CallError
	if !errors.Is(err, module.ErrGuest) || !errors.As(err, &ce) || ce.Detail != "refused: x" || ce.Version != "v1" {
		t.Errorf("Call(fail) = %v; want ErrGuest from v1 with the handler's text", err)
	}
	if _, err := r.Call(context.Background(), "echo", "nope", nil); !errors.Is(err, module.ErrNoHandler) {
		t.Errorf("Call(nope) = %v; want ErrNoHandler", err)
	}
	st := m.Status()
	if st.Active == nil || st.Active.MemoryBytes == 0 {
		t.Errorf("Status().Active = %+v; want the plugin's mapped size in MemoryBytes", st.Active)
	}
}

// TestRebuildLoadsAndRetiredGetsNoCall loads the same source built twice,
// then the first build again: every load succeeds, the second plugin open
// is a new plugin, the third reuses the first, and the version it retires
// receives no call after its drain.
func TestRebuildLoadsAndRetiredGetsNoCall(t *testing.T) {
	p := plugins(t)
	r, c, _ := newRegistry(t, goplugin.Options{})
	load(t, r, "echo", "v1", p.echoA)
	call(t, r, "echo", "to v1")
	load(t, r, "echo", "v2", p.echoB)
	before := call(t, r, "echoes", "")
	call(t, r, "echo", "to v2")
	if after := call(t, r, "echoes", ""); after == before {
		t.Fatalf("echoes of v2 = %s before and after a call to v2; want the rebuilt plugin to count its own", after)
	}
	retained := c.Retained()
	if len(retained.Versions) != 2 || retained.Versions[0].Digest == retained.Versions[1].Digest {
		t.Fatalf("Retained() = %+v; want two distinct plugins", retained)
	}

	v1 := c.code("v1")
	load(t, r, "echo", "v3", p.echoA) // retires v1: at most two versions serve
	deadline := time.After(10 * time.Second)
	for len(r.Module("echo").Status().Draining) > 0 {
		select {
		case <-deadline:
			t.Fatal("v1 did not finish draining within 10s")
		case <-time.After(5 * time.Millisecond):
		}
	}
	calls := v1.Stats().Calls
	for range 100 {
		call(t, r, "echo", "to v3")
	}
	if got := v1.Stats().Calls; got != calls {
		t.Errorf("v1 served %d calls after its drain; want 0", got-calls)
	}
	if _, err := v1.AppendCall(context.Background(), nil, "echo", []byte("late")); !errors.Is(err, module.ErrDrained) {
		t.Errorf("a call on retired v1 = %v; want ErrDrained (its handlers are dropped)", err)
	}
	if n := len(c.Retained().Versions); n != 2 {
		t.Errorf("Retained() holds %d plugins after reloading the first build; want 2 (the open plugin is reused)", n)
	}
	if st := r.Module("echo").Status(); st.Active == nil || st.Active.Version != "v3" || st.Previous == nil || st.Previous.Version != "v2" {
		t.Errorf("Status() = active %+v, previous %+v; want v3 and v2", st.Active, st.Previous)
	}
}

// TestRefusedBeforeOpen checks that a plugin built unlike the host is
// refused, naming the difference, without being opened: no copy is
// written, nothing is mapped, and the active version keeps serving.
func TestRefusedBeforeOpen(t *testing.T) {
	p := plugins(t)
	r, c, dir := newRegistry(t, goplugin.Options{})
	load(t, r, "echo", "v1", p.echoA)
	for _, tc := range []struct {
		name string
		so   []byte
		what string
	}{
		{"different dependency version", p.depvar, "golang.org/x/sys"},
		{"different flags", p.tagged, "build setting -tags"},
		{"other Go version", p.goVersion, "Go version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Load(context.Background(), "echo", module.Source{Version: "bad", Artifact: tc.so})
			var ie *goplugin.IncompatibleError
			var le *module.LoadError
			if !errors.As(err, &ie) || !errors.As(err, &le) || !errors.Is(err, goplugin.ErrIncompatible) || !errors.Is(err, module.ErrRejected) {
				t.Fatalf("Load() = %v; want a *module.LoadError wrapping an *IncompatibleError", err)
			}
			// A test binary records no dependencies, so there the package
			// fingerprints name the difference in golang.org/x/sys.
			if !strings.Contains(ie.What, tc.what) || le.Check != "compat" {
				t.Errorf("Load() refused %q at check %q; want %q at compat", ie.What, le.Check, tc.what)
			}
			if ie.Host == ie.Plugin || !strings.Contains(err.Error(), ie.Host) || !strings.Contains(err.Error(), ie.Plugin) {
				t.Errorf("Load() = %v; want both sides of the difference named", err)
			}
			d := digest(tc.so)[:16]
			if files := filesWith(t, dir, d); len(files) > 0 || mapped(t, d) {
				t.Errorf("refused plugin was copied (%v) or mapped; want neither before the check passes", files)
			}
			for _, v := range c.Retained().Versions {
				if v.Digest == digest(tc.so) {
					t.Errorf("Retained() lists the refused plugin")
				}
			}
			if got := call(t, r, "echo", "still"); got != "still" {
				t.Errorf("Call() after the refusal = %q; want v1 still serving", got)
			}
		})
	}
}

func TestRetainedCap(t *testing.T) {
	p := plugins(t)
	r, c, _ := newRegistry(t, goplugin.Options{MaxRetained: 1})
	load(t, r, "echo", "v1", p.echoA)
	_, err := r.Load(context.Background(), "echo", module.Source{Version: "v2", Artifact: p.echoB})
	var re *goplugin.RetainedError
	if !errors.As(err, &re) || !errors.Is(err, goplugin.ErrRetainedLimit) || !errors.Is(err, module.ErrLimitExceeded) {
		t.Fatalf("Load() past the cap = %v; want a *RetainedError", err)
	}
	if re.Retained != 1 || re.Max != 1 {
		t.Errorf("RetainedError = %+v; want 1 of 1", re)
	}
	const documented = "too many plugin versions retained: this process holds 1 plugin versions (MaxRetained 1) and Go cannot unload them " +
		"(golang/go#20461); a binary upgrade (hotswap upgrade) sheds them; the active version keeps serving"
	if re.Error() != documented {
		t.Errorf("RetainedError.Error() = %q; want %q", re.Error(), documented)
	}
	if got := call(t, r, "echo", "still"); got != "still" {
		t.Errorf("Call() after the refusal = %q; want v1 still serving", got)
	}
	// Reloading the plugin already held is not a new plugin.
	load(t, r, "echo", "v1-again", p.echoA)
	if got := c.Retained(); len(got.Versions) != 1 || got.Max != 1 || got.MappedBytes == 0 {
		t.Errorf("Retained() = %+v; want the one plugin, with its mapped size", got)
	}
}

func TestPanicFailsOnlyItsCall(t *testing.T) {
	p := plugins(t)
	r, _, _ := newRegistry(t, goplugin.Options{})
	load(t, r, "echo", "v1", p.echoA)
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				in := []byte(strconv.Itoa(g*100 + i))
				if g%2 == 0 {
					_, err := r.Call(context.Background(), "echo", "panic", in)
					var ce *module.CallError
					if !errors.Is(err, module.ErrTrapped) || !errors.As(err, &ce) || !strings.HasPrefix(ce.Detail, "panic: boom: "+string(in)) {
						errs <- err
					}
					continue
				}
				out, err := r.Call(context.Background(), "echo", "echo", in)
				if err != nil || !bytes.Equal(out, in) {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call went wrong beside panicking calls: %v", err)
	}
	st := r.Module("echo").Status()
	if st.Active == nil || st.Active.Failures != 100 || st.Active.Discarded != 100 {
		t.Errorf("Status().Active = %+v; want 100 failures, all panics", st.Active)
	}
}

func TestSelfTestRefuses(t *testing.T) {
	p := plugins(t)
	r, _, _ := newRegistry(t, goplugin.Options{})
	load(t, r, "echo", "v1", p.echoA)
	r.Module("echo").State().Set("fail-selftest", []byte("yes"))
	_, err := r.Load(context.Background(), "echo", module.Source{Version: "v2", Artifact: p.echoB})
	var le *module.LoadError
	if !errors.As(err, &le) || le.Check != "selftest" || !errors.Is(err, module.ErrSelfTestFailed) {
		t.Fatalf("Load() with a failing self-test = %v; want a selftest LoadError", err)
	}
	if st := r.Module("echo").Status(); st.Active == nil || st.Active.Version != "v1" {
		t.Errorf("Status().Active = %+v; want v1 still active", st.Active)
	}
}

func TestNotAPlugin(t *testing.T) {
	r, _, _ := newRegistry(t, goplugin.Options{})
	for name, so := range map[string][]byte{
		"empty": nil,
		"wasm":  []byte("\x00asm\x01\x00\x00\x00"),
		"text":  []byte("#!/bin/sh\necho hi\n"),
	} {
		_, err := r.Load(context.Background(), "echo", module.Source{Version: name, Artifact: so})
		var le *module.LoadError
		if !errors.As(err, &le) || le.Check != "validate" || !errors.Is(err, goplugin.ErrNotPlugin) || !errors.Is(err, module.ErrInvalidModule) {
			t.Errorf("Load(%s) = %v; want a validate LoadError matching ErrNotPlugin and ErrInvalidModule", name, err)
		}
	}
}

// TestPricingExample loads the example's v2, the source `hotswap demo`
// builds to WebAssembly, as a Go plugin and asks for a quote: the same
// handlers, self-test, migrate hook and host-kept counter.
func TestPricingExample(t *testing.T) {
	p := plugins(t)
	r, _, _ := newRegistry(t, goplugin.Options{RequiredHandlers: []string{"quote"}})
	load(t, r, "pricing", "v2", p.pricing)
	m := r.Module("pricing")
	for want := 1; want <= 2; want++ {
		out, err := m.Call(context.Background(), "quote", []byte(`{"item":"apple","qty":10}`))
		if err != nil {
			t.Fatalf("Call(quote) = %v", err)
		}
		var price struct {
			UnitCents, DiscountCents, TotalCents, Quotes int64
			Version                                      string
		}
		if err := json.Unmarshal(out, &price); err != nil {
			t.Fatalf("Call(quote) = %s: %v", out, err)
		}
		if price.Version != "v2" || price.DiscountCents != price.UnitCents || price.TotalCents != 9*price.UnitCents || price.Quotes != int64(want) {
			t.Errorf("Call(quote) = %s; want v2's 10%% discount on 10 apples, quote number %d", out, want)
		}
	}
	if v, ok := m.State().Get("schema"); !ok || string(v) != "2" {
		t.Errorf("State().Get(schema) = %q, %v; want 2, set by v2's migrate hook", v, ok)
	}
	if _, err := m.Call(context.Background(), "quote", []byte(`{"qty":1}`)); !errors.Is(err, module.ErrGuest) {
		t.Errorf("Call(quote) without an item = %v; want ErrGuest", err)
	}
}

// TestNoLeaks loads, calls, refuses and closes, and wants the goroutines
// and file descriptors it started with back.
func TestNoLeaks(t *testing.T) {
	p := plugins(t)
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	goroutines, files := runtime.NumGoroutine(), fds()
	func() {
		b, _ := newBackend(t, goplugin.Options{})
		r, err := module.New(module.Options{Backend: b, DrainTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for i, so := range [][]byte{p.echoA, p.echoB, p.echoA, p.tagged} {
			r.Load(context.Background(), "echo", module.Source{Version: strconv.Itoa(i), Artifact: so})
			r.Call(context.Background(), "echo", "echo", []byte("x"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Fatalf("Close() = %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("%d goroutines after Close; want at most the %d before", n, goroutines)
	}
	if n := fds(); n > files {
		t.Errorf("%d open files after Close; want at most the %d before", n, files)
	}
}
