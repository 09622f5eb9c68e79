package host_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// The state tests run the test binary as a child process through
// runStateHelper, which does what envStateHelper names.
const (
	envStateHelper     = "HOST_STATE_HELPER" // "window", "sync", "upgrade" or "die"
	envStateDir        = "HOST_STATE_DIR"    // the child's state directory
	envStateOut        = "HOST_STATE_OUT"    // where the upgrade child writes its report
	helperProcessFlag  = "-test.run=^$"      // the helper runs from TestMain, before any test
	commitSlack        = time.Second         // bounds one commit on a loaded machine
	windowWrites       = 5000
	helperMaxLife      = 2 * time.Minute
	takeoverBound      = 10 * time.Second
	afterTakeoverWrite = 200 * time.Millisecond
)

// runStateHelper is the child process of the state tests (see TestMain): it
// does what envStateHelper names.
func runStateHelper(mode string) int {
	var err error
	switch mode {
	case "window", "sync":
		err = runKVWriter(mode)
	case "upgrade":
		err = runUpgradedWriter()
	case "die":
		err = runDyingWriter()
	default:
		err = fmt.Errorf("unknown helper %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "state helper:", err)
		return 1
	}
	return 0
}

// noCode is a Backend that prepares nothing: the state tests use the KVs
// only, through the same module.KV the guests' kv_* calls use.
type noCode struct{}

func (noCode) Prepare(context.Context, module.Spec) (module.Code, error) {
	return nil, errors.New("no code in this test")
}
func (noCode) Close(context.Context) error { return nil }

// runKVWriter counts in the counter module's state. Under "window" it adds
// windowWrites times, prints "acked N" and waits to be killed; under
// "sync" it prints every value it was acknowledged until killed.
func runKVWriter(mode string) error {
	d := host.DurabilityWindow
	if mode == "sync" {
		d = host.DurabilitySync
	}
	h, err := host.New(host.Options{Backend: noCode{}, StateDir: os.Getenv(envStateDir), Durability: d})
	if err != nil {
		return err
	}
	kv := h.Module("counter").State()
	out := bufio.NewWriter(os.Stdout)
	if mode == "window" {
		var n int64
		for range windowWrites {
			n = kv.Add("n", 1)
		}
		fmt.Fprintf(out, "acked %d\n", n)
		out.Flush()
		time.Sleep(helperMaxLife) // until killed; never outlive the test
		return errors.New("not killed")
	}
	for deadline := time.Now().Add(helperMaxLife); time.Now().Before(deadline); {
		fmt.Fprintf(out, "%d\n", kv.Add("n", 1))
		out.Flush()
	}
	return errors.New("not killed")
}

// upgradeReport is what the new process of TestUpgradeUnderKVLoad did.
type upgradeReport struct {
	Start      int64 // the counter handed over
	Acked      int64 // increments acknowledged in this process
	AtTakeover int64 // of which before it took the state file over
	Status     host.StateStatus
}

// runUpgradedWriter is the new process of an upgrade: it counts from when
// it is ready until SIGTERM, then goes on until it took the state file
// over and a little after, closes and reports.
func runUpgradedWriter() error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	h, err := host.New(host.Options{Backend: noCode{}, StateDir: os.Getenv(envStateDir), Upgrade: &upgrade.Options{NoSignals: true}})
	if err != nil {
		return err
	}
	kv := h.Module("counter").State()
	v, _ := kv.Get("n")
	rep := upgradeReport{Start: atoi(v), AtTakeover: -1}
	if err := h.Upgrader().Ready(); err != nil {
		return err
	}
	acked, stop := count(kv, 2)
	select {
	case <-term:
	case <-time.After(helperMaxLife):
		return errors.New("no SIGTERM")
	}
	for deadline := time.Now().Add(takeoverBound); h.StateStatus().TakingOver; {
		if time.Now().After(deadline) {
			return fmt.Errorf("not taken over %v after SIGTERM: %+v", takeoverBound, h.StateStatus())
		}
		time.Sleep(time.Millisecond)
	}
	rep.AtTakeover = acked.Load() // an upper bound: some may be after
	time.Sleep(afterTakeoverWrite)
	rep.Acked = stop()
	rep.Status = h.StateStatus()
	if err := h.Close(context.Background()); err != nil {
		return err
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return os.WriteFile(os.Getenv(envStateOut), data, 0o600)
}

// runDyingWriter is a new process that says ready, counts a little and
// dies within its probation.
func runDyingWriter() error {
	h, err := host.New(host.Options{Backend: noCode{}, StateDir: os.Getenv(envStateDir), Upgrade: &upgrade.Options{NoSignals: true}})
	if err != nil {
		return err
	}
	if err := h.Upgrader().Ready(); err != nil {
		return err
	}
	for range 1000 {
		h.Module("counter").State().Add("n", 1)
	}
	os.Exit(3)
	return nil
}

// count adds 1 to kv's "n" from writers goroutines until stop, which
// returns how many increments were acknowledged.
func count(kv *module.KV, writers int) (acked *atomic.Int64, stop func() int64) {
	acked = new(atomic.Int64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				kv.Add("n", 1)
				acked.Add(1)
			}
		})
	}
	var once sync.Once
	return acked, func() int64 {
		once.Do(func() { close(done); wg.Wait() })
		return acked.Load()
	}
}

func atoi(b []byte) int64 { n, _ := strconv.ParseInt(string(b), 10, 64); return n }

// openState opens a host over dir with no code, closed when the test ends.
func openState(t *testing.T, dir string, d host.Durability) *host.Host {
	t.Helper()
	h, err := host.New(host.Options{Backend: noCode{}, StateDir: dir, Durability: d, Logger: testLogger()})
	if err != nil {
		t.Fatalf("New(%s) = %v", dir, err)
	}
	t.Cleanup(func() { closeHost(t, h) })
	return h
}

func counter(h *host.Host) int64 {
	v, _ := h.Module("counter").State().Get("n")
	return atoi(v)
}

func TestStateSurvivesRestart(t *testing.T) {
	for _, d := range []host.Durability{host.DurabilityWindow, host.DurabilitySync} {
		t.Run(d.String(), func(t *testing.T) {
			dir := t.TempDir()
			h, err := host.New(host.Options{Backend: noCode{}, StateDir: dir, Durability: d})
			if err != nil {
				t.Fatal(err)
			}
			for range 100 {
				h.Module("counter").State().Add("n", 1)
			}
			h.Module("other").State().Set("name", []byte("kept"))
			h.Module("other").State().Set("gone", []byte("x"))
			h.Module("other").State().Delete("gone")
			if st := h.StateStatus(); st.Path != filepath.Join(dir, host.StateFileName) || st.Durability != d || st.TakingOver {
				t.Errorf("StateStatus() = %+v; want %s in %s", st, d, dir)
			}
			closeHost(t, h)

			h = openState(t, dir, d)
			if got := counter(h); got != 100 {
				t.Errorf("counter after restart = %d; want 100", got)
			}
			if got := h.Module("other").State().Snapshot(); len(got) != 1 || string(got["name"]) != "kept" {
				t.Errorf("other module's state after restart = %q; want name=kept only", got)
			}
		})
	}
}

func TestStateMemoryOnly(t *testing.T) {
	dir := t.TempDir()
	h, err := host.New(host.Options{Backend: noCode{}, StateDir: dir, Durability: host.DurabilityMemory})
	if err != nil {
		t.Fatal(err)
	}
	h.Module("counter").State().Add("n", 1)
	closeHost(t, h)
	if _, err := os.Stat(filepath.Join(dir, host.StateFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat state file = %v; want none under DurabilityMemory", err)
	}
	if got := counter(openState(t, dir, host.DurabilityMemory)); got != 0 {
		t.Errorf("counter after a restart without a state file = %d; want 0", got)
	}
}

// TestStateAfterKill: a process killed with SIGKILL loses nothing older
// than the commit window (plus one commit), and under DurabilitySync no
// write it acknowledged.
func TestStateAfterKill(t *testing.T) {
	t.Run("window", func(t *testing.T) {
		dir := t.TempDir()
		lines, kill := startWriter(t, "window", dir)
		line := <-lines
		if line != fmt.Sprintf("acked %d", windowWrites) {
			t.Fatalf("writer said %q; want acked %d", line, windowWrites)
		}
		// The window under test: the writes must be on disk by now.
		time.Sleep(host.DefaultCommitWindow + commitSlack)
		kill()
		if got := counter(openState(t, dir, host.DurabilityWindow)); got != windowWrites {
			t.Errorf("counter after SIGKILL = %d; want all %d writes made a window earlier", got, windowWrites)
		}
	})
	t.Run("sync", func(t *testing.T) {
		dir := t.TempDir()
		lines, kill := startWriter(t, "sync", dir)
		var last int64
		for range 200 { // let it write, then kill it mid-write
			last = atoi([]byte(<-lines))
		}
		kill()
		for line := range lines { // what it acknowledged before it died
			last = atoi([]byte(line))
		}
		got := counter(openState(t, dir, host.DurabilitySync))
		if got != last && got != last+1 {
			t.Errorf("counter after SIGKILL = %d; want the last acknowledged %d (or one more, committed but not acknowledged)", got, last)
		}
		t.Logf("killed after %d acknowledged writes; %d restored", last, got)
	})
}

// startWriter runs runKVWriter in a child process over dir and returns its
// output lines (closed at its end) and a function that kills it with
// SIGKILL and reaps it.
func startWriter(t *testing.T, mode, dir string) (<-chan string, func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], helperProcessFlag)
	cmd.Env = append(os.Environ(), envStateHelper+"="+mode, envStateDir+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	raw := make(chan string, 1024)
	go func() {
		defer close(raw)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			raw <- sc.Text()
		}
	}()
	// Every read is bounded: a writer that stops talking fails the test.
	lines := make(chan string)
	go func() {
		defer close(lines)
		for {
			select {
			case l, ok := <-raw:
				if !ok {
					return
				}
				lines <- l
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Errorf("writer said nothing for 30s; stderr:\n%s", &stderr)
				return
			}
		}
	}()
	var once sync.Once
	kill := func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGKILL)
			err := cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Errorf("writer ended with %v, not by SIGKILL; stderr:\n%s", err, &stderr)
			}
		})
	}
	t.Cleanup(kill)
	return lines, kill
}

func TestSecondHostOnStateDirRefused(t *testing.T) {
	dir := t.TempDir()
	h := openState(t, dir, host.DurabilityWindow)
	h.Module("counter").State().Add("n", 1)
	_, err := host.New(host.Options{Backend: noCode{}, StateDir: dir})
	path := filepath.Join(dir, host.StateFileName)
	if !errors.Is(err, host.ErrStateLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second New() = %v; want ErrStateLocked naming %s", err, path)
	}
	h.Module("counter").State().Add("n", 1)
	closeHost(t, h)
	if got := counter(openState(t, dir, host.DurabilityWindow)); got != 2 {
		t.Errorf("counter = %d; want 2: the first host kept its file", got)
	}
}

func TestCorruptStateFileRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, host.StateFileName)
	junk := bytes.Repeat([]byte("junk"), 4096)
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := host.New(host.Options{Backend: noCode{}, StateDir: dir})
	if !errors.Is(err, host.ErrStateCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("New() over a corrupt state file = %v; want ErrStateCorrupt naming %s", err, path)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, junk) {
		t.Errorf("the corrupt state file changed (err %v); want it left as it was", err)
	}
}

// TestUpgradeUnderKVLoadLosesNoIncrement: writers count in the parent until
// it closes and in the new process from when it is ready; the state file
// ends with every acknowledged increment of both.
func TestUpgradeUnderKVLoadLosesNoIncrement(t *testing.T) {
	f := newFixture(t)
	binPath := signedTestBinary(t, f, "2")
	out := filepath.Join(f.dir, "child.json")
	h := f.open(t, hostOptions{noClose: true, upgrade: &upgrade.Options{
		NoSignals: true,
		Probation: 200 * time.Millisecond,
		Args:      []string{helperProcessFlag},
		Env:       []string{envStateHelper + "=upgrade", envStateDir + "=" + f.state, envStateOut + "=" + out},
	}})
	parentAcked, stop := count(h.Module("counter").State(), 2)
	waitFor(t, "parent writes", func() bool { return parentAcked.Load() > 100 })
	res, err := h.Upgrade(ctxFor(t, "deploy"), binPath)
	if res.PID != 0 {
		t.Cleanup(func() { stopProcess(t, res.PID) })
	}
	if err != nil || res.Outcome != upgrade.Committed {
		stop()
		t.Fatalf("Upgrade() = %+v, %v; want Committed", res, err)
	}
	time.Sleep(300 * time.Millisecond) // both processes write meanwhile
	stop()
	closeHost(t, h) // releases the state file to the new process
	stopProcess(t, res.PID)

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the new process wrote no report: %v", err)
	}
	var rep upgradeReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("parent: %d increments; new process: handed %d, %d increments, ~%d before it took the file over",
		parentAcked.Load(), rep.Start, rep.Acked, rep.AtTakeover)
	if rep.Start <= 0 || rep.Start >= parentAcked.Load() {
		t.Errorf("new process was handed n=%d; want a snapshot after some and before all of the parent's %d increments", rep.Start, parentAcked.Load())
	}
	if rep.AtTakeover <= 0 || rep.Acked <= rep.AtTakeover || rep.Status.TakingOver || rep.Status.LastError != "" {
		t.Errorf("new process report = %+v; want increments before and after it took the file over, no error", rep)
	}
	want := parentAcked.Load() + rep.Acked
	if got := counter(f.open(t, hostOptions{})); got != want {
		t.Errorf("counter in the state file = %d; want %d = %d (parent) + %d (new process)", got, want, parentAcked.Load(), rep.Acked)
	}
}

// TestRolledBackUpgradeKeepsParentState: a new process that dies in its
// probation never took the state file over; the parent goes on writing it.
// (The dead process's writes are lost, as docs/state.md says.)
func TestRolledBackUpgradeKeepsParentState(t *testing.T) {
	f := newFixture(t)
	binPath := signedTestBinary(t, f, "2")
	h := f.open(t, hostOptions{noClose: true, upgrade: &upgrade.Options{
		NoSignals: true,
		Probation: 10 * time.Second,
		Args:      []string{helperProcessFlag},
		Env:       []string{envStateHelper + "=die", envStateDir + "=" + f.state},
	}})
	kv := h.Module("counter").State()
	kv.Add("n", 5)
	res, err := h.Upgrade(ctxFor(t, "deploy"), binPath)
	if !errors.Is(err, upgrade.ErrRolledBack) || res.Outcome != upgrade.RolledBack {
		t.Fatalf("Upgrade() = %+v, %v; want RolledBack", res, err)
	}
	kv.Add("n", 5)
	if st := h.StateStatus(); st.TakingOver || st.LastError != "" || st.Commits == 0 {
		t.Errorf("parent StateStatus() = %+v; want it still writing the file", st)
	}
	closeHost(t, h)
	if got := counter(f.open(t, hostOptions{})); got != 10 {
		t.Errorf("counter = %d; want the parent's 10", got)
	}
}

// signedTestBinary copies the test binary into f.dir and signs it as
// version of the test service, for an upgrade to it.
func signedTestBinary(t *testing.T, f *fixture, version string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.dir, "hosttest-"+version)
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := f.trusted.SignFile(context.Background(), path, artifact.Manifest{Name: "svc", Version: version, Kind: artifact.KindBinary}); err != nil {
		t.Fatal(err)
	}
	return path
}
