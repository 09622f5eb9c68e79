package devloop_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/devloop"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
)

func TestMain(m *testing.M) { os.Exit(testhost.Main(m)) }

// eventWait bounds the wait for one event: a guest build, or a service
// build and upgrade, on a starved machine.
const eventWait = 5 * time.Minute

// debounce is the loop's debounce in these tests.
const debounce = 150 * time.Millisecond

// sourceTree makes a Go module in a temporary directory that builds
// against this repository, and returns its directory.
func sourceTree(t *testing.T) string {
	t.Helper()
	root, err := guestbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// This repository's requirements, so that a service builds too.
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mod = bytes.Replace(mod, []byte("module github.com/hotswapgo/hotswap\n"), []byte("module example.com/dev\n"), 1)
	mod = fmt.Appendf(mod, "\nrequire github.com/hotswapgo/hotswap v0.0.0\n\nreplace github.com/hotswapgo/hotswap => %s\n", root)
	write(t, filepath.Join(dir, "go.mod"), string(mod))
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "go.sum"), string(sum))
	return dir
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// guestSource is a pricing guest answering with label; its self-test fails
// if failSelfTest. Line 14 is the first line of main's body.
func guestSource(label string, failSelfTest bool, mainBody string) string {
	return fmt.Sprintf(`package main

import (
	"errors"

	"github.com/hotswapgo/hotswap/guest"
)

type price struct {
	Version string `+"`json:\"version\"`"+`
}

func main() {
	%s
}

func init() {
	guest.HandleJSON("quote", func(struct{}) (price, error) { return price{Version: %q}, nil })
	guest.SelfTest(func() error {
		if %t {
			return errors.New("self-test refuses on purpose")
		}
		return nil
	})
}
`, mainBody, label, failSelfTest)
}

// events collects a loop's events.
type events chan devloop.Event

func (e events) report(ev devloop.Event) { e <- ev }

// next returns the next event, failing the test if none comes in time.
func (e events) next(t *testing.T) devloop.Event {
	t.Helper()
	select {
	case ev := <-e:
		t.Logf("event: %s", devloop.Format(ev, false))
		return ev
	case <-time.After(eventWait):
		t.Fatalf("no event within %v", eventWait)
		return devloop.Event{}
	}
}

// none fails the test if an event comes within d.
func (e events) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev := <-e:
		t.Fatalf("unexpected event: %s", devloop.Format(ev, false))
	case <-time.After(d):
	}
}

// runLoop runs l until the test ends, and checks that it returns nil in
// time once stopped.
func runLoop(t *testing.T, l *devloop.Loop) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v; want nil once stopped", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("Run() did not return within a minute of its context's end")
		}
	}
	t.Cleanup(stop)
	return stop
}

// newServiceLoop returns a loop that builds and runs the service of
// serviceSource(label) from dir, and watches modules.
func newServiceLoop(t *testing.T, dir, label string, modules []devloop.Module, evs events) (l *devloop.Loop, addr string, key *devloop.DevKey, client *control.Client) {
	t.Helper()
	write(t, filepath.Join(dir, "svc", "main.go"), serviceSource(label, false))
	dev := filepath.Join(t.TempDir(), "dev")
	key, err := devloop.OpenDevKey(dev)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	socket := testhost.SocketPath(t)
	addr = freeAddr(t)
	client = control.NewClient(socket)
	l, err = devloop.New(devloop.Options{
		Dir:        dir,
		Modules:    modules,
		ServicePkg: "./svc",
		Run:        []string{"-state", state, "-dev-trust", key.TrustDir, "-socket", socket, "-addr", addr},
		Client:     client,
		Signer:     key.Signer,
		BuildDir:   filepath.Join(dev, "build"),
		Debounce:   debounce,
		Report:     evs.report,
		Logger:     testhost.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return l, addr, key, client
}

// get returns the body of GET url, failing the test on any error.
func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s = %s %q, %v; want 200", url, resp.Status, body, err)
	}
	return string(body)
}

func TestModuleLoop(t *testing.T) {
	dir := sourceTree(t)
	src := filepath.Join(dir, "pricing", "main.go")
	write(t, src, guestSource("one", false, ""))
	evs := make(events, 16)
	l, addr, key, client := newServiceLoop(t, dir, "svc", []devloop.Module{{Name: "pricing", Dir: "pricing"}}, evs)
	stop := runLoop(t, l)
	quote := func() string {
		t.Helper()
		var p struct{ Version string }
		body := get(t, "http://"+addr+"/quote")
		if err := json.Unmarshal([]byte(body), &p); err != nil {
			t.Fatalf("quote answered %q: %v", body, err)
		}
		return p.Version
	}

	started := evs.next(t)
	if started.Kind != devloop.EventStarted {
		t.Fatalf("first event: %s; want the service started", devloop.Format(started, false))
	}
	st, err := client.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.DevTrustDir != key.TrustDir {
		t.Errorf("status dev_trust_dir = %q; want %q", st.DevTrustDir, key.TrustDir)
	}

	// The first build loads what the sources say.
	if ev := evs.next(t); ev.Kind != devloop.EventLoaded || !ev.Built() {
		t.Fatalf("first module event: %s; want loaded after a build", devloop.Format(ev, false))
	}
	if v := quote(); v != "one" {
		t.Fatalf("quote answered by %q; want one", v)
	}

	// An edit: the new version serves.
	write(t, src, guestSource("two", false, ""))
	ev := evs.next(t)
	if ev.Kind != devloop.EventLoaded || !slices.Equal(ev.Files, []string{"pricing/main.go"}) {
		t.Fatalf("after an edit: %s, files %q; want loaded, caused by pricing/main.go", devloop.Format(ev, false), ev.Files)
	}
	if v := quote(); v != "two" {
		t.Fatalf("quote answered by %q after the edit; want two", v)
	}
	serving := ev.Version

	// A compile error: printed with file:line, the old version serves.
	write(t, src, guestSource("three", false, "undefinedThing()"))
	ev = evs.next(t)
	line := devloop.Format(ev, false)
	if ev.Kind != devloop.EventBuildFailed || !strings.Contains(ev.Output, "main.go:14:") || !strings.Contains(ev.Output, "undefinedThing") {
		t.Fatalf("after a compile error: %s; want build failed naming main.go:14", line)
	}
	if !strings.Contains(line, "pricing@"+serving+" keeps serving") {
		t.Errorf("build failure line %q does not say that pricing@%s keeps serving", line, serving)
	}
	if v := quote(); v != "two" {
		t.Fatalf("quote answered by %q after a compile error; want two", v)
	}

	// A failing self-test: refused, the old version serves.
	write(t, src, guestSource("four", true, ""))
	ev = evs.next(t)
	var cerr *control.Error
	if ev.Kind != devloop.EventRefused || !errors.As(ev.Err, &cerr) || cerr.Check != "selftest" {
		t.Fatalf("after a failing self-test: %s; want refused by the selftest check", devloop.Format(ev, false))
	}
	if !errors.Is(ev.Err, control.ErrRejected) || ev.Version != serving {
		t.Errorf("refusal %v, serving %q; want ErrRejected and %q serving", ev.Err, ev.Version, serving)
	}
	if v := quote(); v != "two" {
		t.Fatalf("quote answered by %q after a failing self-test; want two", v)
	}

	// A burst of saves, and changes that do not count: one build.
	for i := range 5 {
		write(t, src, guestSource(fmt.Sprintf("burst-%d", i), false, ""))
	}
	write(t, filepath.Join(dir, "pricing", "main_test.go"), "package main\n")
	write(t, filepath.Join(dir, "pricing", "notes.txt"), "not a source\n")
	ev = evs.next(t)
	if ev.Kind != devloop.EventLoaded {
		t.Fatalf("after a burst: %s; want loaded", devloop.Format(ev, false))
	}
	if v := quote(); v != "burst-4" {
		t.Fatalf("quote answered by %q after a burst; want burst-4", v)
	}
	evs.none(t, 10*debounce)
	stop()
	noProcessLeft(t, started.PID)
}

// noProcessLeft fails the test if a process of the group led by pid is
// left.
func noProcessLeft(t *testing.T, group int) {
	t.Helper()
	if err := syscall.Kill(-group, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kill(-%d, 0) = %v after the loop stopped; want ESRCH: a process of the service is left", group, err)
	}
}

// serviceSource is a service embedding the host: it answers HTTP with
// label and its pid, serves the control API on -socket and upgrades
// itself through it. With exitEarly it fails at start, writing why.
func serviceSource(label string, exitEarly bool) string {
	return fmt.Sprintf(`package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

func main() {
	if %t {
		fmt.Fprintln(os.Stderr, "svc: refusing to start on purpose")
		os.Exit(3)
	}
	state := flag.String("state", "", "state directory")
	devTrust := flag.String("dev-trust", "", "development trust root")
	socket := flag.String("socket", "", "control socket")
	addr := flag.String("addr", "", "HTTP address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *state, *devTrust, *socket, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "svc:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, state, devTrust, socket, addr string) error {
	b, err := wasm.New(wasm.Options{CacheDir: state + "/cache"})
	if err != nil {
		return err
	}
	h, err := host.New(host.Options{Backend: b, StateDir: state, DevTrustDir: devTrust, Service: "svc",
		Upgrade: &upgrade.Options{Probation: 100 * time.Millisecond}})
	if err != nil {
		return err
	}
	defer h.Close(context.Background())
	up := h.Upgrader()
	ln, err := up.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%%s pid %%d\n", %q, os.Getpid())
	})
	mux.HandleFunc("/quote", func(w http.ResponseWriter, r *http.Request) {
		out, err := h.Module("pricing").Call(r.Context(), "quote", []byte("{}"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(out)
	})
	srv := upgrade.NewHTTPServer(&http.Server{Handler: mux}, upgrade.HTTPOptions{})
	go srv.Serve(ln)
	cln, err := control.Listen(ctx, h, socket)
	if err != nil {
		return err
	}
	csrv, err := control.New(h, control.Options{})
	if err != nil {
		return err
	}
	go csrv.Serve(cln)
	if err := up.Ready(); err != nil {
		return err
	}
	select {
	case <-up.Exit():
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	csrv.Shutdown(sctx)
	return srv.Drain(sctx)
}
`, exitEarly, label)
}

func TestServiceLoop(t *testing.T) {
	dir := sourceTree(t)
	src := filepath.Join(dir, "svc", "main.go")
	evs := make(events, 16)
	l, addr, _, _ := newServiceLoop(t, dir, "first", nil, evs)
	goroutines := runtime.NumGoroutine()
	stop := runLoop(t, l)

	ev := evs.next(t)
	if ev.Kind != devloop.EventStarted || ev.Target != "svc" || !ev.Built() {
		t.Fatalf("first event: %s; want svc started after a build", devloop.Format(ev, false))
	}
	group := ev.PID // the started process leads the service's process group
	load := testhost.StartLoad(t, addr, "/", 4)
	load.WaitAnswer("first pid")

	// An edit of the service's source: a new process serves, with no
	// failed request.
	write(t, src, serviceSource("second", false))
	ev = evs.next(t)
	if ev.Kind != devloop.EventUpgraded || ev.PID == ev.OldPID || ev.PID == 0 {
		t.Fatalf("after an edit: %s; want upgraded to a new pid", devloop.Format(ev, false))
	}
	load.WaitAnswer(fmt.Sprintf("second pid %d", ev.PID))
	serving := ev.PID

	// A binary that fails to start: the old process serves, and the
	// failure shows the new process's standard error.
	write(t, src, serviceSource("third", true))
	ev = evs.next(t)
	if ev.Kind != devloop.EventUpgradeFailed || !strings.Contains(ev.Err.Error(), "refusing to start on purpose") {
		t.Fatalf("after a binary that fails to start: %s; want upgrade failed with its stderr", devloop.Format(ev, false))
	}
	load.WaitCalls(100)
	if last := string(load.Last()); !strings.Contains(last, fmt.Sprintf("second pid %d", serving)) {
		t.Fatalf("answer %q after a failed upgrade; want pid %d serving", last, serving)
	}
	if calls, failed := load.Stop(); failed != 0 {
		t.Fatalf("%d of %d requests failed; want 0", failed, calls)
	}

	// Stopping the loop stops every process of the service.
	stop()
	noProcessLeft(t, group)
	noGoroutineLeft(t, goroutines)
}

// noGoroutineLeft fails the test unless the number of goroutines falls
// back to n within 10 seconds.
func noGoroutineLeft(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after the loop stopped; want at most %d as before it started:\n%s",
				runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeAddr returns a loopback address no one listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
