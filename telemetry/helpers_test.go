package telemetry_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/telemetry"
)

func TestMain(m *testing.M) { os.Exit(testhost.Main(m)) }

// rig is a signed host with signed pricing artifacts v1, v2 and a v3 that
// traps in its init (refused), and a metrics registry with the host's
// collector on it.
type rig struct {
	f          *testhost.Fixture
	h          *host.Host
	reg        *prometheus.Registry
	v1, v2, v3 string // artifact paths
}

func newRig(t *testing.T, o testhost.HostOptions) *rig {
	t.Helper()
	f := testhost.NewFixture(t)
	edit := o.Options
	o.Options = func(opts *host.Options) {
		opts.TimeCalls = 1
		if edit != nil {
			edit(opts)
		}
	}
	r := &rig{f: f, h: f.Host(t, o), reg: prometheus.NewRegistry()}
	r.v1 = f.Sign(t, f.Trusted, "pricing-v1.wasm", testhost.Guest(t, testhost.V1), artifact.Manifest{Version: "v1"})
	r.v2 = f.Sign(t, f.Trusted, "pricing-v2.wasm", testhost.Guest(t, testhost.V2), artifact.Manifest{Version: "v2"})
	r.v3 = f.Sign(t, f.Trusted, "pricing-v3.wasm", testhost.Guest(t, testhost.TrapInit), artifact.Manifest{Version: "v3"})
	if err := r.reg.Register(telemetry.NewCollector(r.h)); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) load(t *testing.T, path string) {
	t.Helper()
	ctx := host.WithActor(testhost.Context(t, timeout), "test")
	if _, err := r.h.LoadFile(ctx, "pricing", path); err != nil {
		t.Fatalf("LoadFile(%s) = %v", path, err)
	}
}

func (r *rig) rollback(t *testing.T) {
	t.Helper()
	ctx := host.WithActor(testhost.Context(t, timeout), "test")
	if _, err := r.h.Rollback(ctx, "pricing"); err != nil {
		t.Fatalf("Rollback() = %v", err)
	}
}

// calls makes n calls of the pricing module, each of which must succeed.
func (r *rig) calls(t *testing.T, n int) {
	t.Helper()
	m := r.h.Module("pricing")
	for range n {
		if _, err := testhost.Quote(testhost.Context(t, 10*time.Second), m); err != nil {
			t.Fatalf("quote: %v", err)
		}
	}
}

// serve serves handler on a fresh loopback port until the test ends and
// returns its address.
func serve(t *testing.T, handler http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return ln.Addr().String()
}

// waitFor polls cond every 50ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-tick.C:
		}
	}
}

// timeout bounds each step of a test that waits on a host or a process.
const timeout = 2 * time.Minute
