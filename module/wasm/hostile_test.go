package wasm_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/hostile"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// hostileConfig is what each hostile module runs with: deadlines short
// enough that the suite is quick, long enough that a stack overflow or a
// table limit is reached first under the race detector; a yield after every
// call so that a runaway yield shows at once; and a quarter of the default
// stack, because wazero walks every frame of a trapped call's stack in Go,
// which the race detector slows past a second at the default depth.
func hostileConfig(grants []string) wasm.ModuleConfig {
	cfg := wasm.ModuleConfig{CallTimeout: time.Second, InitTimeout: time.Second, MaxStack: wasm.DefaultMaxStack / 4,
		MemoryLimit: 64 << 20, MinInstances: 1, MaxInstances: 2, MaintainEvery: 1, LogLimit: 100}
	for _, g := range grants {
		cfg.Grants = append(cfg.Grants, wasm.Capability(g))
	}
	return cfg
}

// guestLines counts the guest log lines that reached the logger.
type guestLines struct{ n atomic.Int64 }

func (g *guestLines) Enabled(context.Context, slog.Level) bool { return true }
func (g *guestLines) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "source" && a.Value.String() == "guest" {
			g.n.Add(1)
		}
		return true
	})
	return nil
}
func (g *guestLines) WithAttrs([]slog.Attr) slog.Handler { return g }
func (g *guestLines) WithGroup(string) slog.Handler      { return g }

// TestHostileModules loads every hostile module into a registry while a
// healthy Go module serves calls and a plain goroutine measures how long it
// is kept from running: the process survives, every load and call ends
// within seconds with the answer the case wants (a *module.LoadError naming
// its check, or a *module.CallError with the right sentinel), the healthy
// module answers every call, and no goroutine is held up for long.
func TestHostileModules(t *testing.T) {
	cases := hostile.Cases()
	modules := map[string]wasm.ModuleConfig{}
	for _, c := range cases {
		cfg := hostileConfig(c.Grants)
		if !errors.Is(c.Want.Err, module.ErrTimeout) {
			// A case that must end by its own fault (a refused table or
			// memory growth) gets time to reach it on a loaded machine:
			// growing a table to the memory limit took over a second
			// under the race detector at load average 6.
			cfg.CallTimeout = 10 * time.Second
		}
		modules[c.Name] = cfg
	}
	lines := &guestLines{}
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(), Modules: modules, Logger: slog.New(lines),
		Default: wasm.ModuleConfig{Grants: kv, MinInstances: 2, CallTimeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := module.New(module.Options{Backend: b, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close() = %v", err)
		}
	}()
	load(t, r, "healthy", "v1", echo(t, "v1"))
	healthy := r.Module("healthy")

	probe := hostile.StartProbe(time.Millisecond)

	// Bounds for a machine of two shared cores under the race detector;
	// bench/modcall measures the stall without it.
	const (
		stepLimit   = 30 * time.Second
		stallLimit  = 2 * time.Second
		healthLimit = 2 * time.Second
	)
	echo := func(ctx context.Context) error {
		out, err := healthy.Call(ctx, "echo", []byte("ping"))
		if err == nil && string(out) != "ping" {
			err = fmt.Errorf("echo answered %q", out)
		}
		return err
	}
	s := serveDuring(t, echo, func() {
		for _, c := range cases {
			t.Run(c.Name, func(t *testing.T) {
				probe.Reset()
				res, err := hostile.Check(context.Background(), r, c, stepLimit)
				if err != nil {
					t.Fatalf("%s (%s): %v", c.Name, c.What, err)
				}
				if stall := probe.Max(); stall > stallLimit {
					t.Errorf("a goroutine was kept from running for %v; want ≤ %v", stall, stallLimit)
				}
				t.Logf("load %v, call %v, stall %v: %v", res.Load.Round(time.Microsecond), res.Call.Round(time.Microsecond),
					probe.Max().Round(time.Microsecond), res.Err)
			})
		}
	})
	probe.Stop()
	if len(s.failures) > 0 || s.calls == 0 {
		t.Fatalf("healthy module: %d calls, %d failed (first: %v); want >0 calls, none failed", s.calls, len(s.failures), s.failures)
	}
	if s.slowest > healthLimit {
		t.Errorf("healthy module: slowest call %v; want ≤ %v", s.slowest, healthLimit)
	}
	if n := lines.n.Load(); n > 1000 {
		t.Errorf("%d guest log lines reached the logger; want the rate limit (100 a second) to hold them back", n)
	}
	t.Logf("healthy module: %d calls, slowest %v; guest log lines logged: %d", s.calls, s.slowest, lines.n.Load())
}
