// Command upgrade measures zero-downtime binary upgrades: it builds the
// example servers, runs them on 127.0.0.1, drives them with strict load
// generators and upgrades them repeatedly, counting every failed request.
//
//	go run ./bench/upgrade [-upgrades 50] [-conns 64] [-modes keepalive,close,grpc,h2]
//
// The HTTP/1.1 load generator never retries: a refused connection, a reset,
// an EOF or a short read is a failed request. A response marked
// "Connection: close" is not a failure: the client opens a new connection
// for its next request. The modes run one after the other, each during
// -upgrades upgrades:
//
//	keepalive  examples/upgradable; -conns connections, each reused until
//	           the server closes it
//	close      examples/upgradable; -close-conns workers, a new connection
//	           per request
//	grpc       examples/grpcecho; grpc-go clients with no retry policy (no
//	           service config): -grpc-callers unary callers and -grpc-streams
//	           bidirectional streams sending one message and reading its
//	           answer at a time. A unary call that returns an error is a
//	           failure; a stream that ends with anything but the server's
//	           drain status (codes.Unavailable, grpcdrain.ErrReconnect) is
//	           broken; a stream that ends with it is opened again. Upgrades
//	           by SIGHUP.
//	h2         examples/upgradable over TLS (a certificate made for the
//	           run), -h2-conns Go clients each with its own HTTP/2
//	           connection and TLS session cache, sending GETs one after the
//	           other. Any error or non-200 answer is a failure (Go's client
//	           retries by itself only requests a GOAWAY says were never
//	           processed). Every TLS handshake is counted, and whether it
//	           resumed a session.
//
// Upgrades alternate between SIGHUP and the programmatic path (POST /upgrade
// on the admin socket, which calls Upgrader.Upgrade); -trigger picks one.
// If wrk is on PATH, a third phase runs wrk -t2 -c64 during -wrk-upgrades
// upgrades and reports its error count.
//
// The example server is built with CGO_ENABLED=0 (a static binary, as
// services are often deployed); -cgo builds it dynamically linked instead.
//
// The last line is
//
//	RESULT {"keepalive":{"requests":…,"failed":…},"close":{…},"grpc":{…},"h2":{…},"upgrades":…,"ready_ms_p50":…,…}
//
// where grpc has unary, unary_failed, streams (opened), stream_messages,
// streams_reconnected (ended with the drain status) and streams_broken; h2
// has requests, failed, handshakes, reconnects (handshakes after each
// client's first), resumed (reconnects that resumed a TLS session) and
// resumed_pct; each mode has its committed and failed upgrades. upgrades
// counts the committed upgrades of all modes (the wrk phase's are in
// wrk_upgrades) and ready_ms_p50 is the median time from the start of an
// upgrade to the new process saying ready, over every committed upgrade of
// the run.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/upgrade:", err)
		os.Exit(1)
	}
}

type config struct {
	modes       []string
	upgrades    int
	conns       int
	closeConns  int
	grpcCallers int
	grpcStreams int
	h2Conns     int
	probation   time.Duration
	interval    time.Duration
	trigger     string
	wrkUpgrades int
	maxRequests int64
	modeTimeout time.Duration
	keep        bool
	cgo         bool
}

type modeResult struct {
	Requests int64 `json:"requests"`
	Failed   int64 `json:"failed"`
}

// upgradeCounts are a mode's committed and failed upgrades.
type upgradeCounts struct {
	Upgrades       int `json:"upgrades"`
	UpgradesFailed int `json:"upgrades_failed"`
}

func run() error {
	var cfg config
	modes := flag.String("modes", "keepalive,close,grpc,h2", "modes to run, in order: keepalive, close, grpc, h2")
	flag.IntVar(&cfg.upgrades, "upgrades", 50, "upgrades per mode")
	flag.IntVar(&cfg.grpcCallers, "grpc-callers", 16, "grpc mode: concurrent unary callers")
	flag.IntVar(&cfg.grpcStreams, "grpc-streams", 16, "grpc mode: concurrent bidirectional streams")
	flag.IntVar(&cfg.h2Conns, "h2-conns", 16, "h2 mode: clients, each with its own HTTP/2 connection")
	flag.IntVar(&cfg.conns, "conns", 64, "keep-alive connections")
	flag.IntVar(&cfg.closeConns, "close-conns", 64, "concurrent workers in the new-connection-per-request mode")
	flag.DurationVar(&cfg.probation, "probation", 100*time.Millisecond, "server's probation window")
	flag.DurationVar(&cfg.interval, "interval", 50*time.Millisecond, "pause between two upgrades")
	flag.StringVar(&cfg.trigger, "trigger", "both", "how to upgrade: hup, api or both (alternate)")
	flag.IntVar(&cfg.wrkUpgrades, "wrk-upgrades", 20, "upgrades during the wrk phase (if wrk is on PATH); 0 skips it")
	flag.Int64Var(&cfg.maxRequests, "max-requests", 5_000_000, "stop a mode's load after this many requests")
	flag.DurationVar(&cfg.modeTimeout, "mode-timeout", 5*time.Minute, "give up on a mode after this long")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (server log, results)")
	flag.BoolVar(&cfg.cgo, "cgo", false, "build the example server with cgo (dynamically linked); default CGO_ENABLED=0")
	flag.Parse()
	switch cfg.trigger {
	case "hup", "api", "both":
	default:
		return fmt.Errorf("-trigger %q: want hup, api or both", cfg.trigger)
	}
	for _, m := range strings.Split(*modes, ",") {
		switch m {
		case "keepalive", "close", "grpc", "h2":
			cfg.modes = append(cfg.modes, m)
		default:
			return fmt.Errorf("-modes: unknown mode %q", m)
		}
	}

	// Old server processes exit after their successor took over; as
	// subreaper we inherit and reap them, and can kill leftovers.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, 36 /* PR_SET_CHILD_SUBREAPER */, 1, 0); errno != 0 {
		return fmt.Errorf("become subreaper: %v", errno)
	}

	dir, err := os.MkdirTemp("", "bench-upgrade-")
	if err != nil {
		return err
	}
	if cfg.keep {
		fmt.Fprintln(os.Stderr, "keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	// One server per kind, started when a mode first needs it.
	servers := map[string]*server{}
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	serverFor := func(kind string) (*server, error) {
		if s, ok := servers[kind]; ok {
			return s, nil
		}
		s, err := startServer(cfg, dir, kind)
		if err != nil {
			return nil, err
		}
		servers[kind] = s
		return s, nil
	}

	out := map[string]any{}
	var upgradesOK, upgradesFailed int
	for _, mode := range cfg.modes {
		kind := map[string]string{"keepalive": "http", "close": "http", "grpc": "grpc", "h2": "h2"}[mode]
		s, err := serverFor(kind)
		if err != nil {
			return fmt.Errorf("mode %s: %w", mode, err)
		}
		res, counts, err := runMode(cfg, mode, s)
		if err != nil {
			return fmt.Errorf("mode %s: %w", mode, err)
		}
		upgradesOK += counts.Upgrades
		upgradesFailed += counts.UpgradesFailed
		out[mode] = res
	}

	if wrk, err := exec.LookPath("wrk"); err == nil && cfg.wrkUpgrades > 0 {
		s, err := serverFor("http")
		if err != nil {
			return fmt.Errorf("wrk: %w", err)
		}
		n, errs, ok, failed, err := s.runWrk(cfg, wrk)
		if err != nil {
			return fmt.Errorf("wrk: %w", err)
		}
		out["wrk_requests"] = n
		out["wrk_errors"] = errs
		out["wrk_upgrades"] = ok
		out["wrk_upgrades_failed"] = failed
	} else if cfg.wrkUpgrades > 0 {
		fmt.Fprintln(os.Stderr, "wrk not on PATH: skipping the wrk phase")
	}

	var ready []float64
	for _, s := range servers {
		r, err := s.readyTimes()
		if err != nil {
			return err
		}
		ready = append(ready, r...)
	}
	out["upgrades"] = upgradesOK
	out["upgrades_failed"] = upgradesFailed
	out["ready_ms_p50"] = percentile(ready, 50)
	out["ready_ms_p90"] = percentile(ready, 90)
	out["ready_ms_max"] = percentile(ready, 100)
	out["probation_ms"] = cfg.probation.Milliseconds()
	out["cgo"] = cfg.cgo

	b, err := json.Marshal(orderedResult(out))
	if err != nil {
		return err
	}
	fmt.Printf("RESULT %s\n", b)
	return nil
}

// orderedResult puts the fields the issue names first.
func orderedResult(m map[string]any) json.RawMessage {
	keys := []string{"keepalive", "close", "grpc", "h2", "upgrades", "ready_ms_p50"}
	var rest []string
	for k := range m {
		if !slices.Contains(keys, k) {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	var b strings.Builder
	b.WriteByte('{')
	for _, k := range append(keys, rest...) {
		v, ok := m[k]
		if !ok {
			continue
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, _ := json.Marshal(v)
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('}')
	return json.RawMessage(b.String())
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// server is an example server and every process that succeeded it.
type server struct {
	kind                               string // http, h2 or grpc
	addr, admin, pidfile, results, log string
	roots                              *x509.CertPool // h2: trusts the server's certificate
	stopReaper                         func()

	mu   sync.Mutex   // protects pids
	pids map[int]bool // server processes seen; true once reaped
}

// startServer builds the example server of kind (http and h2:
// examples/upgradable, grpc: examples/grpcecho) and starts it in a
// directory of its own under dir.
func startServer(cfg config, dir, kind string) (*server, error) {
	dir = filepath.Join(dir, kind)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	pkg := "github.com/hotswapgo/hotswap/examples/upgradable"
	if kind == "grpc" {
		pkg = "github.com/hotswapgo/hotswap/examples/grpcecho"
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	build := exec.Command("go", "build", "-o", bin, pkg)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if !cfg.cgo {
		// A static binary starts ~1.5 ms faster (no dynamic loader, no libc
		// init), which is most of the child's start-up cost at idle.
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
	}
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build example server: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := &server{
		kind:    kind,
		addr:    addr,
		pidfile: filepath.Join(dir, "server.pid"),
		results: filepath.Join(dir, "results.jsonl"),
		log:     filepath.Join(dir, "server.log"),
		pids:    map[int]bool{},
	}
	args := []string{"-addr", s.addr, "-pidfile", s.pidfile, "-results", s.results, "-probation", cfg.probation.String(), "-drain", "30s"}
	switch kind {
	case "http":
		s.admin = filepath.Join(dir, "admin.sock")
		args = append(args, "-admin", s.admin)
	case "h2":
		cert, key, roots, err := writeCert(dir)
		if err != nil {
			return nil, err
		}
		s.roots = roots
		s.admin = filepath.Join(dir, "admin.sock")
		args = append(args, "-admin", s.admin, "-cert", cert, "-key", key)
	}
	if err := s.start(bin, args); err != nil {
		return nil, err
	}
	s.stopReaper = s.reapLoop()
	return s, nil
}

// stop shuts the server down and stops reaping.
func (s *server) stop() {
	s.stopReaper()
	s.shutdown()
}

func (s *server) start(bin string, args []string) error {
	logf, err := os.Create(s.log)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	s.track(cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if pid, err := s.currentPID(); err == nil && pid == cmd.Process.Pid {
			if c, err := net.Dial("tcp", s.addr); err == nil {
				c.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not up within 10s; log: %s", tail(s.log))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) track(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pids[pid]; !ok {
		s.pids[pid] = false
	}
}

func (s *server) currentPID() (int, error) {
	b, err := os.ReadFile(s.pidfile)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// reapLoop reaps server processes that were reparented to us.
func (s *server) reapLoop() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			s.reap()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// reap collects every tracked process that has exited and is our child, and
// reports how many tracked processes are still around.
func (s *server) reap() (alive int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pid, reaped := range s.pids {
		if reaped {
			continue
		}
		var ws syscall.WaitStatus
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); got == pid {
			s.pids[pid] = true
			continue
		} else if errors.Is(err, syscall.ECHILD) && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			s.pids[pid] = true // gone and reaped by its parent
			continue
		}
		alive++
	}
	return alive
}

// shutdown stops the serving process and waits (bounded) for every server
// process to be gone; leftovers are killed.
func (s *server) shutdown() {
	if pid, err := s.currentPID(); err == nil {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(45 * time.Second)
	for s.reap() > 0 {
		if time.Now().After(deadline) {
			s.mu.Lock()
			for pid, reaped := range s.pids {
				if !reaped {
					fmt.Fprintf(os.Stderr, "killing leftover server process %d\n", pid)
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			s.mu.Unlock()
			time.Sleep(200 * time.Millisecond)
			s.reap()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// upgradeN performs n upgrades, one after the other, unless stop closes.
func (s *server) upgradeN(cfg config, n int, stop <-chan struct{}) (ok, failed int) {
	deadline := time.Now().Add(cfg.modeTimeout)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		select {
		case <-stop:
			return ok, failed
		default:
		}
		hup := cfg.trigger == "hup" || (cfg.trigger == "both" && i%2 == 1) || s.admin == ""
		var err error
		if hup {
			err = s.upgradeHUP()
		} else {
			err = s.upgradeAPI()
		}
		if err != nil {
			failed++
			fmt.Fprintf(os.Stderr, "upgrade %d failed: %v\n", i, err)
		} else {
			ok++
		}
		time.Sleep(cfg.interval)
	}
	return ok, failed
}

func (s *server) upgradeAPI() error {
	client := &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", s.admin)
			},
		},
	}
	resp, err := client.Post("http://admin/upgrade", "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Outcome string `json:"outcome"`
		PID     int    `json:"pid"`
		Error   string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("decode upgrade response: %w", err)
	}
	if r.PID != 0 {
		s.track(r.PID)
	}
	if r.Outcome != "committed" {
		return fmt.Errorf("%s: %s", r.Outcome, r.Error)
	}
	return nil
}

// upgradeHUP signals the serving process and waits until the pidfile names
// its successor (written once the successor passed probation).
func (s *server) upgradeHUP() error {
	old, err := s.currentPID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP %d: %w", old, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if pid, err := s.currentPID(); err == nil && pid != old {
			s.track(pid)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pidfile still names %d 2m after SIGHUP", old)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// readyTimes reads the ready times of committed upgrades from the results
// file the server processes append to.
func (s *server) readyTimes() ([]float64, error) {
	f, err := os.Open(s.results)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r struct {
			Outcome string  `json:"outcome"`
			ReadyMS float64 `json:"ready_ms"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("results file: %w", err)
		}
		if r.Outcome == "committed" {
			ms = append(ms, r.ReadyMS)
		}
	}
	return ms, sc.Err()
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// runWrk runs wrk -t2 -c64 for long enough to cover cfg.wrkUpgrades upgrades.
func (s *server) runWrk(cfg config, wrk string) (requests, errs int64, ok, failed int, err error) {
	dur := 3*time.Second + time.Duration(cfg.wrkUpgrades)*(cfg.probation+cfg.interval+100*time.Millisecond)
	secs := int(dur.Seconds()) + 1
	fmt.Fprintf(os.Stderr, "wrk: -t2 -c64 -d%ds during %d upgrades\n", secs, cfg.wrkUpgrades)
	var out strings.Builder
	cmd := exec.Command(wrk, "-t2", "-c64", fmt.Sprintf("-d%ds", secs), "http://"+s.addr+"/")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, 0, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	time.Sleep(time.Second)
	ok, failed = s.upgradeN(cfg, cfg.wrkUpgrades, done)
	select {
	case <-done:
	case <-time.After(dur + 30*time.Second):
		cmd.Process.Kill()
		<-done
		return 0, 0, ok, failed, errors.New("wrk did not finish")
	}
	text := out.String()
	fmt.Fprint(os.Stderr, text)
	if m := wrkRequests.FindStringSubmatch(text); m != nil {
		requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := wrkSocket.FindStringSubmatch(text); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			errs += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(text); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		errs += n
	}
	return requests, errs, ok, failed, nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// load is the strict, non-retrying HTTP/1.1 load generator.
type load struct {
	tally
	requests atomic.Int64
	quit     chan struct{}
	wg       sync.WaitGroup
}

func startLoad(addr string, keepAlive bool, workers int, maxRequests int64) *load {
	l := &load{quit: make(chan struct{})}
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
	if !keepAlive {
		req = []byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
	}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var conn net.Conn
			var br *bufio.Reader
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			for {
				select {
				case <-l.quit:
					return
				default:
				}
				if l.requests.Add(1) > maxRequests {
					l.requests.Add(-1)
					return
				}
				if conn == nil {
					c, err := net.DialTimeout("tcp", addr, 10*time.Second)
					if err != nil {
						l.fail("dial", err)
						continue
					}
					conn, br = c, bufio.NewReader(c)
				}
				closeAfter, err := roundTrip(conn, br, req)
				if err != nil {
					l.fail("request", err)
					conn.Close()
					conn = nil
					continue
				}
				if closeAfter || !keepAlive {
					conn.Close()
					conn = nil
				}
			}
		}()
	}
	return l
}

// roundTrip sends one request and reads the complete response. Any
// deviation is an error; it reports whether the server asked to close.
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (closeAfter bool, err error) {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(req); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return false, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("status %s", resp.Status)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return false, fmt.Errorf("short body: %d of %d bytes", n, resp.ContentLength)
	}
	return resp.Close, nil
}

func (l *load) stop(timeout time.Duration) (modeResult, error) {
	if err := stopWorkers(l.quit, &l.wg, timeout); err != nil {
		return modeResult{}, err
	}
	return modeResult{Requests: l.requests.Load(), Failed: l.failed.Load()}, nil
}
