package upgrade

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func mustGetPID(t *testing.T, network, addr string) string {
	t.Helper()
	c := &strictClient{network: network, addr: addr}
	pid, err := c.get("/")
	if err != nil {
		t.Fatalf("GET %s %s = %v", network, addr, err)
	}
	return pid
}

var self = strconv.Itoa(os.Getpid())

func TestChildFailsDuringInit(t *testing.T) {
	tests := []struct {
		scenario string
		timeout  time.Duration
		want     error
		stderr   string
	}{
		{scenario: "exit-init", timeout: 30 * time.Second, want: ErrChildExited, stderr: "boom: cannot open the database"},
		{scenario: "hang", timeout: 2 * time.Second, want: ErrReadyTimeout},
		{scenario: "fake-v2", timeout: 30 * time.Second, want: ErrVersionMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			var results []Result
			p := startParent(t, tt.scenario, Options{NoSignals: true, UpgradeTimeout: tt.timeout, OnResult: func(r Result) { results = append(results, r) }})
			l := startLoad(p.addr, 2, 1)
			start := time.Now()
			res, err := p.u.Upgrade(context.Background())
			elapsed := time.Since(start)
			time.Sleep(50 * time.Millisecond)
			l.finish(t)

			if !errors.Is(err, tt.want) {
				t.Fatalf("Upgrade() = %v; want %v", err, tt.want)
			}
			var ce *ChildError
			if !errors.As(err, &ce) {
				t.Fatalf("Upgrade() = %T; want *ChildError", err)
			}
			if ce.Stage != "init" || ce.PID == 0 || ce.Exit == "" {
				t.Errorf("ChildError = %+v; want stage init, a pid and an exit status", ce)
			}
			if !strings.Contains(ce.Stderr, tt.stderr) {
				t.Errorf("ChildError.Stderr = %q; want it to contain %q", ce.Stderr, tt.stderr)
			}
			if res.Outcome != Failed || res.PID != ce.PID {
				t.Errorf("Result = %+v; want Failed with pid %d", res, ce.PID)
			}
			if len(results) != 1 || results[0].Outcome != Failed {
				t.Errorf("OnResult got %+v; want one Failed result", results)
			}
			if tt.want == ErrReadyTimeout && (elapsed < tt.timeout || elapsed > tt.timeout+5*time.Second) {
				t.Errorf("Upgrade() took %v; want about %v", elapsed, tt.timeout)
			}
			var ve *VersionError
			if errors.As(err, &ve) && (ve.Remote != Version{2, 0} || ve.Local != protocolVersion) {
				t.Errorf("VersionError = %+v; want remote 2.0, local %v", ve, protocolVersion)
			}
			waitReaped(t, ce.PID, 5*time.Second)
			if got := mustGetPID(t, "tcp", p.addr); got != self {
				t.Errorf("served by pid %s after failed upgrade; want %s", got, self)
			}
			select {
			case <-p.u.Exit():
				t.Errorf("Exit() closed after a failed upgrade")
			default:
			}
		})
	}
}

func TestRollbackDuringProbation(t *testing.T) {
	results := make(chan Result, 1)
	pidfile := filepath.Join(t.TempDir(), "svc.pid")
	p := startParent(t, "die-probation", Options{NoSignals: true, Probation: 5 * time.Second, PIDFile: pidfile, OnResult: func(r Result) { results <- r }})
	l := startLoad(p.addr, 4, 4)
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	res, err := p.u.Upgrade(context.Background())
	if !errors.Is(err, ErrRolledBack) {
		t.Fatalf("Upgrade() = %v; want %v", err, ErrRolledBack)
	}
	if elapsed := time.Since(start); elapsed > 4*time.Second {
		t.Errorf("rollback took %v; want it as soon as the new process died (~300ms)", elapsed)
	}
	if res.Outcome != RolledBack || res.Ready == 0 {
		t.Errorf("Result = %+v; want RolledBack after ready", res)
	}
	if r := <-results; r.Outcome != RolledBack {
		t.Errorf("OnResult got %v; want RolledBack", r.Outcome)
	}
	if got := readPIDFile(t, pidfile); got != self {
		t.Errorf("pidfile after rollback = %s; want %s", got, self)
	}
	before := l.requests.Load()
	time.Sleep(300 * time.Millisecond)
	l.finish(t)
	if l.requests.Load() == before {
		t.Errorf("no request served after the rollback")
	}
	// The new process accepted nothing, so every request went to us,
	// including those queued while both processes were not accepting.
	if len(l.pids) != 1 || l.pids[self] == 0 {
		t.Errorf("requests served by %v; want only pid %s", l.pids, self)
	}
	waitReaped(t, res.PID, 5*time.Second)
	// We can upgrade again.
	if _, err := p.u.Upgrade(context.Background()); !errors.Is(err, ErrRolledBack) {
		t.Errorf("second Upgrade() = %v; want %v", err, ErrRolledBack)
	}
}

func TestCommitHandsOver(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "svc.pid")
	notify := listenNotify(t, dir)
	state := make([]byte, 100<<10)
	rand.Read(state)
	unixPath := filepath.Join(dir, "svc.sock")

	p := startParent(t, "serve", Options{
		NoSignals: true,
		Probation: 200 * time.Millisecond,
		PIDFile:   pidfile,
		Env:       []string{envUnix + "=" + unixPath, envUDP + "=127.0.0.1:0"},
		Snapshot:  func(context.Context) ([]byte, error) { return state, nil },
	})
	if got := readPIDFile(t, pidfile); got != self {
		t.Errorf("pidfile after Ready = %s; want %s", got, self)
	}
	if got := notify.next(t); got != "MAINPID="+self+"\nREADY=1" {
		t.Errorf("notify after Ready = %q", got)
	}
	uln, err := p.u.Listen(context.Background(), "unix", unixPath)
	if err != nil {
		t.Fatalf("Listen(unix) = %v", err)
	}
	go p.srv.Serve(uln)
	udp, err := p.u.ListenPacket(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenPacket(udp) = %v", err)
	}
	go udpEcho(udp)
	if got := udpGet(t, udp.LocalAddr().String()); got != self {
		t.Errorf("UDP before upgrade answered by %s; want %s", got, self)
	}

	l := startLoad(p.addr, 4, 4)
	res, err := p.u.Upgrade(context.Background())
	if err != nil {
		t.Fatalf("Upgrade() = %v", err)
	}
	child := strconv.Itoa(res.PID)
	defer stopChild(t, res.PID)
	if res.Outcome != Committed || res.Ready <= 0 || res.Ready > 10*time.Second {
		t.Errorf("Result = %+v; want Committed with a ready time", res)
	}
	select {
	case <-p.u.Exit():
	case <-time.After(time.Second):
		t.Fatal("Exit() not closed after commit")
	}
	if got := readPIDFile(t, pidfile); got != child {
		t.Errorf("pidfile after commit = %s; want new pid %s", got, child)
	}
	if got := notify.next(t); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("notify at upgrade start = %q; want RELOADING=1", got)
	}
	if got := notify.next(t); got != "MAINPID="+child+"\nREADY=1" {
		t.Errorf("notify at commit = %q; want MAINPID=%s READY=1", got, child)
	}
	if _, err := p.u.Upgrade(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Upgrade() after hand-over = %v; want %v", err, ErrClosed)
	}

	// The old process drains; the load goes on without a failure.
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.srv.Drain(ctx); err != nil {
		t.Errorf("Drain() = %v", err)
	}
	udp.Close()
	time.Sleep(200 * time.Millisecond)
	l.finish(t)
	if l.pids[child] == 0 {
		t.Errorf("requests served by %v; want some by the new pid %s", l.pids, child)
	}

	for _, net := range []struct{ network, addr string }{{"tcp", p.addr}, {"unix", unixPath}} {
		if got := mustGetPID(t, net.network, net.addr); got != child {
			t.Errorf("%s served by %s after drain; want %s", net.network, got, child)
		}
	}
	if got := udpGet(t, udp.LocalAddr().String()); got != child {
		t.Errorf("UDP after upgrade answered by %s; want %s", got, child)
	}
	if _, err := os.Stat(unixPath); err != nil {
		t.Errorf("unix socket path after the old process closed it: %v; want it kept for the new process", err)
	}
	if got := fetchState(t, unixPath); !bytes.Equal(got, state) {
		t.Errorf("state in new process: %d bytes, equal=%v; want the %d bytes of the snapshot", len(got), bytes.Equal(got, state), len(state))
	}

	stopChild(t, res.PID)
	if _, err := os.Stat(unixPath); !os.IsNotExist(err) {
		t.Errorf("unix socket path after the last owner exited: %v; want it removed", err)
	}
}

func TestConcurrentUpgrades(t *testing.T) {
	p := startParent(t, "slow-ready", Options{NoSignals: true, Probation: 100 * time.Millisecond})
	type out struct {
		res Result
		err error
	}
	outs := make(chan out, 2)
	var start sync.WaitGroup
	start.Add(1)
	for range 2 {
		go func() {
			start.Wait()
			res, err := p.u.Upgrade(context.Background())
			outs <- out{res, err}
		}()
	}
	start.Done()
	var ok, busy int
	var pid int
	for range 2 {
		select {
		case o := <-outs:
			switch {
			case o.err == nil:
				ok++
				pid = o.res.PID
			case errors.Is(o.err, ErrUpgradeInProgress):
				busy++
				var ie *InProgressError
				if !errors.As(o.err, &ie) || ie.Phase == "" {
					t.Errorf("in-progress error = %#v; want an *InProgressError with a phase", o.err)
				}
			default:
				t.Errorf("Upgrade() = %v", o.err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("Upgrade() did not return within 60s")
		}
	}
	defer stopChild(t, pid)
	if ok != 1 || busy != 1 {
		t.Errorf("concurrent Upgrade(): %d succeeded, %d got ErrUpgradeInProgress; want 1 and 1", ok, busy)
	}
}

func TestSignalTriggersUpgrade(t *testing.T) {
	results := make(chan Result, 2)
	p := startParent(t, "serve", Options{Probation: 100 * time.Millisecond, OnResult: func(r Result) { results <- r }})
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-results:
		defer stopChild(t, r.PID)
		if r.Outcome != Committed || r.Trigger != "hangup" {
			t.Errorf("result = %+v; want Committed by hangup", r)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no upgrade within 60s of SIGHUP")
	}
	select {
	case <-p.u.Exit():
	case <-time.After(time.Second):
		t.Error("Exit() not closed after a committed upgrade")
	}
}

// TestChildRefusesOtherMajor plays a parent speaking protocol 9.0 to a real
// new process, which must refuse with its own version and exit non-zero.
func TestChildRefusesOtherMajor(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
	defer ours.Close()
	exe, _ := os.Executable()
	var stderr bytes.Buffer
	p, err := startProcess(exe, []string{envHelper + "=serve", envTCP + "=127.0.0.1:0", envParent + "=" + self}, []*os.File{theirs}, &stderr)
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := encodeHello(hello{parentPID: os.Getpid()})
	if err := writeFrame(ours, Version{9, 0}, msgHello, payload); err != nil {
		t.Fatal(err)
	}
	ours.SetReadDeadline(time.Now().Add(30 * time.Second))
	f, err := readFrame(ours)
	if err != nil {
		t.Fatalf("read answer = %v; want a refusal", err)
	}
	if f.typ != msgRefuse || f.version != protocolVersion || !strings.Contains(string(f.payload), "9.0") {
		t.Errorf("answer = %v %v %q; want refuse from %v naming 9.0", f.typ, f.version, f.payload, protocolVersion)
	}
	code := p.wait(t, 30*time.Second)
	if code == 0 {
		t.Errorf("new process exit code = 0; want non-zero after refusing")
	}
	if !strings.Contains(stderr.String(), "version mismatch") {
		t.Errorf("new process stderr = %q; want it to mention the version mismatch", stderr.String())
	}
}

func TestNoLeaks(t *testing.T) {
	// Warm up lazily created descriptors (epoll, signal pipe).
	u, err := New(Options{NoSignals: true, Env: []string{envHelper + "=exit-init"}})
	if err != nil {
		t.Fatal(err)
	}
	u.Upgrade(context.Background())
	u.Close()

	fds := countFDs(t)
	fdList := listFDs()
	var pids []int
	for _, scenario := range []string{"exit-init", "hang", "fake-v2", "die-probation", "serve"} {
		t.Run(scenario, func(t *testing.T) {
			// die-probation dies 300 ms after ready: within a 1s probation
			// (a rollback), and serve passes a 100 ms one.
			probation := 100 * time.Millisecond
			if scenario == "die-probation" {
				probation = 5 * time.Second
			}
			u, err := New(Options{NoSignals: true, UpgradeTimeout: 2 * time.Second, Probation: probation,
				Env: []string{envHelper + "=" + scenario, envTCP + "=127.0.0.1:0"}})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			u.Ready()
			res, err := u.Upgrade(context.Background())
			pids = append(pids, res.PID)
			switch scenario {
			case "serve":
				stopChild(t, res.PID)
			case "die-probation":
				if !errors.Is(err, ErrRolledBack) {
					t.Errorf("Upgrade() = %v; want %v", err, ErrRolledBack)
				}
			}
			ln.Close()
			u.Close()
		})
	}
	for _, pid := range pids {
		waitReaped(t, pid, 5*time.Second)
	}
	if got := countFDs(t); got != fds {
		t.Errorf("open descriptors = %d; want %d as before\nbefore: %s\nafter:  %s", got, fds, fdList, listFDs())
	}
}

// TestRollbackClosesHandOverSocket: each rolled-back upgrade used to leave
// the control socket to the dead process open.
func TestRollbackClosesHandOverSocket(t *testing.T) {
	p := startParent(t, "die-probation", Options{NoSignals: true, Probation: 5 * time.Second})
	rollback := func() {
		t.Helper()
		res, err := p.u.Upgrade(context.Background())
		if !errors.Is(err, ErrRolledBack) {
			t.Fatalf("Upgrade() = %v; want %v", err, ErrRolledBack)
		}
		waitReaped(t, res.PID, 5*time.Second)
	}
	rollback() // warm-up
	fds, fdList := countFDs(t), listFDs()
	for range 3 {
		rollback()
	}
	if got := countFDs(t); got != fds {
		t.Errorf("open descriptors after 3 rollbacks = %d; want %d as before\nbefore: %s\nafter:  %s", got, fds, fdList, listFDs())
	}
}

func TestRelativeBinaryRefused(t *testing.T) {
	var results []Result
	p := startParent(t, "serve", Options{NoSignals: true, OnResult: func(r Result) { results = append(results, r) }})
	res, err := p.u.UpgradeBinary(context.Background(), "bin/svc")
	var re *RelativePathError
	if !errors.Is(err, ErrRelativePath) || !errors.As(err, &re) || re.Path != "bin/svc" {
		t.Fatalf("UpgradeBinary(relative) = %v; want a *RelativePathError for bin/svc", err)
	}
	var ce *ChildError
	if !errors.As(err, &ce) || ce.Stage != "prepare" || res.PID != 0 || res.Outcome != Failed {
		t.Errorf("UpgradeBinary(relative) = %+v, %v; want Failed at stage prepare, no process started", res, err)
	}
	if len(results) != 1 || !errors.Is(results[0].Err, ErrRelativePath) {
		t.Errorf("OnResult got %+v; want the refusal (so that it is audited)", results)
	}
	if got := mustGetPID(t, "tcp", p.addr); got != self {
		t.Errorf("served by %s; want %s", got, self)
	}
}

func TestOptionsBinaryResolvedAtNew(t *testing.T) {
	wd, _ := os.Getwd()
	u, err := New(Options{NoSignals: true, Binary: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if want := filepath.Join(wd, "svc"); u.opts.Binary != want {
		t.Errorf("Options.Binary = %q; want %q", u.opts.Binary, want)
	}
}

func TestCloseKillsStartingChild(t *testing.T) {
	p := startParent(t, "hang", Options{NoSignals: true})
	errc := make(chan error, 1)
	var pid int
	go func() {
		res, err := p.u.Upgrade(context.Background())
		pid = res.PID
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	p.u.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Upgrade() during Close = %v; want %v", err, ErrClosed)
		}
		waitReaped(t, pid, 5*time.Second)
	case <-time.After(10 * time.Second):
		t.Fatal("Upgrade() did not return within 10s of Close")
	}
}

func TestUpgradeContextCancel(t *testing.T) {
	p := startParent(t, "hang", Options{NoSignals: true})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	res, err := p.u.Upgrade(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Upgrade() = %v; want %v", err, context.DeadlineExceeded)
	}
	waitReaped(t, res.PID, 5*time.Second)
	if got := mustGetPID(t, "tcp", p.addr); got != self {
		t.Errorf("served by %s; want %s", got, self)
	}
}

func TestPrepareBinary(t *testing.T) {
	exe, _ := os.Executable()
	tests := []struct {
		name    string
		prepare func(context.Context, string) (string, error)
		wantErr bool
	}{
		{"refuse", func(context.Context, string) (string, error) { return "", errors.New("signature invalid") }, true},
		{"missing", func(context.Context, string) (string, error) { return "/nonexistent/binary", nil }, true},
		{"verified copy", func(_ context.Context, path string) (string, error) {
			if path != exe {
				return "", errors.New("asked to prepare " + path)
			}
			return path, nil
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startParent(t, "serve", Options{NoSignals: true, Probation: 50 * time.Millisecond, PrepareBinary: tt.prepare})
			res, err := p.u.Upgrade(context.Background())
			if res.PID != 0 {
				defer stopChild(t, res.PID)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("Upgrade() = %v; want error %v", err, tt.wantErr)
			}
			if err != nil {
				if got := mustGetPID(t, "tcp", p.addr); got != self {
					t.Errorf("served by %s; want %s", got, self)
				}
			}
		})
	}
}

func readPIDFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pidfile: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func udpGet(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range 20 {
		c.Write([]byte("who"))
		c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	t.Fatalf("no UDP answer from %s", addr)
	return ""
}

func fetchState(t *testing.T, unixPath string) []byte {
	t.Helper()
	c := &strictClient{network: "unix", addr: unixPath}
	s, err := c.get("/state")
	if err != nil {
		t.Fatalf("GET /state = %v", err)
	}
	return []byte(s)
}

// fakeNotify is a stand-in for systemd's notification socket.
type fakeNotify struct{ conn *net.UnixConn }

func listenNotify(t *testing.T, dir string) *fakeNotify {
	t.Helper()
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &fakeNotify{conn}
}

func (n *fakeNotify) next(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 4096)
	n.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := n.conn.Read(buf)
	if err != nil {
		t.Fatalf("read notify socket: %v", err)
	}
	return string(buf[:k])
}
