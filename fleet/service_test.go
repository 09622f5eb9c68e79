package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// A process started by a binary upgrade in these tests is the test binary
// itself (or a copy): TestMain runs runAgentHelper instead of the tests
// when envHelper is set. It serves a host over the state directory it
// shares with its parent, with an embedded agent, until its successor
// takes over or SIGTERM.
const (
	envHelper   = "FLEET_TEST_HELPER" // "agent"
	envEtcd     = "FLEET_TEST_ETCD"   // etcd endpoints, comma separated
	envState    = "FLEET_TEST_STATE"  // the host's state directory
	envInstance = "FLEET_TEST_INSTANCE"
	envSocket   = "FLEET_TEST_SOCKET" // the control socket of a "service" helper
	envGroup    = "FLEET_TEST_GROUP"  // the test's group
)

// helperHost is a helper's host over the state directory envState names,
// with binary upgrades (probation: upgrade.Options.Probation).
func helperHost(probation time.Duration) (*host.Host, error) {
	state := os.Getenv(envState)
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(state, "cache")})
	if err != nil {
		return nil, err
	}
	return host.New(host.Options{Backend: b, StateDir: state, Service: "svc",
		Upgrade: &upgrade.Options{NoSignals: true, Probation: probation}})
}

func runAgentHelper() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "fleet agent helper:", err); return 1 }
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	h, err := helperHost(0)
	if err != nil {
		return fail(err)
	}
	defer h.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.RestoreModules(ctx); err != nil {
		return fail(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(os.Getenv(envEtcd), ","), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fail(err)
	}
	defer cli.Close()
	a, err := fleet.NewAgent(fleet.AgentOptions{Client: cli, Host: h, Group: os.Getenv(envGroup), Instance: os.Getenv(envInstance), LeaseTTL: ttl,
		RequestTimeout: time.Second, Retry: 100 * time.Millisecond})
	if err != nil {
		return fail(err)
	}
	actx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(actx) }()
	if err := h.Upgrader().Ready(); err != nil {
		return fail(err)
	}
	if dieInProbation() {
		// Once the agent's report of how its apply went (not the one
		// before the work) is in etcd, die before the parent commits.
		key := fleet.DefaultPrefix + "/" + os.Getenv(envGroup) + "/applied/" + os.Getenv(envInstance)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			gctx, gcancel := context.WithTimeout(context.Background(), time.Second)
			resp, err := cli.Get(gctx, key)
			gcancel()
			var ap fleet.Applied
			if err == nil && len(resp.Kvs) == 1 && json.Unmarshal(resp.Kvs[0].Value, &ap) == nil && ap.PID == os.Getpid() &&
				ap.Binary != nil && (ap.Binary.Check == "probation" || ap.Result != fleet.ResultPending) {
				break
			}
		}
		os.Exit(7)
	}
	select {
	case <-h.Upgrader().Exit():
	case <-term:
	case <-time.After(2 * time.Minute): // never outlive the test
	}
	stop()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		return fail(errors.New("agent did not stop"))
	}
	return 0
}

// dieMarker, at the end of a helper's binary, makes it die during its
// parent's probation.
const dieMarker = "\nfleet test: die in probation\n"

func dieInProbation() bool {
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		return false
	}
	defer f.Close()
	tail := make([]byte, len(dieMarker))
	fi, err := f.Stat()
	if err != nil || fi.Size() < int64(len(tail)) {
		return false
	}
	_, err = f.ReadAt(tail, fi.Size()-int64(len(tail)))
	return err == nil && string(tail) == dieMarker
}

// runServiceHelper is a service without an agent: a host whose control
// API answers on the socket envSocket names, for a sidecar agent in the
// test process. It upgrades to binaries the sidecar hands it (its
// successor, the same helper, inherits the socket) and exits once a
// successor took over, after the upgrade's caller got its answer.
func runServiceHelper() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "fleet service helper:", err); return 1 }
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	h, err := helperHost(300 * time.Millisecond)
	if err != nil {
		return fail(err)
	}
	defer h.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln, err := control.Listen(ctx, h, os.Getenv(envSocket))
	if err != nil {
		return fail(err)
	}
	srv, err := control.New(h, control.Options{})
	if err != nil {
		return fail(err)
	}
	go srv.Serve(ln)
	if err := h.Upgrader().Ready(); err != nil {
		return fail(err)
	}
	select {
	case <-h.Upgrader().Exit():
	case <-term:
	case <-time.After(2 * time.Minute): // never outlive the test
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	srv.Shutdown(sctx)
	return 0
}

// echoArtifact builds the C echo guest (with the extra compiler flags,
// which change its bytes) and writes it into dir as module echo, version,
// signed by s unless s is nil.
func echoArtifact(t *testing.T, dir string, s *artifact.Signer, version string, flags ...string) fleet.ModuleSpec {
	t.Helper()
	payload, err := guestbuild.CBytes("guest/c/echo.c", flags...)
	if err != nil {
		t.Fatalf("build the C echo guest: %v", err)
	}
	p := filepath.Join(dir, "echo-"+version+".wasm")
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if s != nil {
		if _, err := s.SignFile(context.Background(), p, artifact.Manifest{Name: "echo", Kind: artifact.KindWasm, Version: version}); err != nil {
			t.Fatal(err)
		}
	}
	return fleet.ModuleSpec{Version: version, Digest: artifact.DigestOf(payload).String(), URL: "file://" + p}
}

// running is an agent's Run: err is what it returned once done is closed.
type running struct {
	done chan struct{}
	err  error
}

// runAgent runs a's Run until the test ends.
func runAgent(t *testing.T, a *fleet.Agent) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{done: make(chan struct{})}
	go func() { r.err = a.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(wait):
			t.Errorf("agent: Run did not return within %v", wait)
		}
	})
	return r
}

// hexDigest is the hex of a "sha256:" digest.
func hexDigest(d string) string { return strings.TrimPrefix(d, "sha256:") }

func instanceOf(st fleet.Status, id string) (fleet.Applied, bool) {
	for _, ap := range st.Applied {
		if ap.Instance == id {
			return ap, true
		}
	}
	return fleet.Applied{}, false
}

// TestSidecarAgent runs the agent beside a service, applying through the
// service's real control socket: a signed module is loaded and acked; an
// unsigned one is refused by the service's own trust path (the sidecar
// verifies nothing itself) and reported with its check.
func TestSidecarAgent(t *testing.T) {
	e := newEnv(t, 0)
	fix := testhost.NewFixture(t)
	h := fix.Host(t, testhost.HostOptions{Module: &wasm.ModuleConfig{}})
	socket, _ := testhost.Serve(t, h, "", control.Options{})
	v1 := echoArtifact(t, e.dir, e.signer, "v1")
	unsigned := echoArtifact(t, e.dir, nil, "v2", "-O1")
	if v1.Digest == unsigned.Digest {
		t.Fatal("the two builds of the echo guest are the same bytes; the test needs two versions")
	}

	a, err := fleet.NewAgent(fleet.AgentOptions{Client: e.cli, Service: fleet.SocketService(control.NewClient(socket), t.TempDir()),
		Group: e.name, Instance: "side", LeaseTTL: ttl, RequestTimeout: 5 * time.Second, Retry: 100 * time.Millisecond, Logger: testhost.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)

	want := fleet.Spec{Modules: map[string]fleet.ModuleSpec{"echo": v1}}
	rev := e.set(fleet.Desired{Spec: want, Writer: "alice"})
	st := e.until("v1 done", phase(rev, fleet.Done))
	ap, _ := instanceOf(st, "side")
	if m := ap.Modules["echo"]; ap.Spec != want.ID() || ap.Result != fleet.ResultOK || m.Version != "v1" || m.Digest != hexOf(v1) ||
		ap.PID != os.Getpid() || ap.Binary == nil || ap.Binary.Digest == "" {
		t.Errorf("applied = %+v (echo %+v, binary %+v); want v1 %s acked, the service's pid %d and its binary", ap, m, ap.Binary, hexOf(v1), os.Getpid())
	}
	if got := activeDigest(h, "echo"); got != hexOf(v1) {
		t.Errorf("the service serves echo %q; want v1 %s", got, hexOf(v1))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Module("echo").Call(ctx, "echo", []byte("ping"))
	if err != nil || string(out) != "ping" {
		t.Errorf("echo(ping) = %q, %v; want ping", out, err)
	}

	rev = e.set(fleet.Desired{Spec: fleet.Spec{Modules: map[string]fleet.ModuleSpec{"echo": unsigned}}, Writer: "mallory"})
	st = e.until("unsigned halted", phase(rev, fleet.Halted))
	if !strings.Contains(st.Rollout.Reason, "echo refused (check policy)") {
		t.Errorf("halt reason = %q; want echo refused by the service's policy check", st.Rollout.Reason)
	}
	for _, s := range h.Status() {
		for _, v := range s.Versions() {
			if v.Digest == hexOf(unsigned) {
				t.Errorf("version %s %s was loaded; want it refused", v.Version, v.Digest)
			}
		}
	}
	e.until("reverted to v1", func(st fleet.Status) bool { return st.Converged(want) })

	// A fleet-wide A/B split needs the host's split operations, which the
	// control socket does not have: refused with check split, A serves.
	b := echoArtifact(t, e.dir, e.signer, "v3", "-O1")
	split := want
	split.Modules = map[string]fleet.ModuleSpec{"echo": v1}
	m := split.Modules["echo"]
	m.B = &fleet.SplitSpec{Version: b.Version, Digest: b.Digest, URL: b.URL, Weight: 50}
	split.Modules["echo"] = m
	rev = e.set(fleet.Desired{Spec: split, Writer: "alice"})
	st = e.until("split halted", phase(rev, fleet.Halted))
	if !strings.Contains(st.Rollout.Reason, "echo refused (check split)") {
		t.Errorf("halt reason = %q; want echo refused by check split", st.Rollout.Reason)
	}
	if got := activeDigest(h, "echo"); got != hexOf(v1) {
		t.Errorf("the service serves echo %q; want v1 %s alone", got, hexOf(v1))
	}
}

func activeDigest(h *host.Host, name string) string {
	for _, st := range h.Status() {
		if st.Name == name && st.Active != nil {
			return st.Active.Digest
		}
	}
	return ""
}

// testBinary returns the path and bytes of the running test binary, which
// the helpers above make a service of.
func testBinary(t *testing.T) (string, []byte) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	return exe, self
}

// binaryArtifact writes payload into dir as the service's binary,
// version, signed by s unless s is nil, and returns its spec.
func binaryArtifact(t *testing.T, dir string, s *artifact.Signer, version string, payload []byte) *fleet.BinarySpec {
	t.Helper()
	p := filepath.Join(dir, "svc-"+version)
	if err := os.WriteFile(p, payload, 0o755); err != nil {
		t.Fatal(err)
	}
	if s != nil {
		if _, err := s.SignFile(context.Background(), p, artifact.Manifest{Name: "svc", Kind: artifact.KindBinary, Version: version}); err != nil {
			t.Fatal(err)
		}
	}
	return &fleet.BinarySpec{Version: version, Digest: artifact.DigestOf(payload).String(), URL: "file://" + p}
}

// upgradableInstance starts instance id in this test process: a host
// whose binary upgrades start the test binary's helper (runAgentHelper)
// over the same state directory, and its embedded agent.
func (e *env) upgradableInstance(id string, probation time.Duration) (*host.Host, *fleet.Agent, *running) {
	e.t.Helper()
	fix := testhost.NewFixture(e.t)
	h := fix.Host(e.t, testhost.HostOptions{Module: &wasm.ModuleConfig{}, Upgrade: &upgrade.Options{NoSignals: true,
		Probation: probation, UpgradeTimeout: 2 * time.Minute,
		Env: []string{envHelper + "=agent", envEtcd + "=" + strings.Join(e.etcd.Endpoints(), ","), envState + "=" + fix.State, envInstance + "=" + id, envGroup + "=" + e.name}}})
	a, err := fleet.NewAgent(fleet.AgentOptions{Client: e.cli, Host: h, Group: e.name, Instance: id, LeaseTTL: ttl,
		RequestTimeout: time.Second, Retry: 100 * time.Millisecond, Logger: testhost.Logger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	return h, a, runAgent(e.t, a)
}

// TestBinaryUpgradeAckedByNewProcess pins a new binary (the test binary
// with bytes appended, signed) and a module: the embedded agent upgrades
// first, without touching the modules; its Run ends with ErrReplaced; the
// new process's agent, under the same instance name, acks the new binary
// once its parent committed, and loads the module there.
func TestBinaryUpgradeAckedByNewProcess(t *testing.T) {
	e := newEnv(t, 0)
	h, _, ran := e.upgradableInstance("a", 500*time.Millisecond)
	_, self := testBinary(t)
	// Bytes after the ELF image change the digest, not the program.
	v2 := binaryArtifact(t, e.dir, e.signer, "2", append(self, "\nfleet test binary v2\n"...))
	echo := echoArtifact(t, e.dir, e.signer, "v1")
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)

	want := fleet.Spec{Binary: v2, Modules: map[string]fleet.ModuleSpec{"echo": echo}}
	rev := e.set(fleet.Desired{Spec: want, Writer: "alice"})
	var res *upgrade.Result
	select {
	case <-ran.done:
		if !errors.Is(ran.err, fleet.ErrReplaced) {
			t.Fatalf("parent agent Run() = %v; want ErrReplaced", ran.err)
		}
		res = h.Process().LastUpgrade
	case <-time.After(wait):
		t.Fatal("the parent's agent did not hand over")
	}
	if res == nil || res.Outcome != upgrade.Committed {
		t.Fatalf("last upgrade = %+v; want committed", res)
	}
	t.Cleanup(func() { stopProcess(t, res.PID) })
	if got := activeDigest(h, "echo"); got != "" {
		t.Errorf("the old process loaded echo %s; want the modules left to the new process", got)
	}
	st := e.until("rollout done", phase(rev, fleet.Done))
	ap, _ := instanceOf(st, "a")
	if b := ap.Binary; ap.Result != fleet.ResultOK || ap.PID != res.PID || b == nil || b.Version != "2" || b.Digest != hexDigest(v2.Digest) || b.Result != fleet.ResultOK {
		t.Errorf("applied = %+v, binary %+v; want ok from the new process %d, binary 2 %s", ap, ap.Binary, res.PID, v2.Digest)
	}
	if m := ap.Modules["echo"]; m.Digest != hexOf(echo) || m.Result != fleet.ResultOK {
		t.Errorf("applied echo = %+v; want v1 %s loaded by the new process", m, hexOf(echo))
	}
	if ap.Spec != want.ID() {
		t.Errorf("applied spec = %s; want %s", ap.Spec, want.ID())
	}
}

// TestBinaryRefusedOrFailed pins binaries that must not take over: one
// whose bytes are not the pin and an unsigned one are refused before
// anything runs; a signed one whose process exits during init fails at
// stage init; one whose process dies during probation (after its agent
// reported) fails at stage probation, and its agent never acked. Each
// halts the rollout; the old process serves and reports throughout.
func TestBinaryRefusedOrFailed(t *testing.T) {
	e := newEnv(t, 0)
	h, a, _ := e.upgradableInstance("a", 10*time.Second)
	_, self := testBinary(t)
	script := []byte("#!/bin/sh\necho 'fleet test: no config' >&2\nexit 3\n")
	crashes := binaryArtifact(t, e.dir, e.signer, "crashes", script)
	unsigned := binaryArtifact(t, e.dir, nil, "unsigned", append(script, '#'))
	mismatched := *crashes
	mismatched.Version, mismatched.Digest = "mismatched", unsigned.Digest
	dies := binaryArtifact(t, e.dir, e.signer, "dies", append(self, dieMarker...))
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)

	for _, tc := range []struct {
		name    string
		bin     *fleet.BinarySpec
		result  fleet.Result
		check   string
		outcome upgrade.Outcome
		err     string // in the last upgrade's error; "" if no process started
	}{
		{"digest mismatch", &mismatched, fleet.ResultRefused, "digest", upgrade.Failed, ""},
		{"unsigned", unsigned, fleet.ResultRefused, "policy", upgrade.Failed, ""},
		{"exits during init", crashes, fleet.ResultFailed, "init", upgrade.Failed, "no config"},
		{"dies during probation", dies, fleet.ResultFailed, "probation", upgrade.RolledBack, "exit status 7"},
	} {
		before := h.Process().LastUpgrade
		reports := watchApplied(t, e, "a")
		rev := e.set(fleet.Desired{Spec: fleet.Spec{Binary: tc.bin}, Writer: "mallory"})
		st := e.until(tc.name+": halted", phase(rev, fleet.Halted))
		if want := fmt.Sprintf("binary %s (check %s)", tc.result, tc.check); !strings.Contains(st.Rollout.Reason, want) {
			t.Errorf("%s: halt reason = %q; want %q", tc.name, st.Rollout.Reason, want)
		}
		if ap, _ := a.Applied(); ap.PID != os.Getpid() {
			t.Errorf("%s: applied pid = %d; want this process %d", tc.name, ap.PID, os.Getpid())
		}
		last := h.Process().LastUpgrade
		switch {
		case tc.check == "digest" && last != before:
			t.Errorf("%s: an upgrade was attempted (%+v); want none: the fetched bytes are not the pin", tc.name, last)
		case tc.check == "digest":
		case tc.err == "" && (last == nil || last.PID != 0):
			t.Errorf("%s: last upgrade = %+v; want one refused before any process started", tc.name, last)
		case tc.err != "" && (last == nil || last.PID == 0 || last.Outcome != tc.outcome || !strings.Contains(fmt.Sprint(last.Err), tc.err)):
			t.Errorf("%s: last upgrade = %+v; want a process started, %v, error with %q", tc.name, last, tc.outcome, tc.err)
		}
		final := func(ap fleet.Applied) bool {
			return ap.PID == os.Getpid() && ap.Spec == (fleet.Spec{Binary: tc.bin}).ID() && ap.Result == tc.result
		}
		for _, ap := range reports(final) {
			if ap.PID != os.Getpid() && ap.Result == fleet.ResultOK {
				t.Errorf("%s: process %d acked %+v (binary %+v); want no ack from a process that never took over", tc.name, ap.PID, ap, ap.Binary)
			}
		}
		if p := h.Process(); p.PID != os.Getpid() || p.Binary.Digest == hexDigest(tc.bin.Digest) {
			t.Errorf("%s: process = %+v; want this process on its own binary", tc.name, p)
		}
	}
}

// watchApplied records every applied report of instance id from now on.
// The returned function waits (bounded) for a report that satisfies last,
// so that every report written before it was seen too (a watch delivers in
// order), then stops and returns them.
func watchApplied(t *testing.T, e *env, id string) func(last func(fleet.Applied) bool) []fleet.Applied {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := e.cli.Watch(ctx, fleet.DefaultPrefix+"/"+e.name+"/applied/"+id)
	var mu sync.Mutex // protects got
	var got []fleet.Applied
	seen := make(chan struct{}, 1)
	go func() {
		for wr := range ch {
			for _, ev := range wr.Events {
				var ap fleet.Applied
				if json.Unmarshal(ev.Kv.Value, &ap) == nil {
					mu.Lock()
					got = append(got, ap)
					mu.Unlock()
					select {
					case seen <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	return func(last func(fleet.Applied) bool) []fleet.Applied {
		defer cancel()
		deadline := time.After(wait)
		for {
			mu.Lock()
			reports := slices.Clone(got)
			mu.Unlock()
			if slices.ContainsFunc(reports, last) {
				return reports
			}
			select {
			case <-seen:
			case <-deadline:
				t.Errorf("watch of applied/%s: no such report within %v; got %+v", id, wait, reports)
				return reports
			}
		}
	}
}

// stopProcess ends pid (SIGTERM, then SIGKILL) and waits until it is
// gone (or a zombie: an orphan is reaped by whoever adopted it), bounded.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) || zombie(pid) {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("process %d still exists 15s after SIGTERM; killed it", pid)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func zombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// TestSidecarBinaryUpgrade pins a new binary for a service run as its own
// process, with the agent beside it (in the test process) talking to its
// control socket: the sidecar fetches the binary, hands it over through
// the shared directory, the service verifies it and upgrades; the new
// process answers on the same socket, and the sidecar acks the new binary
// and pid.
func TestSidecarBinaryUpgrade(t *testing.T) {
	e := newEnv(t, 0)
	fix := testhost.NewFixture(t)
	socket := testhost.SocketPath(t)
	exe, self := testBinary(t)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"=service", envState+"="+fix.State, envSocket+"="+socket)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("service helper %d did not exit", cmd.Process.Pid)
			<-exited
		}
	})
	ctl := control.NewClient(socket)
	var before *control.Status
	for deadline := time.Now().Add(wait); before == nil; {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := ctl.Status(ctx)
		cancel()
		if err == nil {
			before = st
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service did not answer on %s: %v", socket, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	v2 := binaryArtifact(t, e.dir, e.signer, "2", append(self, "\nfleet sidecar test binary v2\n"...))
	a, err := fleet.NewAgent(fleet.AgentOptions{Client: e.cli, Service: fleet.SocketService(ctl, t.TempDir()),
		Group: e.name, Instance: "svc-0", LeaseTTL: ttl, RequestTimeout: 5 * time.Second, Retry: 100 * time.Millisecond, Logger: testhost.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)
	want := fleet.Spec{Binary: v2}
	rev := e.set(fleet.Desired{Spec: want, Writer: "alice"})
	st := e.until("binary rolled out", phase(rev, fleet.Done))
	ap, _ := instanceOf(st, "svc-0")
	if b := ap.Binary; ap.Spec != want.ID() || ap.Result != fleet.ResultOK || b == nil || b.Version != "2" || b.Digest != hexDigest(v2.Digest) ||
		ap.PID == before.Process.PID || ap.PID == 0 {
		t.Errorf("applied = %+v, binary %+v; want binary 2 %s acked from a new process (was pid %d)", ap, ap.Binary, v2.Digest, before.Process.PID)
	}
	t.Cleanup(func() { stopProcess(t, ap.PID) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	after, err := ctl.Status(ctx)
	if err != nil || after.Process.PID != ap.PID || after.Process.Generation != 2 || after.Process.Binary.Digest != hexDigest(v2.Digest) {
		t.Errorf("service status after = %+v, %v; want pid %d, generation 2, binary %s", after.Process, err, ap.PID, v2.Digest)
	}
}
