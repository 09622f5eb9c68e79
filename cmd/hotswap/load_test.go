package main

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoadUnderLoad swaps pricing v1 for v2 with the CLI while calls run
// without pause, and checks that none failed.
func TestLoadUnderLoad(t *testing.T) {
	s := newService(t, serviceOptions{})
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV1, "pricing-v1.wasm", "v1"))
	v2 := s.artifact(t, guestV2, "pricing-v2.wasm", "v2")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var calls, failed, onV2 atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				v, err := s.quote(ctx)
				calls.Add(1)
				switch {
				case err != nil:
					if failed.Add(1) <= 3 {
						t.Errorf("call during the load = %v", err)
					}
				case v == "v2":
					onV2.Add(1)
				}
			}
		})
	}
	// Bounded waits, not sleeps: a starved -race run may be slow.
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Errorf("no %s within 30s", what)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("100 calls before the load", func() bool { return calls.Load() >= 100 })
	before := calls.Load()
	out, errOut, code, err := ctl(t, s.socket, "load", "pricing", v2)
	if code == 0 {
		waitFor("100 calls answered by v2", func() bool { return onV2.Load() >= 100 })
	}
	close(stop)
	wg.Wait()

	if code != 0 {
		t.Fatalf("hotswap load = %v (exit %d)\n%s", err, code, errOut)
	}
	t.Logf("%d calls (%d before the load, %d answered by v2), %d failed", calls.Load(), before, onV2.Load(), failed.Load())
	if failed.Load() != 0 || before == 0 || onV2.Load() == 0 {
		t.Errorf("calls = %d (%d before the load), failed = %d, answered by v2 = %d; want 0 failed, calls before and on v2",
			calls.Load(), before, failed.Load(), onV2.Load())
	}
	if !strings.HasPrefix(out, "pricing@v2 serves (sha256:") || !strings.Contains(out, "pricing@v1 is kept warm for rollback") {
		t.Errorf("hotswap load output = %q; want \"pricing@v2 serves …; pricing@v1 is kept warm for rollback\"", out)
	}
	var steps []string
	for _, line := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			steps = append(steps, f[1])
		}
	}
	if got := strings.Join(steps, " "); got != "verify prepare store activate" {
		t.Errorf("hotswap load progress = %q (steps %q); want verify, prepare, store, activate", errOut, got)
	}
	if !strings.Contains(errOut, "prepare   v2@sha256:") || !strings.Contains(errOut, "(compile, validate, pre-warm)") {
		t.Errorf("hotswap load progress = %q; want the prepare step to name the version and what it does", errOut)
	}
}

func TestLoadRefused(t *testing.T) {
	s := newService(t, serviceOptions{})
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV1, "pricing-v1.wasm", "v1"))
	tests := []struct {
		name    string
		path    func() string
		code    int
		wantMsg string
	}{
		{"trap in init", func() string { return s.artifact(t, guestTrapInit, "pricing-v3.wasm", "v3") }, 1,
			"load pricing refused: pricing@v3: init check failed: "},
		{"tampered", func() string {
			p := s.artifact(t, guestV2, "pricing-tampered.wasm", "v2")
			f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte{0})
			f.Close()
			return p
		}, 1, "load pricing refused: pricing-tampered.wasm: digest check failed: "},
		{"unsigned", func() string { return s.artifact(t, guestV2, "pricing-unsigned.wasm", "") }, 1,
			"load pricing refused: pricing-unsigned.wasm: policy check failed: "},
		{"no such file", func() string { return s.dir + "/nope.wasm" }, 1, "load pricing: read artifact: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, code, err := ctl(t, s.socket, "load", "pricing", tt.path())
			if code != tt.code || err == nil {
				t.Fatalf("hotswap load = %v (exit %d), output %q; want exit %d", err, code, out, tt.code)
			}
			if !strings.HasPrefix(err.Error(), tt.wantMsg) {
				t.Errorf("hotswap load error = %q; want it to start %q", err, tt.wantMsg)
			}
			if tt.name != "no such file" && !strings.HasSuffix(err.Error(), "; pricing@v1 keeps serving") {
				t.Errorf("hotswap load error = %q; want it to end \"; pricing@v1 keeps serving\"", err)
			}
			if out != "" {
				t.Errorf("hotswap load output = %q on a refusal; want none", out)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if v, err := s.quote(ctx); err != nil || v != "v1" {
				t.Errorf("quote after a refused load = %q, %v; want v1", v, err)
			}
		})
	}
}

func TestCLIUsage(t *testing.T) {
	for _, args := range [][]string{
		{"load", "pricing"},
		{"rollback"},
		{"history", "a", "b"},
		{"status", "-o", "yaml"},
		{"history", "-o", "yaml"},
		{"history", "--limit", "-1"},
		{"upgrade", "extra"},
	} {
		if _, _, code, err := ctl(t, "/nonexistent.sock", args...); code != 2 {
			t.Errorf("hotswap %q = %v (exit %d); want exit 2", args, err, code)
		}
	}
}

func TestUnreachable(t *testing.T) {
	for _, args := range [][]string{{"status"}, {"status", "-o", "json"}, {"rollback", "pricing"}, {"history"}, {"upgrade"}} {
		out, _, code, err := ctl(t, t.TempDir()+"/none.sock", args...)
		if code != 3 || !strings.Contains(err.Error(), "cannot reach the service at ") {
			t.Errorf("hotswap %q = %v (exit %d); want exit 3, cannot reach the service", args, err, code)
		}
		if args[len(args)-1] == "json" && !strings.Contains(out, `"kind": "unreachable"`) {
			t.Errorf("hotswap status -o json output = %q; want the error as JSON", out)
		}
	}
}
