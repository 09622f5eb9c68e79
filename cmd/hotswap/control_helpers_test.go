package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/upgrade"
)

const (
	guestV1       = testhost.V1
	guestV2       = testhost.V2
	guestTrapInit = testhost.TrapInit
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

// TestMain removes the test process's scratch directory at the end.
func TestMain(m *testing.M) { os.Exit(testhost.Main(m)) }

// service is a host with the wasm backend serving the control API on a
// unix socket, as a service embeds them.
type service struct {
	h      *host.Host
	socket string
	f      *testhost.Fixture
	dir    string // for artifacts
}

type serviceOptions struct {
	dev     bool
	upgrade *upgrade.Options
}

func newService(t *testing.T, o serviceOptions) *service {
	t.Helper()
	f := testhost.NewFixture(t)
	h := f.Host(t, testhost.HostOptions{Dev: o.dev, Upgrade: o.upgrade, Service: "hotswap"})
	socket, _ := testhost.Serve(t, h, "", control.Options{})
	return &service{h: h, socket: socket, f: f, dir: f.Dir}
}

// artifact writes the guest pkg to the service's artifact directory as
// file, signed as pricing at version (no manifest when version is empty),
// and returns its path.
func (s *service) artifact(t *testing.T, pkg, file, version string) string {
	t.Helper()
	payload := testhost.Guest(t, pkg)
	if version == "" {
		return s.f.Write(t, file, payload)
	}
	return s.f.Sign(t, s.f.Trusted, file, payload, artifact.Manifest{Version: version})
}

// quote calls the pricing module and returns the version that answered.
func (s *service) quote(ctx context.Context) (string, error) {
	p, err := testhost.Quote(ctx, s.h.Module("pricing"))
	return p.Version, err
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
