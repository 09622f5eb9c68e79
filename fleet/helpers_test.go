package fleet_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
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
	shared.close()
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
// that keep-alives of a loaded -race run arrive in time (etcd sends them
// every third of the TTL).
const (
	ttl = 3 * time.Second
	// wait bounds every wait of these tests: generous, for a machine
	// loaded by other work.
	wait = 2 * time.Minute
)

// The guests of these tests: internal/testguests/cquote, a C module that
// compiles and loads in milliseconds (the fleet's logic is under test, not
// the Go SDK), answering quote with the version it was built as.
const (
	gV1  = "v1"
	gV2  = "v2"
	gV3  = "v3"
	gBad = "bad"  // traps in _initialize: refused at its init check
	gErr = "fail" // every quote fails: a canary of it aborts
)

// guest returns the bytes of one of the guests above.
func guest(t *testing.T, which string) []byte {
	t.Helper()
	flags := []string{fmt.Sprintf("-DVERSION=%q", which)}
	switch which {
	case gBad:
		flags = append(flags, "-DTRAPINIT")
	case gErr:
		flags = append(flags, "-DFAILQUOTE")
	}
	b, err := guestbuild.CBytes("internal/testguests/cquote/quote.c", flags...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// groups numbers the tests' groups: a group of its own for every run of
// a test (with -count, a test runs more than once on the shared member).
var groups atomic.Int64

// shared is one etcd member the tests that never stop etcd share, each in
// its own group: starting a member costs seconds.
var shared sharedCluster

type sharedCluster struct {
	once sync.Once
	dir  string
	c    *etcdnode.Cluster
	err  error
}

func (s *sharedCluster) get(t *testing.T) *etcdnode.Cluster {
	t.Helper()
	s.once.Do(func() {
		if s.dir, s.err = os.MkdirTemp("", "hotswap-fleet-etcd-"); s.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		s.c, s.err = etcdnode.Start(ctx, etcdnode.Options{Dir: s.dir, Members: 1})
	})
	if s.err != nil {
		t.Fatalf("start the shared etcd: %v", s.err)
	}
	return s.c
}

func (s *sharedCluster) close() {
	if s.c != nil {
		s.c.Close()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// env is an etcd cluster on loopback and the artifacts of the tests.
type env struct {
	t      *testing.T
	etcd   *etcdnode.Cluster
	cli    *clientv3.Client
	name   string // the group's
	group  *fleet.Group
	signer *artifact.Signer
	dir    string // artifacts
}

// newEnv returns the environment of a test. members 0 shares one etcd
// member between the tests, each in a group of its own; a test that stops
// members asks for its own cluster of members.
func newEnv(t *testing.T, members int) *env {
	t.Helper()
	var c *etcdnode.Cluster
	if members == 0 {
		c = shared.get(t)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		var err error
		if c, err = etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir(), Members: members}); err != nil {
			t.Fatalf("etcdnode.Start() = %v", err)
		}
		t.Cleanup(c.Close)
	}
	e := &env{t: t, etcd: c, name: fmt.Sprintf("%s.%d", strings.ReplaceAll(t.Name(), "/", "."), groups.Add(1)), signer: testhost.Signer(t, testhost.TrustedSeed), dir: t.TempDir()}
	e.cli = e.client(c.Endpoints()...)
	var err error
	if e.group, err = fleet.OpenGroup(e.cli, "", e.name); err != nil {
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

// artifact writes guest which as version (signed unless unsigned) and
// returns its module spec.
func (e *env) artifact(which, version string, unsigned bool) fleet.ModuleSpec {
	e.t.Helper()
	payload := guest(e.t, which)
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
	opts := fleet.AgentOptions{Client: cli, Host: h, Group: e.name, Instance: id, LeaseTTL: ttl,
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
	c, err := fleet.NewController(fleet.ControllerOptions{Client: cli, Group: e.name, Name: name, LeaseTTL: ttl,
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

// link is a TCP relay to an etcd endpoint that a test can cut: every
// connection through it closes and new ones are refused until mend. An
// agent behind it is cut off its etcd while etcd runs on (stopping a
// member instead waits etcd's request timeout for its clients' streams).
type link struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex // protects conns and cut
	conns  map[net.Conn]bool
	cut    bool
}

// newLink relays to endpoint ("http://host:port") until the test ends,
// and returns the link; its endpoint is l.endpoint().
func newLink(t *testing.T, endpoint string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, target: strings.TrimPrefix(endpoint, "http://"), conns: map[net.Conn]bool{}}
	l.wg.Go(l.accept)
	t.Cleanup(func() {
		ln.Close()
		l.setCut(true)
		l.wg.Wait()
	})
	return l
}

func (l *link) endpoint() string { return "http://" + l.ln.Addr().String() }

func (l *link) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", l.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		l.conns[c], l.conns[up] = true, true
		l.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		l.wg.Go(func() { pipe(up, c) })
		l.wg.Go(func() { pipe(c, up) })
	}
}

// setCut cuts the link (closing every connection through it) or mends it.
func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			c.Close()
		}
		clear(l.conns)
	}
}
