package host_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// The test binary doubles as the new process of an upgrade: TestMain runs
// runChild instead of the tests when envHelper is set.
const (
	envHelper = "HOST_TEST_HELPER" // "child" (see runChild) or "load" (see runLoad)
	envOut    = "HOST_TEST_OUT"    // where the child writes what it inherited
	envState  = "HOST_TEST_STATE"  // the child's state directory
)

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "child":
		os.Exit(runChild())
	case "load":
		os.Exit(runLoad())
	}
	if mode := os.Getenv(envStateHelper); mode != "" {
		os.Exit(runStateHelper(mode))
	}
	os.Exit(testhost.Main(m))
}

// childReport is what a process started by an upgrade found.
type childReport struct {
	Process  host.ProcessStatus
	AppState string
	Pricing  map[string][]byte // the pricing module's host-kept state
	Trust    string
	// Spans are the spans the new process recorded while it started.
	Spans []reportedSpan
}

// reportedSpan is a span as a child process reports it.
type reportedSpan struct {
	Name            string
	TraceID, Parent string
}

// runChild is the new process's main: a host over the shared state
// directory that reports what it inherited, says ready, and serves until
// the upgrader or SIGTERM tells it to stop.
func runChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "child:", err); return 1 }
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(os.Getenv(envState), "cache")})
	if err != nil {
		return fail(err)
	}
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	h, err := host.New(host.Options{Backend: b, StateDir: os.Getenv(envState), Upgrade: &upgrade.Options{NoSignals: true},
		TracerProvider: tp})
	if err != nil {
		return fail(err)
	}
	defer h.Close(context.Background())
	rep := childReport{Process: h.Process(), AppState: string(h.AppState()),
		Pricing: h.Module("pricing").State().Snapshot(), Trust: h.TrustMode()}
	for _, s := range spans.GetSpans() {
		rep.Spans = append(rep.Spans, reportedSpan{Name: s.Name, TraceID: s.SpanContext.TraceID().String(), Parent: s.Parent.SpanID().String()})
	}
	data, err := json.Marshal(rep)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(os.Getenv(envOut), data, 0o600); err != nil {
		return fail(err)
	}
	if err := h.Upgrader().Ready(); err != nil {
		return fail(err)
	}
	select {
	case <-h.Upgrader().Exit():
	case <-term:
	case <-time.After(2 * time.Minute): // never outlive the test
	}
	return 0
}

// cacheDir is the test process's private compilation cache, shared by its
// tests so each guest compiles once.
func cacheDir(t testing.TB) string { return testhost.CacheDir(t) }

// guest builds (or reuses) the pricing guest variant ("v1", "v2") and
// returns its bytes.
func guest(t testing.TB, variant string) []byte {
	t.Helper()
	return testhost.Guest(t, "./examples/pricing/guests/"+variant)
}

// testKey returns a deterministic private key for seed.
func testKey(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	priv, err := artifact.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func signer(t testing.TB, priv ed25519.PrivateKey) *artifact.Signer {
	t.Helper()
	s, err := artifact.NewSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Keys: trusted is in every test host's trust store, the others are not.
var (
	trustedSeed  byte = 1
	strangerSeed byte = 2
	otherSeed    byte = 3
)

// fixture is a state directory whose trust store holds the trusted key,
// and a directory for artifacts.
type fixture struct {
	state, dir string
	trusted    *artifact.Signer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{state: t.TempDir(), dir: t.TempDir(), trusted: signer(t, testKey(t, trustedSeed))}
	if _, err := artifact.WritePublicKey(filepath.Join(f.state, "trust"), f.trusted.PublicKey()); err != nil {
		t.Fatal(err)
	}
	return f
}

type hostOptions struct {
	dev            bool
	service        string // Options.Service; defaults to "svc"
	followSymlinks bool
	maxModuleSize  int64
	upgrade        *upgrade.Options
	noClose        bool // the test closes the host itself
	tracer         trace.TracerProvider
	traceCalls     float64 // Options.TraceCalls
}

// open returns a host over the fixture's state directory with a fresh wasm
// backend, closed when the test ends unless o.noClose.
func (f *fixture) open(t *testing.T, o hostOptions) *host.Host {
	t.Helper()
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(t), Default: wasm.ModuleConfig{
		Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"}}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := host.New(host.Options{Backend: b, StateDir: f.state, Development: o.dev, Upgrade: o.upgrade, Service: cmp.Or(o.service, "svc"),
		FollowSymlinks: o.followSymlinks, MaxModuleSize: o.maxModuleSize, TracerProvider: o.tracer, TraceCalls: o.traceCalls,
		Logger: testLogger(), DrainTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	if !o.noClose {
		t.Cleanup(func() { closeHost(t, h) })
	}
	return h
}

// closeHost closes h, bounded.
func closeHost(t *testing.T, h *host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Errorf("Close() = %v", err)
	}
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// write writes payload to the fixture's artifact directory as file and
// returns its path.
func (f *fixture) write(t testing.TB, file string, payload []byte) string {
	t.Helper()
	p := filepath.Join(f.dir, file)
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// signed writes payload as file with a manifest signed by s for m (Name
// defaults to pricing, Kind to wasm) and returns the artifact's path.
func (f *fixture) signed(t testing.TB, s *artifact.Signer, file string, payload []byte, m artifact.Manifest) string {
	t.Helper()
	p := f.write(t, file, payload)
	if m.Name == "" {
		m.Name = "pricing"
	}
	if m.Kind == "" {
		m.Kind = artifact.KindWasm
	}
	if _, err := s.SignFile(context.Background(), p, m); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeManifest writes sm as the manifest of the artifact at path.
func writeManifest(t testing.TB, path string, sm *artifact.SignedManifest) {
	t.Helper()
	data, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(artifact.ManifestPath(path), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// editManifest replaces old with new in the manifest of the artifact at
// path, failing if old is not there.
func editManifest(t testing.TB, path, old, new string) {
	t.Helper()
	mp := artifact.ManifestPath(path)
	data, err := os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("manifest %s lacks %q:\n%s", mp, old, data)
	}
	if err := os.WriteFile(mp, bytes.Replace(data, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}

// flipByte changes one byte in the middle of the file at path, keeping its
// size and mode; it makes a read-only file (a store blob) writable first.
func flipByte(t testing.TB, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

func ctxFor(t testing.TB, actor string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return host.WithActor(ctx, actor)
}

// mustLoad loads the artifact at path as pricing and fails the test if it
// is refused.
func mustLoad(t *testing.T, h *host.Host, actor, path string) module.VersionStatus {
	t.Helper()
	st, err := h.LoadFile(ctxFor(t, actor), "pricing", path)
	if err != nil {
		t.Fatalf("LoadFile(%s) = %v; want nil", filepath.Base(path), err)
	}
	return st
}

type price struct {
	Version string `json:"version"`
	Quotes  int64  `json:"quotes"`
}

func quote(ctx context.Context, m *module.Module) (price, error) {
	out, err := m.Call(ctx, "quote", []byte(`{"item":"apple","qty":1}`))
	if err != nil {
		return price{}, err
	}
	var p price
	if err := json.Unmarshal(out, &p); err != nil {
		return price{}, fmt.Errorf("decode %q: %w", out, err)
	}
	return p, nil
}

// servedBy calls pricing once and returns the guest version that answered.
func servedBy(t *testing.T, h *host.Host) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := quote(ctx, h.Module("pricing"))
	if err != nil {
		t.Fatalf("Call(pricing, quote) = %v; want an answer", err)
	}
	return p.Version
}

// serveDuring calls pricing from 2 goroutines while f runs, and after it
// until at least 10 more calls completed, and returns how many calls were
// made and which failed or were answered by another version than want.
func serveDuring(t *testing.T, h *host.Host, want string, f func()) (calls int, failures []error) {
	t.Helper()
	m := h.Module("pricing")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex // protects calls and failures
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				p, err := quote(ctx, m)
				cancel()
				if err == nil && p.Version != want {
					err = fmt.Errorf("served by %q; want %q", p.Version, want)
				}
				mu.Lock()
				calls++
				if err != nil {
					failures = append(failures, err)
				}
				mu.Unlock()
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return calls }
	waitFor(t, "calls before", func() bool { return count() > 0 })
	f()
	after := count()
	waitFor(t, "calls after", func() bool { return count() > after+10 })
	close(stop)
	wg.Wait()
	return calls, failures
}

// waitFor polls cond for up to 20 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// history returns h's audit events, oldest first.
func history(t *testing.T, h *host.Host) []audit.Event {
	t.Helper()
	evs, err := h.History(context.Background(), audit.Filter{})
	if err != nil {
		t.Fatalf("History() = %v", err)
	}
	slices.Reverse(evs)
	return outcomes(t, evs)
}

// outcomes returns evs without the records of changes starting, checking
// that each change's outcome follows its start.
func outcomes(t *testing.T, evs []audit.Event) []audit.Event {
	t.Helper()
	started := make(map[string]bool)
	var out []audit.Event
	for _, ev := range evs {
		if ev.Result == audit.ResultStarted {
			if ev.ID == "" || started[ev.ID] {
				t.Errorf("audit record of a start %+v: want a fresh ID", ev)
			}
			started[ev.ID] = true
			continue
		}
		if ev.ID != "" && !started[ev.ID] {
			t.Errorf("audit record %+v: no record of its start before it", ev)
		}
		out = append(out, ev)
	}
	return out
}

// newest returns h's newest audit record of an outcome.
func newest(t *testing.T, h *host.Host) audit.Event {
	t.Helper()
	evs := history(t, h)
	if len(evs) == 0 {
		t.Fatal("History() has no outcome")
	}
	return evs[len(evs)-1]
}

// ref is how the audit log names a version.
func ref(version string, payload []byte) string {
	return version + "@sha256:" + artifact.DigestOf(payload).Hex()
}

// event is the part of an audit event the tests compare (not the time).
type event struct {
	Actor, Action, Target, Artifact, From, To, Result string
	Error                                             string
}

func (e event) String() string {
	s := fmt.Sprintf("%s %s %s [%s] %s→%s %s", e.Actor, e.Action, e.Target, e.Artifact, short(e.From), short(e.To), e.Result)
	if e.Error != "" {
		s += " (" + e.Error + ")"
	}
	return s
}

// short cuts a version ref's digest for messages.
func short(r string) string {
	if i := strings.Index(r, "@sha256:"); i >= 0 && len(r) > i+20 {
		return r[:i+20] + "…"
	}
	return r
}

func events(evs []audit.Event) []event {
	out := make([]event, len(evs))
	for i, ev := range evs {
		out[i] = event{ev.Actor, string(ev.Action), ev.Target, ev.Artifact, ev.From, ev.To, string(ev.Result), ev.Error}
	}
	return out
}
