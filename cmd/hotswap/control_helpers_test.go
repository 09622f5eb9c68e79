package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

const (
	guestV1       = "./examples/pricing/guests/v1"
	guestV2       = "./examples/pricing/guests/v2"
	guestTrapInit = "./examples/pricing/guests/broken/trapinit"
)

// ctl runs the CLI in-process against socket and returns its standard
// output and error and its exit code.
func ctl(t *testing.T, socket string, args ...string) (stdout, stderr string, code int, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	err = run(ctx, append([]string{"--socket", socket}, args...), &out, &errOut)
	if err != nil {
		code = exitCode(err)
	}
	return out.String(), errOut.String(), code, err
}

// service is a host with the wasm backend serving the control API on a
// unix socket, as a service embeds them.
type service struct {
	h      *host.Host
	socket string
	priv   ed25519.PrivateKey // trusted by the host
	dir    string             // for artifacts
}

type serviceOptions struct {
	dev     bool
	upgrade *upgrade.Options
}

func newService(t *testing.T, o serviceOptions) *service {
	t.Helper()
	state := t.TempDir()
	sockDir, err := os.MkdirTemp("", "hscli") // socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s := &service{socket: filepath.Join(sockDir, "hotswap.sock"), dir: t.TempDir()}
	if s.priv, err = artifact.GenerateKey(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.WritePublicKey(filepath.Join(state, "trust"), s.priv.Public().(ed25519.PublicKey)); err != nil {
		t.Fatal(err)
	}
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(os.TempDir(), "hotswap-test-wazero-cache"),
		// A generous call timeout: these tests are about the control path,
		// and a starved -race run must not turn a slow call into a failure.
		Default: wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"},
			CallTimeout: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	s.h, err = host.New(host.Options{Backend: b, StateDir: state, Development: o.dev, Upgrade: o.upgrade, Logger: log, Service: "hotswap",
		DrainTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := control.Listen(ctx, s.h, s.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := control.New(s.h, control.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve() = %v", err)
		}
		if err := s.h.Close(ctx); err != nil {
			t.Errorf("host Close() = %v", err)
		}
	})
	return s
}

// artifact writes the guest pkg to the service's artifact directory as
// file, signed as pricing at version (no manifest when version is empty),
// and returns its path.
func (s *service) artifact(t *testing.T, pkg, file, version string) string {
	t.Helper()
	payload, err := guestbuild.Bytes(pkg, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, file)
	if err := os.WriteFile(path, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if version == "" {
		return path
	}
	signer, err := artifact.NewSigner(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	sm, err := signer.Sign(artifact.Manifest{Name: "pricing", Version: version, Kind: artifact.KindWasm,
		Digest: artifact.DigestOf(payload), Size: int64(len(payload))})
	if err != nil {
		t.Fatal(err)
	}
	m, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(artifact.ManifestPath(path), m, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// quote calls the pricing module and returns the version that answered.
func (s *service) quote(ctx context.Context) (string, error) {
	out, err := s.h.Module("pricing").Call(ctx, "quote", []byte(`{"item":"apple","qty":12}`))
	if err != nil {
		return "", err
	}
	var p struct{ Version string }
	if err := json.Unmarshal(out, &p); err != nil {
		return "", fmt.Errorf("decode %q: %w", out, err)
	}
	return p.Version, nil
}

// mustCtl runs the CLI and fails the test unless it exits 0.
func mustCtl(t *testing.T, socket string, args ...string) string {
	t.Helper()
	out, errOut, code, err := ctl(t, socket, args...)
	if code != 0 {
		t.Fatalf("hotswap %q = %v (exit %d)\nstdout: %s\nstderr: %s", args, err, code, out, errOut)
	}
	return out
}
