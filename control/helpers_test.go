package control_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
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
	os.Exit(m.Run())
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
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir()})
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

// cacheDir is shared with the other packages' tests, so compiled guests
// are reused across tests and runs.
func cacheDir() string { return filepath.Join(os.TempDir(), "hotswap-test-wazero-cache") }

// guest builds (or reuses) an example guest and returns its bytes.
func guest(t testing.TB, pkg string) []byte {
	t.Helper()
	b, err := guestbuild.Bytes(pkg, "")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// env is a host serving the control API on a unix socket.
type env struct {
	dir    string // the host's state directory
	socket string
	h      *host.Host
	srv    *control.Server
	client *control.Client
	priv   ed25519.PrivateKey // trusted by the host
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
	// A short directory: socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "hsctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	return newEnvAt(t, t.TempDir(), filepath.Join(sockDir, "hotswap.sock"), o)
}

// newEnvAt is newEnv with the given state directory and socket path.
func newEnvAt(t *testing.T, state, socket string, o envOptions) *env {
	t.Helper()
	e := &env{dir: state, socket: socket}
	var err error
	if e.priv, err = artifact.GenerateKey(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.WritePublicKey(filepath.Join(e.dir, "trust"), e.priv.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(), Default: wasm.ModuleConfig{
		Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"}, MinInstances: 2,
		CallTimeout: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e.h, err = host.New(host.Options{Backend: b, StateDir: e.dir, Development: o.dev, Upgrade: o.upgrade, Service: "svc",
		Logger: log, DrainTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := control.Listen(ctx, e.h, e.socket)
	if err != nil {
		t.Fatal(err)
	}
	if e.srv, err = control.New(e.h, control.Options{Allow: o.allow, Logger: log}); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve() = %v; want nil after Shutdown", err)
			}
		case <-ctx.Done():
			t.Errorf("Serve() did not return after Shutdown")
		}
		if err := e.h.Close(ctx); err != nil {
			t.Errorf("host Close() = %v", err)
		}
	})
	e.client = control.NewClient(e.socket)
	return e
}

// artifact writes a guest as dir/name.wasm, signed as module "pricing" at
// version unless version is empty (then it has no manifest), and returns
// the request that loads it.
func (e *env) artifact(t *testing.T, pkg, version string) control.LoadRequest {
	t.Helper()
	req := control.LoadRequest{Label: filepath.Base(pkg) + ".wasm", Payload: guest(t, pkg)}
	if version == "" {
		return req
	}
	signer, err := artifact.NewSigner(e.priv)
	if err != nil {
		t.Fatal(err)
	}
	sm, err := signer.Sign(artifact.Manifest{Name: "pricing", Version: version, Kind: artifact.KindWasm,
		Digest: artifact.DigestOf(req.Payload), Size: int64(len(req.Payload))})
	if err != nil {
		t.Fatal(err)
	}
	if req.Manifest, err = sm.Marshal(); err != nil {
		t.Fatal(err)
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
	out, err := e.h.Module("pricing").Call(ctx, "quote", []byte(`{"item":"apple","qty":12}`))
	if err != nil {
		return "", err
	}
	var p struct{ Version string }
	if err := json.Unmarshal(out, &p); err != nil {
		return "", fmt.Errorf("decode %q: %w", out, err)
	}
	return p.Version, nil
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
