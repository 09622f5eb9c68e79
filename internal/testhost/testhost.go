// Package testhost is the set-up hotswap's tests share: a signed host with
// the WebAssembly backend over a private state directory, its control
// socket, signed artifacts, the example guests, and a strict HTTP load
// (see Load) that never retries, so a failure the code under test lets
// through is a failure the test sees.
//
// Everything a test writes is under t.TempDir() or under the test
// process's own scratch directory (built guests, compiled code), created
// private and removed by Main: never a fixed path in /tmp, never $HOME.
package testhost

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// The example guests.
const (
	V1       = "./examples/pricing/guests/v1"
	V2       = "./examples/pricing/guests/v2"
	TrapInit = "./examples/pricing/guests/broken/trapinit"
	LoopInit = "./examples/pricing/guests/broken/loopinit"
)

// Main runs m's tests and then removes the process's scratch directory.
// Call it from TestMain: os.Exit(testhost.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	guestbuild.Cleanup()
	scratch.cleanup()
	return code
}

// scratch is the test process's private directory for compiled code.
var scratch scratchDir

type scratchDir struct {
	once sync.Once
	dir  string
	err  error
}

func (s *scratchDir) cleanup() {
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// CacheDir returns the test process's private wazero compilation cache, so
// the tests of one package compile each guest once. A process started from
// the test binary (a helper) gets its own unless it is handed this path.
func CacheDir(tb testing.TB) string {
	tb.Helper()
	scratch.once.Do(func() { scratch.dir, scratch.err = os.MkdirTemp("", "hotswap-test-cache-") })
	if scratch.err != nil {
		tb.Fatal(scratch.err)
	}
	return scratch.dir
}

// Guest builds the guest package pkg (once per test process) and returns
// its bytes.
func Guest(tb testing.TB, pkg string) []byte {
	tb.Helper()
	b, err := guestbuild.Bytes(pkg, "")
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Key returns a deterministic private key for seed.
func Key(tb testing.TB, seed byte) ed25519.PrivateKey {
	tb.Helper()
	priv, err := artifact.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		tb.Fatal(err)
	}
	return priv
}

// Signer returns the signer of Key(seed).
func Signer(tb testing.TB, seed byte) *artifact.Signer {
	tb.Helper()
	s, err := artifact.NewSigner(Key(tb, seed))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TrustedSeed is the seed of the key every Fixture trusts.
const TrustedSeed byte = 1

// Fixture is a state directory whose trust store holds Trusted, and a
// directory for artifacts.
type Fixture struct {
	State, Dir string
	Trusted    *artifact.Signer
}

// NewFixture returns a fixture in fresh directories of t.
func NewFixture(t testing.TB) *Fixture {
	t.Helper()
	f := &Fixture{State: t.TempDir(), Dir: t.TempDir(), Trusted: Signer(t, TrustedSeed)}
	if _, err := artifact.WritePublicKey(filepath.Join(f.State, "trust"), f.Trusted.PublicKey()); err != nil {
		t.Fatal(err)
	}
	return f
}

// Write writes payload to the artifact directory as file and returns its
// path.
func (f *Fixture) Write(t testing.TB, file string, payload []byte) string {
	t.Helper()
	p := filepath.Join(f.Dir, file)
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Sign writes payload as file with a manifest signed by s for m (Name
// defaults to pricing, Kind to wasm) and returns the artifact's path.
func (f *Fixture) Sign(t testing.TB, s *artifact.Signer, file string, payload []byte, m artifact.Manifest) string {
	t.Helper()
	p := f.Write(t, file, payload)
	m.Name = cmp.Or(m.Name, "pricing")
	m.Kind = cmp.Or(m.Kind, artifact.KindWasm)
	if _, err := s.SignFile(context.Background(), p, m); err != nil {
		t.Fatal(err)
	}
	return p
}

// Manifest returns an encoded manifest of payload signed by s for m (Name
// defaults to pricing, Kind to wasm).
func Manifest(t testing.TB, s *artifact.Signer, payload []byte, m artifact.Manifest) []byte {
	t.Helper()
	m.Name = cmp.Or(m.Name, "pricing")
	m.Kind = cmp.Or(m.Kind, artifact.KindWasm)
	m.Digest, m.Size = artifact.DigestOf(payload), int64(len(payload))
	sm, err := s.Sign(m)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// HostOptions configures Fixture.Host. The zero value is a signed host
// whose modules may use their key/value state and must have a "quote"
// handler.
type HostOptions struct {
	Dev bool
	// Service is host.Options.Service. Defaults to "svc".
	Service string
	Upgrade *upgrade.Options
	// Module configures every module. Defaults to the kv grant, a required
	// "quote" handler and a 30 s call timeout (tests here are about the
	// paths around calls: a starved -race run must not fail a slow call).
	Module *wasm.ModuleConfig
	// Options, if set, edits the host options last.
	Options func(*host.Options)
	// NoClose leaves closing the host to the test.
	NoClose bool
}

// DefaultModule is the module configuration of HostOptions.Module.
func DefaultModule() wasm.ModuleConfig {
	return wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"},
		CallTimeout: 30 * time.Second}
}

// Host returns a host over the fixture's state directory with a fresh
// wasm backend, closed (bounded) when the test ends unless o.NoClose.
func (f *Fixture) Host(t testing.TB, o HostOptions) *host.Host {
	t.Helper()
	mc := DefaultModule()
	if o.Module != nil {
		mc = *o.Module
	}
	b, err := wasm.New(wasm.Options{CacheDir: CacheDir(t), Default: mc})
	if err != nil {
		t.Fatal(err)
	}
	opts := host.Options{Backend: b, StateDir: f.State, Development: o.Dev, Upgrade: o.Upgrade,
		Service: cmp.Or(o.Service, "svc"), Logger: Logger(t), DrainTimeout: 10 * time.Second}
	if o.Options != nil {
		o.Options(&opts)
	}
	h, err := host.New(opts)
	if err != nil {
		t.Fatalf("host.New() = %v", err)
	}
	if !o.NoClose {
		t.Cleanup(func() { CloseHost(t, h) })
	}
	return h
}

// CloseHost closes h within 30 seconds.
func CloseHost(t testing.TB, h *host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Errorf("host Close() = %v", err)
	}
}

// Logger returns a logger of warnings and errors into t's log, or of
// everything with -v.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: level}))
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// SocketPath returns a fresh control socket path in a short private
// directory (socket paths are limited to 108 bytes), removed when the test
// ends.
func SocketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "hotswap.sock")
}

// Serve serves h's control API on socket (a fresh one when empty) with
// opts, and returns the socket's path and the server. The server shuts
// down, bounded, when the test ends, before the host closes.
func Serve(t testing.TB, h *host.Host, socket string, opts control.Options) (string, *control.Server) {
	t.Helper()
	if socket == "" {
		socket = SocketPath(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := control.Listen(ctx, h, socket)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = Logger(t)
	}
	srv, err := control.New(h, opts)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("control Shutdown() = %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("control Serve() = %v; want nil after Shutdown", err)
			}
		case <-ctx.Done():
			t.Errorf("control Serve() did not return after Shutdown")
		}
	})
	return socket, srv
}

// Price is the pricing guests' answer.
type Price struct {
	Version string `json:"version"`
	Quotes  int64  `json:"quotes"`
}

// QuoteRequest is a request the pricing guests answer.
var QuoteRequest = []byte(`{"item":"apple","qty":12}`)

// Quote calls the pricing module's quote handler once.
func Quote(ctx context.Context, m *module.Module) (Price, error) {
	out, err := m.Call(ctx, "quote", QuoteRequest)
	if err != nil {
		return Price{}, err
	}
	var p Price
	if err := json.Unmarshal(out, &p); err != nil {
		return Price{}, fmt.Errorf("decode %q: %w", out, err)
	}
	return p, nil
}

// Context returns a context of t that ends after d or with the test.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
