package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/upgrade"
)

const (
	v1       = "./examples/pricing/guests/v1"
	v2       = "./examples/pricing/guests/v2"
	trapinit = "./examples/pricing/guests/broken/trapinit"
	noexport = "./examples/pricing/guests/broken/noexport"
)

func TestStatus(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t, 2*time.Minute)
	st, err := e.client.Status(ctx)
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	if !st.OK || st.Process.PID != os.Getpid() || st.Process.Generation != 1 || st.Process.ParentPID != 0 {
		t.Errorf("Status() = ok %v, pid %d, generation %d, parent %d; want ok, pid %d, generation 1, parent 0",
			st.OK, st.Process.PID, st.Process.Generation, st.Process.ParentPID, os.Getpid())
	}
	if st.TrustMode != "enforce" || st.Process.Upgrade.State != control.UpgradeDisabled || st.Process.Upgrade.Phase != "" || len(st.Modules) != 0 {
		t.Errorf("Status() = trust %q, upgrade %q, %d modules; want enforce, disabled, none",
			st.TrustMode, st.Process.Upgrade.State, len(st.Modules))
	}

	e.load(t, e.artifact(t, v1, "v1"))
	if _, err := e.quote(ctx); err != nil {
		t.Fatal(err)
	}
	st, err = e.client.Status(ctx)
	if err != nil {
		t.Fatalf("Status() = %v", err)
	}
	if len(st.Modules) != 1 || st.Modules[0].Active == nil {
		t.Fatalf("Status().Modules = %+v; want pricing with an active version", st.Modules)
	}
	a := st.Modules[0].Active
	if st.Modules[0].Name != "pricing" || a.Version != "v1" || a.Instances < 1 || a.MemoryBytes == 0 || a.Calls != 1 ||
		len(a.Digest) != 64 || st.Modules[0].StateKeys != 1 {
		t.Errorf("Status().Modules[0] = %+v, active %+v; want pricing@v1 with instances, memory, 1 call, a digest, 1 state key",
			st.Modules[0], a)
	}
}

func TestLoadProgress(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.load(t, e.artifact(t, v1, "v1"))
	var steps []string
	res, err := e.client.Load(ctxT(t, 2*time.Minute), "pricing", e.artifact(t, v2, "v2"), func(p control.Progress) {
		steps = append(steps, p.Step)
	})
	if err != nil {
		t.Fatalf("Load(v2) = %v", err)
	}
	if want := []string{"verify", "prepare", "store", "activate"}; !slices.Equal(steps, want) {
		t.Errorf("Load(v2) progress = %q; want %q", steps, want)
	}
	if !res.OK || res.Serving == nil || res.Serving.Version != "v2" || res.Previous == nil || res.Previous.Version != "v1" {
		t.Errorf("Load(v2) = %+v; want ok, serving v2, previous v1", res)
	}
	if v, err := e.quote(ctxT(t, 10*time.Second)); err != nil || v != "v2" {
		t.Errorf("quote after Load(v2) = %q, %v; want v2", v, err)
	}
}

func TestLoadRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.load(t, e.artifact(t, v1, "v1"))
	tests := []struct {
		name      string
		req       func() control.LoadRequest
		wantCheck string
	}{
		{"unsigned", func() control.LoadRequest { return e.artifact(t, v2, "") }, "policy"},
		{"tampered payload", func() control.LoadRequest {
			req := e.artifact(t, v2, "v2")
			req.Payload = append(slices.Clone(req.Payload), 0)
			return req
		}, "digest"},
		{"trap in init", func() control.LoadRequest { return e.artifact(t, trapinit, "v3") }, "init"},
		{"missing exports", func() control.LoadRequest { return e.artifact(t, noexport, "v4") }, "exports"},
		{"garbage manifest", func() control.LoadRequest {
			req := e.artifact(t, v2, "v2")
			req.Manifest = []byte("{not json")
			return req
		}, "manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t, 2*time.Minute)
			res, err := e.client.Load(ctx, "pricing", tt.req(), nil)
			var ce *control.Error
			if !errors.As(err, &ce) || !errors.Is(err, control.ErrRejected) {
				t.Fatalf("Load() = %v; want a *control.Error matching ErrRejected", err)
			}
			if ce.Check != tt.wantCheck || res.OK || res.Error != ce {
				t.Errorf("Load() = check %q, ok %v; want check %q, not ok, the error in the result", ce.Check, res.OK, tt.wantCheck)
			}
			if res.Serving == nil || res.Serving.Version != "v1" || ce.Serving != "pricing@v1" {
				t.Errorf("Load() serving = %+v, %q; want pricing@v1", res.Serving, ce.Serving)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "load pricing refused: ") || !strings.Contains(msg, tt.wantCheck+" check failed") ||
				!strings.HasSuffix(msg, "; pricing@v1 keeps serving") {
				t.Errorf("Load() error = %q; want \"load pricing refused: … %s check failed … ; pricing@v1 keeps serving\"", msg, tt.wantCheck)
			}
			if v, err := e.quote(ctx); err != nil || v != "v1" {
				t.Errorf("quote after a refused load = %q, %v; want v1", v, err)
			}
		})
	}
}

func TestRollback(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t, 2*time.Minute)
	e.load(t, e.artifact(t, v1, "v1"))
	e.load(t, e.artifact(t, v2, "v2"))
	var steps []string
	res, err := e.client.Rollback(ctx, "pricing", func(p control.Progress) { steps = append(steps, p.Step) })
	if err != nil || res.Serving == nil || res.Serving.Version != "v1" {
		t.Fatalf("Rollback() = %+v, %v; want v1 serving", res, err)
	}
	if !slices.Equal(steps, []string{"activate"}) {
		t.Errorf("Rollback() progress = %q; want [activate]", steps)
	}
	if v, err := e.quote(ctx); err != nil || v != "v1" {
		t.Errorf("quote after Rollback() = %q, %v; want v1", v, err)
	}
	// v2 drained; v1 is the last-known-good and serves: nothing to go back to.
	_, err = e.client.Rollback(ctx, "pricing", nil)
	if !errors.Is(err, control.ErrNoPrevious) || !strings.HasSuffix(err.Error(), "; pricing@v1 keeps serving") {
		t.Errorf("second Rollback() = %v; want ErrNoPrevious, pricing@v1 keeps serving", err)
	}
	_, err = e.client.Rollback(ctx, "nosuch", nil)
	if !errors.Is(err, control.ErrNotFound) {
		t.Errorf("Rollback(nosuch) = %v; want ErrNotFound", err)
	}
}

func TestHistory(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t, 2*time.Minute)
	e.load(t, e.artifact(t, v1, "v1"))
	e.load(t, e.artifact(t, v2, "v2"))
	e.client.Load(ctx, "pricing", e.artifact(t, trapinit, "v3"), nil)
	if _, err := e.client.Rollback(ctx, "pricing", nil); err != nil {
		t.Fatal(err)
	}
	h, err := e.client.History(ctx, "pricing", 0)
	if err != nil {
		t.Fatalf("History() = %v", err)
	}
	var got []string
	for _, ev := range h.Events {
		got = append(got, fmt.Sprintf("%s %s", ev.Action, ev.Result))
		if want := audit.PeerActor(os.Getuid(), os.Getpid()); ev.Actor != want {
			t.Errorf("History() event %+v: actor %q; want %q", ev, ev.Actor, want)
		}
	}
	// Newest first; every change's record of its start comes before (here:
	// after) its outcome, with the same ID.
	want := []string{"rollback ok", "rollback started", "swap refused", "swap started", "swap ok", "swap started", "swap ok", "swap started"}
	if !slices.Equal(got, want) {
		t.Errorf("History() = %q; want %q", got, want)
	}
	for i := 0; i+1 < len(h.Events); i += 2 {
		if h.Events[i].ID == "" || h.Events[i].ID != h.Events[i+1].ID {
			t.Errorf("History() records %d and %d have IDs %q and %q; want one ID per change", i, i+1, h.Events[i].ID, h.Events[i+1].ID)
		}
	}
	if len(h.Events) > 2 && !strings.Contains(h.Events[2].Error, "init check failed") {
		t.Errorf("History() refusal error = %q; want it to name the init check", h.Events[2].Error)
	}
	h, err = e.client.History(ctx, "pricing", 2)
	if err != nil || len(h.Events) != 2 {
		t.Errorf("History(limit 2) = %d events, %v; want 2", len(h.Events), err)
	}
	h, err = e.client.History(ctx, "other", 0)
	if err != nil || len(h.Events) != 0 || h.Events == nil {
		t.Errorf("History(other) = %v, %v; want an empty list", h.Events, err)
	}
}

func TestForbidden(t *testing.T) {
	e := newEnv(t, envOptions{allow: []uint32{4242}})
	ctx := ctxT(t, time.Minute)
	_, err := e.client.Status(ctx)
	if !errors.Is(err, control.ErrForbidden) || !strings.Contains(err.Error(), fmt.Sprintf("uid %d", os.Getuid())) {
		t.Fatalf("Status() = %v; want ErrForbidden naming uid %d", err, os.Getuid())
	}
	res, err := e.client.Load(ctx, "pricing", e.artifact(t, v1, "v1"), nil)
	if !errors.Is(err, control.ErrForbidden) || res.Serving != nil {
		t.Fatalf("Load() = %v; want ErrForbidden", err)
	}
	if st := e.h.Status(); len(st) != 0 {
		t.Errorf("a refused load changed the registry: %+v", st)
	}
	events, err := e.h.History(ctx, audit.Filter{Target: "control"})
	if err != nil || len(events) != 2 {
		t.Fatalf("audit events for control = %+v, %v; want 2 refusals", events, err)
	}
	for _, ev := range events {
		if ev.Action != control.ActionConnect || ev.Result != audit.ResultRefused ||
			ev.Actor != audit.PeerActor(os.Getuid(), os.Getpid()) || !strings.Contains(ev.Error, "allow-list") {
			t.Errorf("audit event = %+v; want a refused connect by this process", ev)
		}
	}
}

// TestForbiddenOtherUser connects from a child process running as nobody
// (uid 65534).
func TestForbiddenOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("switching the child's uid needs root")
	}
	e := newEnv(t, envOptions{})
	// The child runs a copy of the test binary that nobody may execute.
	bin := filepath.Join(t.TempDir(), "control.test")
	copyFile(t, os.Args[0], bin, 0o755)
	for d := filepath.Dir(bin); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	peer := func(t *testing.T) (out struct {
		UID    int
		Status *control.Status
		Err    string
	}, pid int) {
		ctx := ctxT(t, time.Minute)
		cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), envHelper+"=peer", envSocket+"="+e.socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.Output()
		if err != nil {
			t.Fatalf("peer as uid 65534: %v\n%s", err, stderr.String())
		}
		if err := json.Unmarshal(stdout, &out); err != nil {
			t.Fatalf("peer output %q: %v", stdout, err)
		}
		if out.UID != 65534 {
			t.Fatalf("peer ran as uid %d; want 65534", out.UID)
		}
		return out, cmd.Process.Pid
	}

	t.Run("socket mode 0600", func(t *testing.T) {
		// The file system refuses first: connect(2) needs write permission.
		out, _ := peer(t)
		if !strings.Contains(out.Err, "status failed: cannot reach the service") || !strings.Contains(out.Err, "permission denied") {
			t.Errorf("peer got %q; want permission denied", out.Err)
		}
	})
	t.Run("socket open to all", func(t *testing.T) {
		// Were the mode widened, the peer-credential check still refuses.
		os.Chmod(filepath.Dir(e.socket), 0o755)
		os.Chmod(e.socket, 0o666)
		out, pid := peer(t)
		want := fmt.Sprintf("status refused: uid 65534 (pid %d) is not on the allow-list of the control socket", pid)
		if out.Err != want || out.Status == nil || out.Status.OK || out.Status.Error.Kind != control.KindForbidden {
			t.Errorf("peer got %q, %+v; want %q, kind forbidden", out.Err, out.Status, want)
		}
		events, err := e.h.History(ctxT(t, time.Minute), audit.Filter{Target: "control"})
		if err != nil || len(events) != 1 {
			t.Fatalf("audit events for control = %+v, %v; want 1 refusal", events, err)
		}
		if ev := events[0]; ev.Actor != audit.PeerActor(65534, pid) || ev.Action != control.ActionConnect || ev.Result != audit.ResultRefused {
			t.Errorf("audit event = %+v; want connect refused for %s", ev, audit.PeerActor(65534, pid))
		}
	})
}

func TestUpgradeDisabled(t *testing.T) {
	e := newEnv(t, envOptions{})
	res, err := e.client.Upgrade(ctxT(t, time.Minute), "", nil)
	want := fmt.Sprintf("upgrade failed: binary upgrades are not enabled in this service; pid %d keeps serving", os.Getpid())
	if !errors.Is(err, control.ErrUnavailable) || err.Error() != want || res.ServingPID != os.Getpid() || res.Attempt != nil {
		t.Errorf("Upgrade() = %+v, %v; want %q", res, err, want)
	}
}

func TestUpgradeFails(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho 'boom: cannot open the database' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("dies in init", func(t *testing.T) {
		e := newEnv(t, envOptions{dev: true, upgrade: &upgrade.Options{NoSignals: true, UpgradeTimeout: 30 * time.Second}})
		ctx := ctxT(t, time.Minute)
		var steps []string
		res, err := e.client.Upgrade(ctx, bad, func(p control.Progress) { steps = append(steps, p.Step) })
		var ce *control.Error
		if !errors.As(err, &ce) || ce.Kind != control.KindUpgradeFailed {
			t.Fatalf("Upgrade(bad) = %v; want kind upgrade_failed", err)
		}
		if !strings.Contains(ce.Stderr, "boom: cannot open the database") || !strings.Contains(ce.Message, "exit status 3") ||
			ce.Serving != fmt.Sprintf("pid %d", os.Getpid()) {
			t.Errorf("Upgrade(bad) error = %+v; want the stderr tail, the exit status, pid %d keeps serving", ce, os.Getpid())
		}
		if res.ServingPID != os.Getpid() || res.Attempt == nil || res.Attempt.PID == 0 || res.Attempt.Outcome != "failed" {
			t.Errorf("Upgrade(bad) = %+v, attempt %+v; want this pid serving, a failed attempt with the child's pid", res, res.Attempt)
		}
		if !slices.Equal(steps, []string{"verify", "hand over"}) {
			t.Errorf("Upgrade(bad) progress = %q; want [verify, hand over]", steps)
		}
		st, err := e.client.Status(ctx)
		if err != nil || st.Process.Upgrade.State != control.UpgradeIdle || st.Process.Upgrade.Phase != "idle" ||
			st.Process.Upgrade.PhasePID != 0 || st.Process.Upgrade.Last == nil || st.Process.Upgrade.Last.Outcome != "failed" {
			t.Errorf("Status() after a failed upgrade = %+v, %v; want idle, phase idle, last failed", st.Process.Upgrade, err)
		}
	})
	t.Run("unsigned", func(t *testing.T) {
		e := newEnv(t, envOptions{upgrade: &upgrade.Options{NoSignals: true}})
		_, err := e.client.Upgrade(ctxT(t, time.Minute), bad, nil)
		var ce *control.Error
		if !errors.As(err, &ce) || ce.Kind != control.KindRejected || ce.Check != "policy" ||
			!strings.HasSuffix(err.Error(), fmt.Sprintf("; pid %d keeps serving", os.Getpid())) {
			t.Errorf("Upgrade(unsigned) = %v; want rejected by the policy check, this pid keeps serving", err)
		}
	})
}

// TestUpgradeCommits upgrades to a new process (this test binary as the
// helper "service") and checks the answer names it, and that the control
// socket answered throughout.
func TestUpgradeCommits(t *testing.T) {
	f := testhost.NewFixture(t)
	state, socket := f.State, testhost.SocketPath(t)
	e := newEnvAt(t, f, socket, envOptions{dev: true, upgrade: &upgrade.Options{
		Binary:    os.Args[0],
		Args:      []string{"-test.run=^$"},
		Env:       []string{envHelper + "=service", envSocket + "=" + socket, envState + "=" + state},
		NoSignals: true,
		Probation: time.Second,
	}})
	ctx := ctxT(t, 2*time.Minute)

	// Ask for the status all along: every request must be answered.
	var asked, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			asked.Add(1)
			if _, err := e.client.Status(ctx); err != nil {
				failed.Add(1)
				t.Errorf("Status() during the upgrade = %v", err)
			}
		}
	})
	res, err := e.client.Upgrade(ctx, "", nil)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("Upgrade() = %v", err)
	}
	newPID := res.ServingPID
	defer stopProcess(t, newPID)
	if !res.OK || res.PID != os.Getpid() || newPID == os.Getpid() || res.Attempt == nil || res.Attempt.PID != newPID ||
		res.Attempt.Outcome != "committed" {
		t.Fatalf("Upgrade() = %+v, attempt %+v; want committed to a new pid", res, res.Attempt)
	}
	t.Logf("%d status requests during the upgrade, %d failed", asked.Load(), failed.Load())

	// The old process stops serving; the socket stays with the new one.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Errorf("old Shutdown() = %v", err)
	}
	st, err := control.NewClient(socket).Status(ctx)
	if err != nil {
		t.Fatalf("Status() after the upgrade = %v", err)
	}
	if st.Process.PID != newPID || st.Process.Generation != 2 || st.Process.ParentPID != os.Getpid() {
		t.Errorf("Status().Process after the upgrade = %+v; want pid %d, generation 2, parent %d", st.Process, newPID, os.Getpid())
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != control.SocketMode {
		t.Errorf("socket after the upgrade: %v, %v; want mode %o", fi, err, control.SocketMode)
	}
}

func TestListen(t *testing.T) {
	e := newEnv(t, envOptions{})
	fi, err := os.Stat(e.socket)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != control.SocketMode {
		t.Fatalf("Stat(socket) = %v, %v; want a socket, mode %o", fi, err, control.SocketMode)
	}
	ctx := ctxT(t, time.Minute)
	if ln, err := control.Listen(ctx, e.h, e.socket); err == nil || !strings.Contains(err.Error(), "another process serves") {
		if ln != nil {
			ln.Close()
		}
		t.Errorf("Listen(a served socket) = %v; want \"another process serves\"", err)
	}

	// A socket file whose process died is replaced.
	stale := filepath.Join(filepath.Dir(e.socket), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = control.Listen(ctx, e.h, stale)
	if err != nil {
		t.Fatalf("Listen(a stale socket) = %v", err)
	}
	ln.Close()

	notSocket := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSocket, nil, 0o600)
	if _, err := control.Listen(ctx, e.h, notSocket); err == nil {
		t.Errorf("Listen(a regular file) = nil; want an error")
	}
}

func TestUnreachable(t *testing.T) {
	c := control.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	st, err := c.Status(ctxT(t, time.Minute))
	if !errors.Is(err, control.ErrUnreachable) || st.OK || st.Error == nil || !strings.Contains(err.Error(), "is the service running?") {
		t.Errorf("Status() = %+v, %v; want ErrUnreachable with a hint", st, err)
	}
}

// TestNoLeaks checks that answering requests leaves no descriptors or
// goroutines behind on either side.
func TestNoLeaks(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t, 2*time.Minute)
	e.load(t, e.artifact(t, v1, "v1"))
	e.client.Status(ctx) // warm up
	fds := openFDs(t)
	for range 50 {
		if _, err := e.client.Status(ctx); err != nil {
			t.Fatal(err)
		}
		e.client.Rollback(ctx, "pricing", nil)
	}
	// Closed connections are released asynchronously; allow a moment.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fds && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := openFDs(t); n > fds {
		t.Errorf("open descriptors after 100 requests = %d; want at most %d", n, fds)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// stopProcess sends SIGTERM to pid and waits (bounded) until it is gone.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("pid %d still running 20s after SIGTERM; killed", pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
