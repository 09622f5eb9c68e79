// Command watch measures the development loop of "hotswap watch" against a
// restart loop, on the same edits, in the same run.
//
//	go run ./bench/watch [-cycles 20] [-compile-errors 5] [-selftest-failures 3] [-service-edits 3]
//
// The service is bench/watch/service (the demo's stack: host, the pricing
// module, binary upgrades, the control socket), built from a temporary
// source tree that also holds the pricing guest (a copy of
// examples/pricing/guests/v1). A strict client (4 keep-alive connections,
// never a retry) asks for quotes throughout; each answer names the module
// version and the service build that served it.
//
// The watch loop (internal/devloop, what "hotswap watch" runs) edits the
// guest -cycles times (-compile-errors of them leave it not compiling,
// -selftest-failures give it a failing self-test and the label
// "broken-N"), then edits the service's own source -service-edits times.
// edit_to_serving_ms is the time from writing the file until the client's
// first answer from the new version or build.
//
// The restart loop (what air and similar tools do) makes the same edits,
// and for each one kills the service, rebuilds what changed, and starts it
// again with the new build (loading the module at start), or with the last
// good build when the new one does not compile or does not start.
//
// RESULT fields: cycles, failed (failed requests under the watch loop),
// edit_to_serving_ms_p50 (good edits, module and service), broken_builds_served
// (answers from a version that failed its self-test), restart_failed,
// restart_edit_to_serving_ms_p50, and the split by module and service,
// request counts and what each loop reported.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/devloop"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
)

// wait bounds every wait for a build, a load, an upgrade or a start.
const wait = 5 * time.Minute

type config struct {
	cycles, compileErrors, selftestFailures, serviceEdits int
	keep                                                  bool
}

func main() {
	var cfg config
	flag.IntVar(&cfg.cycles, "cycles", 20, "edits of the module's source")
	flag.IntVar(&cfg.compileErrors, "compile-errors", 5, "of them, edits that do not compile")
	flag.IntVar(&cfg.selftestFailures, "selftest-failures", 3, "of them, edits whose self-test fails")
	flag.IntVar(&cfg.serviceEdits, "service-edits", 3, "edits of the service's own source")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

// edit is one edit of the sources.
type edit struct {
	service bool   // an edit of the service's source, else of the guest's
	label   string // the version (guest) or build (service) it should serve
	broken  string // "compile" or "selftest" for an edit that must not serve
}

// plan returns the edits: the guest's, with the broken ones spread out,
// then the service's.
func plan(cfg config) []edit {
	var edits []edit
	for i := 1; i <= cfg.cycles; i++ {
		e := edit{label: fmt.Sprintf("m%d", i)}
		switch {
		case i%4 == 2 && i/4 < cfg.compileErrors:
			e.broken = "compile"
		case i%6 == 3 && i/6 < cfg.selftestFailures:
			e.broken, e.label = "selftest", fmt.Sprintf("broken-%d", i)
		}
		edits = append(edits, e)
	}
	for i := 1; i <= cfg.serviceEdits; i++ {
		edits = append(edits, edit{service: true, label: fmt.Sprintf("b%d", i)})
	}
	return edits
}

// outcome is what one loop measured.
type outcome struct {
	calls, failed, broken int64
	module, service       []float64 // edit to serving, ms, of the good edits
	reported              map[string]int
}

// record waits until the client is answered by what edit e, written at
// at, should serve, and records how long that took.
func (o *outcome) record(c *client, e edit, at time.Time) error {
	seen, err := c.waitSeen(key(e), wait)
	if err != nil {
		return err
	}
	ms := float64(seen.Sub(at).Microseconds()) / 1000
	if e.service {
		o.service = append(o.service, ms)
	} else {
		o.module = append(o.module, ms)
	}
	return nil
}

func run(cfg config) error {
	root, err := guestbuild.Root()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-watch-")
	if err != nil {
		return err
	}
	if cfg.keep {
		log.Println("keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	edits := plan(cfg)
	var nCompile, nSelftest int
	for _, e := range edits {
		switch e.broken {
		case "compile":
			nCompile++
		case "selftest":
			nSelftest++
		}
	}
	log.Printf("%d edits of the guest (%d do not compile, %d fail their self-test), %d of the service", cfg.cycles, nCompile, nSelftest, cfg.serviceEdits)

	watch, err := runWatch(root, filepath.Join(dir, "watch"), edits)
	if err != nil {
		return fmt.Errorf("watch loop: %w", err)
	}
	restart, err := runRestart(root, filepath.Join(dir, "restart"), edits)
	if err != nil {
		return fmt.Errorf("restart loop: %w", err)
	}
	all := func(o outcome) []float64 { return append(append([]float64(nil), o.module...), o.service...) }
	benchutil.Result(map[string]any{
		"cycles":                                 cfg.cycles,
		"failed":                                 watch.failed,
		"edit_to_serving_ms_p50":                 benchutil.Percentile(all(watch), 50),
		"broken_builds_served":                   watch.broken,
		"restart_failed":                         restart.failed,
		"restart_edit_to_serving_ms_p50":         benchutil.Percentile(all(restart), 50),
		"compile_errors":                         nCompile,
		"selftest_failures":                      nSelftest,
		"service_edits":                          cfg.serviceEdits,
		"requests":                               watch.calls,
		"module_edit_to_serving_ms_p50":          benchutil.Percentile(watch.module, 50),
		"service_edit_to_serving_ms_p50":         benchutil.Percentile(watch.service, 50),
		"watch_reported":                         watch.reported,
		"restart_requests":                       restart.calls,
		"restart_broken_builds_served":           restart.broken,
		"restart_module_edit_to_serving_ms_p50":  benchutil.Percentile(restart.module, 50),
		"restart_service_edit_to_serving_ms_p50": benchutil.Percentile(restart.service, 50),
		"restart_reported":                       restart.reported,
	})
	return nil
}

// tree is a source tree holding the guest (pricing/) and the service
// (svc/), in a module that builds against this repository.
type tree struct {
	dir          string
	guest, svc   string // their main.go
	guestSrc     string // the guest's source as copied
	svcSrc       string
	state, trust string
	socket, addr string
	key          *devloop.DevKey
}

func newTree(root, dir string) (*tree, error) {
	t := &tree{dir: filepath.Join(dir, "src"), state: filepath.Join(dir, "state")}
	t.guest, t.svc = filepath.Join(t.dir, "pricing", "main.go"), filepath.Join(t.dir, "svc", "main.go")
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	mod = []byte(strings.Replace(string(mod), "module github.com/hotswapgo/hotswap\n", "module example.com/bench\n", 1))
	mod = fmt.Appendf(mod, "\nrequire github.com/hotswapgo/hotswap v0.0.0\n\nreplace github.com/hotswapgo/hotswap => %s\n", root)
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		return nil, err
	}
	guest, err := os.ReadFile(filepath.Join(root, "examples", "pricing", "guests", "v1", "main.go"))
	if err != nil {
		return nil, err
	}
	svc, err := os.ReadFile(filepath.Join(root, "bench", "watch", "service", "main.go"))
	if err != nil {
		return nil, err
	}
	t.guestSrc, t.svcSrc = string(guest), string(svc)
	if !strings.Contains(t.guestSrc, `Version: "v1"`) || !strings.Contains(t.svcSrc, `const build = "b0"`) {
		return nil, errors.New("the guest or the service source no longer has the label this benchmark edits")
	}
	for path, data := range map[string][]byte{
		filepath.Join(t.dir, "go.mod"): mod, filepath.Join(t.dir, "go.sum"): sum,
		t.guest: []byte(t.guestSource("m0", "")), t.svc: []byte(t.svcSource("b0")),
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return nil, err
		}
	}
	if t.key, err = devloop.OpenDevKey(filepath.Join(dir, "dev")); err != nil {
		return nil, err
	}
	t.trust = t.key.TrustDir
	// Socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "bw")
	if err != nil {
		return nil, err
	}
	t.socket = filepath.Join(sockDir, "s.sock")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t.addr = ln.Addr().String()
	ln.Close()
	return t, nil
}

func (t *tree) close() { os.RemoveAll(filepath.Dir(t.socket)) }

// guestSource is the guest answering with label; broken "compile" does
// not compile, "selftest" fails its self-test.
func (t *tree) guestSource(label, broken string) string {
	s := strings.Replace(t.guestSrc, `Version: "v1"`, fmt.Sprintf("Version: %q", label), 1)
	switch broken {
	case "compile":
		s += "\nvar _ = undefinedThing\n"
	case "selftest":
		s = strings.Replace(s, "guest.SelfTest(func() error {", "guest.SelfTest(func() error {\n\t\tif true {\n\t\t\treturn errors.New(\"broken on purpose\")\n\t\t}", 1)
	}
	return s
}

func (t *tree) svcSource(build string) string {
	return strings.Replace(t.svcSrc, `const build = "b0"`, fmt.Sprintf("const build = %q", build), 1)
}

// write makes the edit and returns when it was written.
func (t *tree) write(e edit) (time.Time, error) {
	path, src := t.guest, t.guestSource(e.label, e.broken)
	if e.service {
		path, src = t.svc, t.svcSource(e.label)
	}
	at := time.Now()
	return at, os.WriteFile(path, []byte(src), 0o644)
}

func (t *tree) args() []string {
	return []string{"-state", t.state, "-dev-trust", t.trust, "-socket", t.socket, "-addr", t.addr}
}

func key(e edit) string {
	if e.service {
		return "build " + e.label
	}
	return "module " + e.label
}

// runWatch drives the watch loop through the edits.
func runWatch(root, dir string, edits []edit) (outcome, error) {
	out := outcome{reported: map[string]int{}}
	t, err := newTree(root, dir)
	if err != nil {
		return out, err
	}
	defer t.close()
	events := make(chan devloop.Event, 64)
	l, err := devloop.New(devloop.Options{
		Dir:         t.dir,
		Modules:     []devloop.Module{{Name: "pricing", Dir: "pricing"}},
		ServicePkg:  "./svc",
		ServiceName: "service",
		Run:         t.args(),
		Client:      control.NewClient(t.socket),
		Signer:      t.key.Signer,
		BuildDir:    filepath.Join(dir, "build"),
		Report: func(ev devloop.Event) {
			log.Printf("watch: %s", devloop.Format(ev, false))
			events <- ev
		},
	})
	if err != nil {
		return out, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- l.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-ran:
		case <-time.After(time.Minute):
			log.Print("watch: the loop did not stop within a minute")
		}
	}()
	next := func() (devloop.Event, error) {
		select {
		case ev := <-events:
			out.reported[kindName(ev.Kind)]++
			return ev, nil
		case err := <-ran:
			return devloop.Event{}, fmt.Errorf("the loop ended: %v", err)
		case <-time.After(wait):
			return devloop.Event{}, fmt.Errorf("no event within %v", wait)
		}
	}
	for range 2 { // started, loaded
		if _, err := next(); err != nil {
			return out, err
		}
	}
	c := startClient(t.addr, 4)
	if _, err := c.waitSeen("module m0", wait); err != nil {
		c.stop()
		return out, err
	}
	for _, e := range edits {
		at, err := t.write(e)
		if err != nil {
			c.stop()
			return out, err
		}
		ev, err := next()
		if err != nil {
			c.stop()
			return out, err
		}
		want := map[string]devloop.EventKind{"": devloop.EventLoaded, "compile": devloop.EventBuildFailed, "selftest": devloop.EventRefused}[e.broken]
		if e.service {
			want = devloop.EventUpgraded
		}
		if ev.Kind != want {
			c.stop()
			return out, fmt.Errorf("edit %s: %s; want %s", e.label, devloop.Format(ev, false), kindName(want))
		}
		if e.broken != "" {
			continue
		}
		if err := out.record(c, e, at); err != nil {
			c.stop()
			return out, err
		}
	}
	out.calls, out.failed = c.stop()
	out.broken = c.broken.Load()
	return out, nil
}

func kindName(k devloop.EventKind) string {
	return map[devloop.EventKind]string{
		devloop.EventLoaded: "loaded", devloop.EventUnchanged: "unchanged", devloop.EventBuildFailed: "build_failed",
		devloop.EventRefused: "refused", devloop.EventUpgraded: "upgraded", devloop.EventUpgradeFailed: "upgrade_failed",
		devloop.EventStarted: "started", devloop.EventExited: "exited",
	}[k]
}

// restarter is the restart loop's service: one process at a time.
type restarter struct {
	t        *tree
	dir      string
	n        int    // builds so far
	bin, mod string // the last good binary and module
	proc     *exec.Cmd
	exited   chan struct{}
}

// runRestart drives the restart loop through the edits.
func runRestart(root, dir string, edits []edit) (outcome, error) {
	out := outcome{reported: map[string]int{}}
	t, err := newTree(root, dir)
	if err != nil {
		return out, err
	}
	defer t.close()
	r := &restarter{t: t, dir: filepath.Join(dir, "build")}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return out, err
	}
	defer r.kill()
	ctx := context.Background()
	if r.bin, err = r.buildService(ctx); err != nil {
		return out, err
	}
	if r.mod, err = r.buildGuest(ctx); err != nil {
		return out, err
	}
	c := startClient(t.addr, 4)
	defer func() {
		if c != nil {
			c.stop()
		}
	}()
	if err := r.start(r.bin, r.mod, c); err != nil {
		return out, err
	}
	for _, e := range edits {
		at, err := t.write(e)
		if err != nil {
			return out, err
		}
		// Kill, rebuild, start.
		r.kill()
		bin, mod := r.bin, r.mod
		if e.service {
			bin, err = r.buildService(ctx)
		} else {
			mod, err = r.buildGuest(ctx)
		}
		if err != nil {
			out.reported["build_failed"]++
			if err := r.start(r.bin, r.mod, c); err != nil {
				return out, err
			}
			continue
		}
		if err := r.start(bin, mod, c); err != nil {
			out.reported["start_failed"]++
			if err := r.start(r.bin, r.mod, c); err != nil {
				return out, err
			}
			continue
		}
		out.reported["restarted"]++
		r.bin, r.mod = bin, mod
		if e.broken != "" {
			continue
		}
		if err := out.record(c, e, at); err != nil {
			return out, err
		}
	}
	out.calls, out.failed = c.stop()
	out.broken = c.broken.Load()
	c = nil
	return out, nil
}

func (r *restarter) buildGuest(ctx context.Context) (string, error) {
	r.n++
	out := filepath.Join(r.dir, fmt.Sprintf("pricing-%d.wasm", r.n))
	if msg, err := guestbuild.Command(ctx, r.t.dir, "./pricing", out, "").CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, msg)
	}
	payload, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	version := fmt.Sprintf("r.%d+%s", r.n, artifact.DigestOf(payload).Hex()[:8])
	_, err = r.t.key.Signer.SignFile(ctx, out, artifact.Manifest{Name: "pricing", Version: version, Kind: artifact.KindWasm})
	return out, err
}

func (r *restarter) buildService(ctx context.Context) (string, error) {
	r.n++
	out := filepath.Join(r.dir, fmt.Sprintf("service-%d", r.n))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./svc")
	cmd.Dir = r.t.dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, msg)
	}
	return out, nil
}

// start starts bin loading mod, and waits until the client is answered by
// it, or it exits.
func (r *restarter) start(bin, mod string, c *client) error {
	begin := time.Now()
	cmd := exec.Command(bin, append(r.t.args(), "-module", mod)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	r.proc, r.exited = cmd, exited
	deadline := time.After(wait)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			r.proc = nil
			return fmt.Errorf("%s exited at start: %s", filepath.Base(bin), strings.TrimSpace(stderr.String()))
		case <-deadline:
			return fmt.Errorf("%s did not serve within %v", filepath.Base(bin), wait)
		case <-tick.C:
			if c.lastOK.Load() > begin.UnixNano() {
				return nil
			}
		}
	}
}

// kill stops the running process, if any, and waits until it exited.
func (r *restarter) kill() {
	if r.proc == nil {
		return
	}
	syscall.Kill(-r.proc.Process.Pid, syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		syscall.Kill(-r.proc.Process.Pid, syscall.SIGKILL)
		<-r.exited
	}
	r.proc = nil
}
