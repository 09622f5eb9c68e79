package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// The test binary doubles as a helper process: TestMain runs a helper
// instead of the tests when envHelper is set.
const (
	envHelper = "CONTROL_TEST_HELPER" // "peer" or "service", see runHelper
	envSocket = "CONTROL_TEST_SOCKET"
	envState  = "CONTROL_TEST_STATE"
)

func TestMain(m *testing.M) {
	if h := os.Getenv(envHelper); h != "" {
		os.Exit(runHelper(h))
	}
	os.Exit(testhost.Main(m))
}

// runHelper is a helper process's main:
//
//	peer     ask the control socket for the status, print the answer as
//	         JSON (the client's error kind and message, or the status)
//	service  a service with a host and its control socket, as started by
//	         an upgrade: say ready, serve until Exit or SIGTERM
func runHelper(name string) int {
	switch name {
	case "peer":
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := control.NewClient(os.Getenv(envSocket)).Status(ctx)
		json.NewEncoder(os.Stdout).Encode(struct {
			UID    int
			Status *control.Status
			Err    string
		}{os.Getuid(), st, fmt.Sprint(err)})
		return 0
	case "service":
		if err := serveHelper(); err != nil {
			fmt.Fprintln(os.Stderr, "service helper:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper", name)
	return 2
}

func serveHelper() error {
	ctx := context.Background()
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(os.Getenv(envState), "cache")})
	if err != nil {
		return err
	}
	h, err := host.New(host.Options{Backend: b, StateDir: os.Getenv(envState), Development: true,
		Upgrade: &upgrade.Options{NoSignals: true}})
	if err != nil {
		return err
	}
	defer h.Close(ctx)
	ln, err := control.Listen(ctx, h, os.Getenv(envSocket))
	if err != nil {
		return err
	}
	srv, err := control.New(h, control.Options{})
	if err != nil {
		return err
	}
	go srv.Serve(ln)
	if err := h.Upgrader().Ready(); err != nil {
		return err
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	select {
	case <-h.Upgrader().Exit():
	case <-term:
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// guest builds (or reuses) an example guest and returns its bytes.
func guest(t testing.TB, pkg string) []byte { return testhost.Guest(t, pkg) }

// env is a host serving the control API on a unix socket.
type env struct {
	f      *testhost.Fixture // the host's state directory, trusting f.Trusted
	socket string
	h      *host.Host
	srv    *control.Server
	client *control.Client
}

type envOptions struct {
	dev     bool
	allow   []uint32
	upgrade *upgrade.Options
}

// newEnv starts a host with the wasm backend (the pricing module may use
// its key/value state) and its control server; both stop when the test ends.
func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	return newEnvAt(t, testhost.NewFixture(t), testhost.SocketPath(t), o)
}

// newEnvAt is newEnv over the fixture f with the given socket path.
func newEnvAt(t *testing.T, f *testhost.Fixture, socket string, o envOptions) *env {
	t.Helper()
	mc := testhost.DefaultModule()
	mc.MinInstances = 2
	e := &env{f: f}
	e.h = f.Host(t, testhost.HostOptions{Dev: o.dev, Upgrade: o.upgrade, Module: &mc})
	e.socket, e.srv = testhost.Serve(t, e.h, socket, control.Options{Allow: o.allow})
	e.client = control.NewClient(e.socket)
	return e
}

// artifact returns the request that loads the guest pkg, signed as module
// "pricing" at version by the trusted key, or unsigned when version is
// empty.
func (e *env) artifact(t *testing.T, pkg, version string) control.LoadRequest {
	t.Helper()
	req := control.LoadRequest{Label: filepath.Base(pkg) + ".wasm", Payload: guest(t, pkg)}
	if version != "" {
		req.Manifest = testhost.Manifest(t, e.f.Trusted, req.Payload, artifact.Manifest{Version: version})
	}
	return req
}

// load loads a request and fails the test if it is refused.
func (e *env) load(t *testing.T, req control.LoadRequest) *control.ModuleResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := e.client.Load(ctx, "pricing", req, nil)
	if err != nil {
		t.Fatalf("Load(%s) = %v", req.Label, err)
	}
	return res
}

// quote calls the pricing module and returns the version that answered.
func (e *env) quote(ctx context.Context) (string, error) {
	p, err := testhost.Quote(ctx, e.h.Module("pricing"))
	return p.Version, err
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
