package fleet_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "agent":
		os.Exit(runAgentHelper())
	case "service":
		os.Exit(runServiceHelper())
	}
	code := testhost.Main(m)
	if code == 0 {
		if err := goleak.Find(leakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func leakOptions() []goleak.Option {
	return []goleak.Option{
		// A stopped embedded etcd member leaves the connections its peers
		// made to it open (cmux does not close the connections it
		// accepted), on both ends; and http.DefaultClient keeps idle
		// connections of the fetches. Neither is a goroutine of fleet.
		goleak.IgnoreAnyFunction("github.com/soheilhy/cmux.(*MuxConn).Read"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).abortPendingRead"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
	}
}

// Short leases, so lease expiry and failover take seconds; long enough
// that keep-alives of a loaded -race run arrive in time.
const (
	ttl = 5 * time.Second
	// wait bounds every wait of these tests: generous, as a -race compile
	// of a guest on a machine loaded by other work took minutes.
	wait = 5 * time.Minute
)

// warmOnce compiles the guests once per test process into the shared
// compilation cache: a -race compile of a guest takes tens of seconds on a
// loaded machine, and instances that all compile it cold at once would
// make every wait of the tests about the compiler.
var warmOnce sync.Once

func warm(t *testing.T) {
	warmOnce.Do(func() {
		fix := testhost.NewFixture(t)
		h := fix.Host(t, testhost.HostOptions{Dev: true, NoClose: true})
		defer testhost.CloseHost(t, h)
		for _, pkg := range []string{testhost.V1, testhost.V2, testhost.TrapInit} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			h.LoadArtifact(ctx, "pricing", pkg, testhost.Guest(t, pkg), nil) // TrapInit fails after its compile
			cancel()
		}
	})
}

// env is an etcd cluster on loopback and the artifacts of the tests.
type env struct {
	t      *testing.T
	etcd   *etcdnode.Cluster
	cli    *clientv3.Client
	group  *fleet.Group
	signer *artifact.Signer
	dir    string // artifacts
}

func newEnv(t *testing.T, members int) *env {
	t.Helper()
	warm(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir(), Members: members})
	if err != nil {
		t.Fatalf("etcdnode.Start() = %v", err)
	}
	t.Cleanup(c.Close)
	e := &env{t: t, etcd: c, signer: testhost.Signer(t, testhost.TrustedSeed), dir: t.TempDir()}
	e.cli = e.client(c.Endpoints()...)
	if e.group, err = fleet.OpenGroup(e.cli, "", "pricing-svc"); err != nil {
		t.Fatal(err)
	}
	return e
}

// client returns a client of endpoints, closed when the test ends.
func (e *env) client(endpoints ...string) *clientv3.Client {
	e.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cli.Close() })
	return cli
}

// artifact writes guest pkg as version (signed unless unsigned) and
// returns its module spec.
func (e *env) artifact(pkg, version string, unsigned bool) fleet.ModuleSpec {
	e.t.Helper()
	payload := testhost.Guest(e.t, pkg)
	p := filepath.Join(e.dir, version+".wasm")
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if !unsigned {
		m := artifact.Manifest{Name: "pricing", Kind: artifact.KindWasm, Version: version}
		if _, err := e.signer.SignFile(context.Background(), p, m); err != nil {
			e.t.Fatal(err)
		}
	}
	return fleet.ModuleSpec{Version: version, Digest: artifact.DigestOf(payload).String(), URL: "file://" + p}
}

func spec(m fleet.ModuleSpec) fleet.Spec {
	return fleet.Spec{Modules: map[string]fleet.ModuleSpec{"pricing": m}}
}

// instance is a host with its agent.
type instance struct {
	id     string
	fix    *testhost.Fixture
	host   *host.Host
	agent  *fleet.Agent
	cancel context.CancelFunc
	done   chan error
}

// startInstance starts a host over fix (fresh when nil), restores its
// modules, and runs an agent with cli (e.cli when nil).
func (e *env) startInstance(id string, fix *testhost.Fixture, cli *clientv3.Client, mod func(*fleet.AgentOptions)) *instance {
	e.t.Helper()
	if fix == nil {
		fix = testhost.NewFixture(e.t)
	}
	if cli == nil {
		cli = e.cli
	}
	h := fix.Host(e.t, testhost.HostOptions{NoClose: true})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.RestoreModules(ctx); err != nil {
		e.t.Fatalf("RestoreModules() = %v", err)
	}
	opts := fleet.AgentOptions{Client: cli, Host: h, Group: "pricing-svc", Instance: id, LeaseTTL: ttl,
		RequestTimeout: time.Second, Retry: 100 * time.Millisecond, Logger: testhost.Logger(e.t)}
	if mod != nil {
		mod(&opts)
	}
	a, err := fleet.NewAgent(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	in := &instance{id: id, fix: fix, host: h, agent: a, done: make(chan error, 1)}
	rctx, rcancel := context.WithCancel(context.Background())
	in.cancel = rcancel
	go func() { in.done <- a.Run(rctx) }()
	e.t.Cleanup(func() { in.stop(e.t) })
	return in
}

// stop ends the agent (bounded) and closes the host; idempotent.
func (in *instance) stop(t *testing.T) {
	t.Helper()
	if in.cancel == nil {
		return
	}
	in.cancel()
	in.cancel = nil
	select {
	case <-in.done:
	case <-time.After(wait):
		t.Errorf("agent %s: Run did not return within %v", in.id, wait)
	}
	testhost.CloseHost(t, in.host)
}

// controller runs a controller named name with cli until the test ends,
// or until the returned cancel.
func (e *env) controller(name string, cli *clientv3.Client) (*fleet.Controller, context.CancelFunc) {
	e.t.Helper()
	c, err := fleet.NewController(fleet.ControllerOptions{Client: cli, Group: "pricing-svc", Name: name, LeaseTTL: ttl,
		RequestTimeout: time.Second, Tick: 100 * time.Millisecond, Logger: testhost.Logger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
			e.t.Errorf("controller %s: Run did not return within %v", name, wait)
		}
	}
	e.t.Cleanup(stop)
	return c, stop
}

// until polls the group's status until ok holds, failing after wait.
func (e *env) until(what string, ok func(fleet.Status) bool) fleet.Status {
	e.t.Helper()
	deadline := time.Now().Add(wait)
	var st fleet.Status
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := e.group.Status(ctx)
		cancel()
		if err == nil {
			st = s
			if ok(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not within %v; last status (err %v):\n%s", what, wait, err, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// set writes a desired state.
func (e *env) set(d fleet.Desired) int64 {
	e.t.Helper()
	if d.WaveTimeout == 0 {
		d.WaveTimeout = wait // only a refusal halts, not a slow compile
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rev, err := e.group.Set(ctx, d)
	if err != nil {
		e.t.Fatalf("Set() = %v", err)
	}
	return rev
}

// serves returns the digest module pricing's active version has on in.
func (in *instance) serves() string {
	for _, st := range in.host.Status() {
		if st.Name == "pricing" && st.Active != nil {
			return st.Active.Digest
		}
	}
	return ""
}

// quote calls in's pricing module and returns the version that answered.
func (in *instance) quote(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := testhost.Quote(ctx, in.host.Module("pricing"))
	if err != nil {
		t.Fatalf("instance %s: quote = %v; want an answer", in.id, err)
	}
	return p.Version
}

func hexOf(m fleet.ModuleSpec) string {
	d, _ := artifact.ParseDigest(m.Digest[len("sha256:"):])
	return d.Hex()
}

func phase(rev int64, p fleet.Phase) func(fleet.Status) bool {
	return func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase == p
	}
}
