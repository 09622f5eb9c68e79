package wasm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
)

// prepareEcho prepares the echo guest with two instances, closed when the
// test ends.
func prepareEcho(t *testing.T) *code {
	t.Helper()
	bin, err := guestbuild.Bytes("./internal/testguests/echo", "-X main.version=v1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := New(Options{CacheDir: SharedTestCacheDir(),
		Default: ModuleConfig{Grants: []Capability{CapKV}, MinInstances: 2, CallTimeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	mc, err := b.Prepare(ctx, module.Spec{Module: "m", Version: "v1", Artifact: bin, State: module.NewKV()})
	if err != nil {
		t.Fatal(err)
	}
	c := mc.(*code)
	if err := c.Migrate(ctx, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close(context.Background())
		b.Close(context.Background())
	})
	return c
}

// TestHaltAfterReturnPoisonsOnlyThatInstance: a stop that lands just after
// a call returned (the watchdog or a context racing the call's end) leaves
// the flag set; the instance's next call must fail with the recorded cause
// and discard it, and other instances must be untouched.
func TestHaltAfterReturnPoisonsOnlyThatInstance(t *testing.T) {
	c := prepareEcho(t)
	ctx := context.Background()
	a, err := c.pool.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.pool.get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out, dead, err := a.do(ctx, c, nil, c.handlers["echo"], []byte("x")); string(out) != "x" || dead || err != nil {
		t.Fatalf("do(echo) = %q, dead %v, %v; want x", out, dead, err)
	}
	a.halt(errWatchdog)
	a.halt(errDrained) // a later cause does not replace the first
	// A short call may finish before it reads the flag (every
	// guard.FuelPerYield units of work), but the instance is dead.
	if _, dead, err := a.do(ctx, c, nil, c.handlers["echo"], []byte("x")); !dead || (err != nil && !errors.Is(err, module.ErrTimeout)) {
		t.Fatalf("do(echo) on a halted instance = dead %v, %v; want dead", dead, err)
	}
	_, dead, err := a.do(ctx, c, nil, c.handlers["loop"], nil)
	if !dead || !errors.Is(err, module.ErrTimeout) {
		t.Fatalf("do(loop) on a halted instance = dead %v, %v; want dead and ErrTimeout, the first cause", dead, err)
	}
	if out, dead, err := b.do(ctx, c, nil, c.handlers["echo"], []byte("y")); string(out) != "y" || dead || err != nil {
		t.Fatalf("do(echo) on another instance = %q, dead %v, %v; want y", out, dead, err)
	}
	c.pool.done(a, true, true)
	c.pool.done(b, false, false)
	if st := c.Stats(); st.Discarded != 1 {
		t.Fatalf("Stats().Discarded = %d; want 1", st.Discarded)
	}
}

// TestCallerContextHaltsCall: a caller's context ending during a call halts
// it; the call fails with the context's error and the instance
// is discarded.
func TestCallerContextHaltsCall(t *testing.T) {
	c := prepareEcho(t)
	inst, err := c.pool.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, dead, err := inst.do(ctx, c, nil, c.handlers["loop"], nil)
	if !dead || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("do(loop) past the caller's deadline = dead %v, %v; want dead and DeadlineExceeded", dead, err)
	}
	c.pool.done(inst, dead, true)
}
