package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the new process: TestMain runs a helper instead
// of the tests when UPGRADE_HELPER is set.
const (
	envHelper  = "UPGRADE_HELPER"   // scenario, see runHelper
	envTCP     = "UPGRADE_TEST_TCP" // address to Listen on
	envUnix    = "UPGRADE_TEST_UNIX"
	envUDP     = "UPGRADE_TEST_UDP"
	envPIDFile = "UPGRADE_TEST_PIDFILE"
	envCert    = "UPGRADE_TEST_CERT" // serve-h2: TLS certificate and key files
	envKey     = "UPGRADE_TEST_KEY"
)

func TestMain(m *testing.M) {
	if s := os.Getenv(envHelper); s != "" {
		os.Exit(runHelper(s))
	}
	os.Exit(m.Run())
}

// runHelper is the new process's main. Scenarios:
//
//	serve         listen on what the environment says, serve, say ready,
//	              drain and exit after Exit or SIGTERM
//	slow-ready    like serve, ready after 500 ms
//	exit-init     write to stderr and exit 3 before ready
//	hang          never say ready
//	die-probation claim the sockets, accept nothing, say ready, exit 2 after 300 ms
//	fake-v2       speak hand-over protocol 2.0: refuse the hello
//	serve-h2      serve HTTP/1.1 and HTTP/2 on envTCP, over TLS with the
//	              ticket keys shared if envCert is set, else h2c
//	resume-line   answer lines on the live connection handed over
func runHelper(scenario string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if scenario == "fake-v2" {
		conn := os.NewFile(controlFD, "control")
		if _, err := readFrame(conn); err != nil {
			fmt.Fprintln(os.Stderr, "fake-v2: read hello:", err)
			return 4
		}
		writeFrame(conn, Version{2, 0}, msgRefuse, []byte("fake-v2 speaks 2.0 only"))
		return 1
	}
	u, err := New(Options{NoSignals: true, Logger: log, PIDFile: os.Getenv(envPIDFile)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	defer u.Close()
	switch scenario {
	case "exit-init":
		fmt.Fprintln(os.Stderr, "boom: cannot open the database")
		return 3
	case "hang":
		time.Sleep(time.Hour)
		return 5
	case "serve-h2":
		return serveH2Helper(u)
	case "resume-line":
		return resumeLineHelper(u)
	}
	ctx := context.Background()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, os.Getpid()) })
	mux.HandleFunc("/state", func(w http.ResponseWriter, r *http.Request) { w.Write(u.State()) })
	mux.HandleFunc("/phase", func(w http.ResponseWriter, r *http.Request) { phase, _ := u.Phase(); fmt.Fprint(w, phase) })
	srv := NewHTTPServer(&http.Server{Handler: mux}, HTTPOptions{})
	var closers []io.Closer
	if a := os.Getenv(envTCP); a != "" {
		ln, err := u.Listen(ctx, "tcp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		if scenario != "die-probation" {
			go srv.Serve(ln)
		}
	}
	if p := os.Getenv(envUnix); p != "" {
		ln, err := u.Listen(ctx, "unix", p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		go srv.Serve(ln)
	}
	if a := os.Getenv(envUDP); a != "" {
		pc, err := u.ListenPacket(ctx, "udp", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 1
		}
		closers = append(closers, pc)
		go udpEcho(pc)
	}
	switch scenario {
	case "slow-ready":
		time.Sleep(500 * time.Millisecond)
	case "die-probation":
		if err := u.Ready(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
		}
		time.Sleep(300 * time.Millisecond)
		return 2
	}
	code := readyThenDrain(u, srv)
	for _, c := range closers {
		c.Close()
	}
	return code
}

// readyThenDrain says ready, waits for Exit or SIGTERM and drains srv.
func readyThenDrain(u *Upgrader, srv *HTTPServer) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := u.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	select {
	case <-u.Exit():
	case <-term:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Drain(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "helper: drain:", err)
	}
	return 0
}

// udpEcho answers every datagram with this process's pid.
func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte(strconv.Itoa(os.Getpid())), addr)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return nil
}

// parentServer is the test process acting as the service before the upgrade.
type parentServer struct {
	u    *Upgrader
	srv  *HTTPServer
	addr string
	ln   net.Listener
}

// startParent creates an Upgrader in the test process whose upgrades run
// this test binary with scenario, listens on 127.0.0.1 and serves HTTP.
func startParent(t *testing.T, scenario string, opts Options) *parentServer {
	t.Helper()
	opts.Env = append(opts.Env, envHelper+"="+scenario, envTCP+"=127.0.0.1:0")
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	u, err := New(opts)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen() = %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, os.Getpid()) })
	p := &parentServer{u: u, srv: NewHTTPServer(&http.Server{Handler: mux}, HTTPOptions{}), addr: ln.Addr().String(), ln: ln}
	go p.srv.Serve(ln)
	if err := u.Ready(); err != nil {
		t.Fatalf("Ready() = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.srv.Drain(ctx); err != nil {
			t.Errorf("Drain() = %v", err)
		}
		u.Close()
	})
	return p
}

// stopChild asks a committed new process to exit and waits until it was
// reaped.
func stopChild(t *testing.T, pid int) {
	t.Helper()
	if pid == 0 {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	waitReaped(t, pid, 15*time.Second)
}

// waitReaped waits until pid no longer exists, not even as a zombie.
func waitReaped(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		if time.Now().After(deadline) {
			state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			t.Fatalf("process %d still exists after %v: %s", pid, timeout, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// strictClient is a non-retrying HTTP/1.1 client: any error is a failure.
// It keeps its connection unless the server says Connection: close.
type strictClient struct {
	network, addr string
	keepAlive     bool
	conn          net.Conn
	br            *bufio.Reader
}

// get sends GET path and returns the body.
func (c *strictClient) get(path string) (string, error) {
	if c.conn == nil {
		conn, err := net.DialTimeout(c.network, c.addr, 5*time.Second)
		if err != nil {
			return "", err
		}
		c.conn, c.br = conn, bufio.NewReader(conn)
	}
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: test\r\n"
	if !c.keepAlive {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(c.conn, req+"\r\n"); err != nil {
		c.close()
		return "", err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.close()
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		c.close()
		return "", fmt.Errorf("status %s", resp.Status)
	}
	if resp.Close || !c.keepAlive {
		c.close()
	}
	return string(body), nil
}

func (c *strictClient) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// load runs strict clients against addr until stop is closed.
type load struct {
	requests, failed atomic.Int64
	mu               sync.Mutex // protects errs and pids
	errs             []error
	pids             map[string]int
	wg               sync.WaitGroup
	stop             chan struct{}
}

func startLoad(addr string, keepAlive, fresh int) *load {
	l := &load{stop: make(chan struct{}), pids: map[string]int{}}
	run := func(keep bool) {
		defer l.wg.Done()
		c := &strictClient{network: "tcp", addr: addr, keepAlive: keep}
		defer c.close()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			l.requests.Add(1)
			pid, err := c.get("/")
			l.mu.Lock()
			if err != nil {
				l.failed.Add(1)
				l.errs = append(l.errs, err)
			} else {
				l.pids[pid]++
			}
			l.mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}
	for i := 0; i < keepAlive; i++ {
		l.wg.Add(1)
		go run(true)
	}
	for i := 0; i < fresh; i++ {
		l.wg.Add(1)
		go run(false)
	}
	return l
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("load did not stop within 30s")
	}
	if n := l.failed.Load(); n > 0 {
		t.Errorf("load: %d of %d requests failed; first errors: %v", n, l.requests.Load(), l.errs[:min(5, len(l.errs))])
	}
	if l.requests.Load() == 0 {
		t.Errorf("load: no request was sent")
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

func listFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fmt.Fprintf(&b, "%s→%s ", e.Name(), l)
	}
	return b.String()
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startProcess runs exe with extra environment and files (from descriptor 3).
func startProcess(exe string, env []string, files []*os.File, stderr io.Writer) (*proc, error) {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = files
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// wait returns the exit code, killing the process after timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("process %d did not exit within %v", p.cmd.Process.Pid, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}
