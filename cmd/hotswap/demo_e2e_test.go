package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
)

// TestDemoEndToEnd runs the hotswap binary's demo and operates it with the
// CLI while HTTP requests run without pause: load v2, a refused load,
// rollback to v1, a binary upgrade (the new PID answers), and a failing binary
// (the serving process stays). No request may fail. A Prometheus server
// scrapes the demo's admin listener throughout and must see both versions'
// calls, the swaps and the new generation.
func TestDemoEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the hotswap binary and the example modules")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	socket := filepath.Join(state, "hotswap.sock")
	bin := filepath.Join(dir, "hotswap")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	prebuildDemoGuests(t, ctx, filepath.Join(state, "demo", "build"))

	addr, adminAddr := freeAddr(t), freeAddr(t)
	demo := exec.Command(bin, "demo", "--addr", addr, "--admin", adminAddr)
	demo.Env = append(os.Environ(), "HOTSWAP_STATE_DIR="+state, "HOTSWAP_SOCKET="+socket)
	// A file, not a pipe: the new process inherits the demo's output, and
	// Wait on a pipe would wait for it too.
	logs, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	demo.Stdout, demo.Stderr = logs, logs
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	firstPID := demo.Process.Pid
	exited := make(chan struct{}) // closed when the first process exited
	var exitErr error
	go func() { exitErr = demo.Wait(); close(exited) }()
	servingPID := firstPID
	defer func() {
		stopPID(t, servingPID)
		if servingPID != firstPID {
			stopPID(t, firstPID)
		}
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			demo.Process.Kill()
			t.Errorf("the first demo process did not exit")
		}
		if out, _ := os.ReadFile(logs.Name()); t.Failed() {
			t.Logf("demo output:\n%s", out)
		}
	}()

	// Wait until the control socket answers with pricing@v1 serving.
	var httpSince time.Time // when the demo first answered HTTP
	for {
		out, _, code, _ := ctl(t, socket, "status")
		if code == 0 && strings.Contains(out, "pricing") {
			break
		}
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			if httpSince.IsZero() {
				httpSince = time.Now()
			}
		}
		if !httpSince.IsZero() && time.Since(httpSince) > 15*time.Second {
			t.Fatalf("the demo serves HTTP on %s but its control socket %s does not answer 15s later "+
				"(does demo.go serve control.Listen/control.New?); last status: %q", addr, socket, out)
		}
		select {
		case <-exited:
			t.Fatalf("demo exited before serving: %v", exitErr)
		case <-ctx.Done():
			t.Fatalf("the demo's control socket did not answer in time; last status: %q", out)
		case <-time.After(200 * time.Millisecond):
		}
	}

	prom := testhost.StartPrometheus(t, adminAddr)
	l := testhost.StartLoad(t, addr, "/quote?item=apple&qty=12", 4)
	arts := filepath.Join(state, "demo", "artifacts")
	l.WaitCalls(50)
	// Each version serves until Prometheus has scraped its calls: a
	// version that serves for less than a scrape would leave no sample.
	callsOf := func(v string) string {
		return fmt.Sprintf(`max_over_time(hotswap_module_calls_total{module="pricing",version=%q}[10m])`, v)
	}
	positive := func(v float64) bool { return v > 0 }
	prom.WaitQuery(t, time.Minute, callsOf("v1"), positive)

	out := mustCtl(t, socket, "load", "pricing", filepath.Join(arts, "pricing-v2.wasm"))
	if !strings.HasPrefix(out, "pricing@v2 serves") {
		t.Errorf("hotswap load v2 = %q; want pricing@v2 serves", out)
	}
	l.WaitAnswer(`"version":"v2"`)
	prom.WaitQuery(t, time.Minute, callsOf("v2"), positive)

	_, _, code, err := ctl(t, socket, "load", "pricing", filepath.Join(arts, "pricing-broken-trapinit.wasm"))
	if code != 1 || !strings.Contains(err.Error(), "pricing@broken-trapinit: init check failed") ||
		!strings.HasSuffix(err.Error(), "; pricing@v2 keeps serving") {
		t.Errorf("hotswap load broken-trapinit = %v (exit %d); want exit 1, init check failed, pricing@v2 keeps serving", err, code)
	}
	l.WaitCalls(50)

	if out := mustCtl(t, socket, "rollback", "pricing"); !strings.HasPrefix(out, "pricing@v1 serves again") {
		t.Errorf("hotswap rollback = %q; want pricing@v1 serves again", out)
	}
	l.WaitAnswer(`"version":"v1"`)

	// Prometheus scraped the swap and the rollback: both versions' calls,
	// and three swaps (v1 at start, v2, the rollback).
	v1Calls := prom.WaitQuery(t, time.Minute, callsOf("v1"), positive)
	v2Calls := prom.WaitQuery(t, time.Minute, callsOf("v2"), positive)
	swaps := prom.WaitQuery(t, time.Minute, `hotswap_swaps_total{module="pricing"}`, func(v float64) bool { return v >= 3 })
	if swaps != 3 {
		t.Errorf("Prometheus: hotswap_swaps_total = %v; want 3", swaps)
	}
	t.Logf("Prometheus saw %v calls of v1, %v of v2, %v swaps", v1Calls, v2Calls, swaps)

	out = mustCtl(t, socket, "upgrade")
	m := regexp.MustCompile(`^upgraded: pid (\d+) serves \(was pid (\d+)\)`).FindStringSubmatch(out)
	if m == nil || m[2] != strconv.Itoa(firstPID) || m[1] == m[2] {
		t.Fatalf("hotswap upgrade = %q; want \"upgraded: pid NEW serves (was pid %d)\"", out, firstPID)
	}
	servingPID, _ = strconv.Atoi(m[1])
	select {
	case <-exited:
	case <-time.After(45 * time.Second):
		t.Errorf("the replaced demo process (pid %d) did not exit", firstPID)
	}
	out = mustCtl(t, socket, "status")
	if !strings.Contains(out, fmt.Sprintf("process  pid %d, generation 2 (replaced pid %d)", servingPID, firstPID)) {
		t.Errorf("hotswap status after the upgrade = %q; want pid %d, generation 2", out, servingPID)
	}
	l.WaitAnswer(`"version":"v1"`) // the serving version survives the upgrade
	l.WaitCalls(50)
	// The admin listener was handed over too: the new process answers.
	prom.WaitQuery(t, time.Minute, `hotswap_process_generation`, func(v float64) bool { return v == 2 })

	bad := filepath.Join(dir, "bad-hotswap")
	os.WriteFile(bad, []byte("#!/bin/sh\necho 'fatal: cannot read config' >&2\nexit 3\n"), 0o755)
	keys, _ := filepath.Glob(filepath.Join(state, "keys", "*.key"))
	if len(keys) != 1 {
		t.Fatalf("demo keys = %q; want one", keys)
	}
	// A binary correctly signed by the trusted key, but of another program:
	// refused by the name check, never executed.
	impostor := filepath.Join(dir, "impostor")
	marker := filepath.Join(dir, "impostor-ran")
	os.WriteFile(impostor, []byte("#!/bin/sh\ntouch '"+marker+"'\nexec sleep 60\n"), 0o755)
	mustCtl(t, socket, "sign", "--key", keys[0], "--kind", "binary", "--name", "impostor", "--version", "6.6.6", impostor)
	_, _, code, err = ctl(t, socket, "upgrade", "--binary", impostor)
	if code != 1 || !strings.Contains(err.Error(), "name check failed") || !strings.Contains(err.Error(), `manifest names "impostor", want "hotswap"`) ||
		!strings.Contains(err.Error(), fmt.Sprintf("; pid %d keeps serving", servingPID)) {
		t.Errorf("hotswap upgrade --binary impostor = %v (exit %d); want exit 1, the name check, pid %d keeps serving", err, code, servingPID)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the impostor binary was executed (marker: %v)", err)
	}
	l.WaitCalls(50)

	mustCtl(t, socket, "sign", "--key", keys[0], "--kind", "binary", "--name", "hotswap", "--version", "bad-1", bad)
	_, _, code, err = ctl(t, socket, "upgrade", "--binary", bad)
	if code != 1 || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "fatal: cannot read config") ||
		!strings.Contains(err.Error(), fmt.Sprintf("; pid %d keeps serving", servingPID)) {
		t.Errorf("hotswap upgrade --binary bad = %v (exit %d); want exit 1, exit status 3, the stderr tail, pid %d keeps serving",
			err, code, servingPID)
	}
	l.WaitCalls(50)
	if out := mustCtl(t, socket, "status"); !strings.Contains(out, fmt.Sprintf("process  pid %d", servingPID)) {
		t.Errorf("hotswap status after a failed upgrade = %q; want pid %d serving", out, servingPID)
	}

	calls, failed := l.Stop()
	t.Logf("%d HTTP requests, %d failed", calls, failed)
	if failed != 0 || calls == 0 {
		t.Errorf("HTTP requests = %d, failed = %d; want 0 failed", calls, failed)
	}
}

// prebuildDemoGuests builds the demo's guests in the tests' shared cache
// and copies them where the demo looks, so the demo does not build them.
func prebuildDemoGuests(t *testing.T, ctx context.Context, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, guest := range demoGuests {
		dir, err := guestbuild.Dir()
		if err != nil {
			t.Fatal(err)
		}
		pkg, ldflags, _ := strings.Cut(guest, " ")
		p, err := guestbuild.Build(ctx, dir, pkg, ldflags)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(p)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// stopPID sends SIGTERM to pid and waits (bounded) until it is gone or a
// zombie.
func stopPID(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGTERM); errors.Is(err, syscall.ESRCH) {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("pid %d still running 30s after SIGTERM; killed", pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
