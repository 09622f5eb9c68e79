package module_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// fakeBackend prepares fakeCode whose answer is its version name. An
// artifact "reject:<check>" is refused at that check; "block" makes every
// call wait on the code's gate.
type fakeBackend struct {
	mu       sync.Mutex // protects prepared
	prepared []*fakeCode
	// prepareGate, if set, holds Prepare until closed; entered then gets a
	// value each time Prepare starts waiting.
	prepareGate chan struct{}
	entered     chan struct{}
	closed      atomic.Bool
}

func (b *fakeBackend) Prepare(ctx context.Context, s module.Spec) (module.Code, error) {
	if b.prepareGate != nil {
		b.entered <- struct{}{}
		select {
		case <-b.prepareGate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	art := string(s.Artifact)
	if check, ok := cutPrefix(art, "reject:"); ok {
		return nil, module.Reject(check, module.ErrSelfTestFailed)
	}
	c := &fakeCode{version: s.Version, gate: make(chan struct{}), block: art == "block", failMigrate: art == "failmigrate", state: s.State}
	b.mu.Lock()
	b.prepared = append(b.prepared, c)
	b.mu.Unlock()
	return c, nil
}

func (b *fakeBackend) Close(context.Context) error { b.closed.Store(true); return nil }

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

type fakeCode struct {
	version     string
	block       bool
	failMigrate bool
	gate        chan struct{}
	state       *module.KV
	running     atomic.Int64
	closed      atomic.Bool
	migrated    atomic.Value // string
	calls       atomic.Uint64
}

func (c *fakeCode) AppendCall(ctx context.Context, dst []byte, handler string, in []byte) ([]byte, error) {
	if c.closed.Load() {
		return dst, fmt.Errorf("called after Close")
	}
	c.running.Add(1)
	defer c.running.Add(-1)
	c.calls.Add(1)
	if c.block {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return dst, ctx.Err()
		}
	}
	if c.closed.Load() {
		return dst, module.Fail(module.ErrDrained, "")
	}
	if string(in) == "fail" {
		return dst, module.Fail(module.ErrGuest, "asked to fail")
	}
	if handler == "goroutines" { // the goroutine profile, with profiling labels
		var buf bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&buf, 1)
		return append(dst, buf.Bytes()...), nil
	}
	return append(dst, c.version...), nil
}

func (c *fakeCode) Migrate(_ context.Context, from string) error {
	if c.failMigrate {
		return module.Reject("migrate", module.ErrMigrateFailed)
	}
	c.migrated.Store(from)
	return nil
}

func (c *fakeCode) Stats() module.CodeStats {
	return module.CodeStats{Instances: 1, Calls: c.calls.Load()}
}

func (c *fakeCode) Close(context.Context) error {
	if c.closed.Swap(true) {
		panic("Close called twice")
	}
	return nil
}

func newTestRegistry(t *testing.T, b *fakeBackend, drain time.Duration) *module.Registry {
	t.Helper()
	r, err := module.New(module.Options{Backend: b, DrainTimeout: drain})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Close(ctx)
	})
	return r
}

func mustLoad(t *testing.T, r *module.Registry, version, artifact string) {
	t.Helper()
	if _, err := r.Load(context.Background(), "m", module.Source{Version: version, Artifact: []byte(artifact)}); err != nil {
		t.Fatalf("Load(%s) = %v", version, err)
	}
}

func callVersion(t *testing.T, r *module.Registry) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := r.Call(ctx, "m", "f", nil)
	if err != nil {
		t.Fatalf("Call() = %v", err)
	}
	return string(out)
}

// waitFor polls cond until it holds or the bound passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCallBeforeLoad(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	_, err := r.Call(context.Background(), "m", "f", nil)
	if !errors.Is(err, module.ErrNotFound) {
		t.Fatalf("Call() = %v; want ErrNotFound", err)
	}
}

func TestSwapAndRollback(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	mustLoad(t, r, "v1", "")
	mustLoad(t, r, "v2", "")
	if got := callVersion(t, r); got != "v2" {
		t.Fatalf("after load v2: Call() = %q; want v2", got)
	}
	if got := b.prepared[1].migrated.Load(); got != "v1" {
		t.Errorf("v2 migrated from %q; want v1", got)
	}
	st := r.Module("m").Status()
	if st.Active.Version != "v2" || st.Previous == nil || st.Previous.Version != "v1" {
		t.Fatalf("Status() = active %v previous %v; want v2, v1", st.Active, st.Previous)
	}
	if _, err := r.Rollback(context.Background(), "m"); err != nil {
		t.Fatalf("Rollback() = %v", err)
	}
	if got := callVersion(t, r); got != "v1" {
		t.Fatalf("after rollback: Call() = %q; want v1", got)
	}
	// v2 drains and closes; v1 (the code created first) stays open.
	waitFor(t, "v2 to close", b.prepared[1].closed.Load)
	if b.prepared[0].closed.Load() {
		t.Fatal("v1 closed after rollback to it")
	}
	if _, err := r.Rollback(context.Background(), "m"); !errors.Is(err, module.ErrNoPrevious) {
		t.Fatalf("second Rollback() = %v; want ErrNoPrevious", err)
	}
}

func TestAtMostTwoVersionsLive(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	for i := 1; i <= 5; i++ {
		mustLoad(t, r, fmt.Sprintf("v%d", i), "")
	}
	waitFor(t, "old versions to close", func() bool {
		open := 0
		for _, c := range b.prepared {
			if !c.closed.Load() {
				open++
			}
		}
		return open == 2
	})
	if b.prepared[3].closed.Load() || b.prepared[4].closed.Load() {
		t.Fatal("active or previous version closed")
	}
}

func TestRejectedVersionNeverServes(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	mustLoad(t, r, "v1", "")
	_, err := r.Load(context.Background(), "m", module.Source{Version: "bad", Artifact: []byte("reject:selftest")})
	var le *module.LoadError
	if !errors.As(err, &le) || le.Check != "selftest" || le.Module != "m" || le.Version != "bad" {
		t.Fatalf("Load(bad) = %v; want LoadError for m@bad at selftest", err)
	}
	if !errors.Is(err, module.ErrRejected) || !errors.Is(err, module.ErrSelfTestFailed) {
		t.Fatalf("Load(bad) = %v; want it to match ErrRejected and ErrSelfTestFailed", err)
	}
	if got := callVersion(t, r); got != "v1" {
		t.Fatalf("after rejected load: Call() = %q; want v1", got)
	}
	if st := r.Module("m").Status(); st.Previous != nil {
		t.Fatalf("rejected load changed previous to %v", st.Previous)
	}
}

func TestInFlightCallFinishesOnOldVersion(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, 10*time.Second)
	mustLoad(t, r, "v1", "block")
	v1 := b.prepared[0]

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := r.Call(context.Background(), "m", "f", nil)
		done <- result{string(out), err}
	}()
	waitFor(t, "the call to start on v1", func() bool { return v1.running.Load() == 1 })

	mustLoad(t, r, "v2", "")
	mustLoad(t, r, "v3", "") // retires v1 while its call runs
	if got := callVersion(t, r); got != "v3" {
		t.Fatalf("new call = %q; want v3", got)
	}
	if v1.closed.Load() {
		t.Fatal("v1 closed while a call held it")
	}
	if st := r.Module("m").Status(); len(st.Draining) != 1 || st.Draining[0].InFlight != 1 {
		t.Fatalf("Status().Draining = %+v; want v1 with 1 call in flight", st.Draining)
	}
	close(v1.gate)
	select {
	case res := <-done:
		if res.err != nil || res.out != "v1" {
			t.Fatalf("in-flight call = %q, %v; want v1, nil", res.out, res.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight call did not finish")
	}
	waitFor(t, "v1 to close after its last call", v1.closed.Load)
}

func TestDrainDeadline(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, 50*time.Millisecond)
	mustLoad(t, r, "v1", "block")
	v1 := b.prepared[0]
	done := make(chan error, 1)
	go func() {
		_, err := r.Call(context.Background(), "m", "f", nil)
		done <- err
	}()
	waitFor(t, "the call to start", func() bool { return v1.running.Load() == 1 })
	mustLoad(t, r, "v2", "")
	mustLoad(t, r, "v3", "")
	waitFor(t, "v1 to close at the drain deadline", v1.closed.Load)
	close(v1.gate)
	select {
	case err := <-done:
		var ce *module.CallError
		if !errors.Is(err, module.ErrDrained) || !errors.As(err, &ce) || ce.Version != "v1" {
			t.Fatalf("call past drain deadline = %v; want ErrDrained from m@v1", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("call did not return")
	}
}

func TestConcurrentLoadsOneBusy(t *testing.T) {
	b := &fakeBackend{prepareGate: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := newTestRegistry(t, b, time.Second)
	first := make(chan error, 1)
	go func() {
		_, err := r.Load(context.Background(), "m", module.Source{Version: "a", Artifact: nil})
		first <- err
	}()
	select {
	case <-b.entered: // the first load is parked in Prepare
	case <-time.After(10 * time.Second):
		t.Fatal("first load never reached Prepare")
	}
	_, err := r.Load(context.Background(), "m", module.Source{Version: "b"})
	if !errors.Is(err, module.ErrBusy) {
		t.Fatalf("second Load() = %v; want ErrBusy", err)
	}
	if _, err := r.Rollback(context.Background(), "m"); !errors.Is(err, module.ErrBusy) {
		t.Fatalf("Rollback() during load = %v; want ErrBusy", err)
	}
	close(b.prepareGate)
	if err := <-first; err != nil {
		t.Fatalf("first Load() = %v", err)
	}
	if got := callVersion(t, r); got != "a" {
		t.Fatalf("Call() = %q; want a", got)
	}
}

func TestStateSurvivesSwaps(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	mustLoad(t, r, "v1", "")
	b.prepared[0].state.Add("n", 41)
	mustLoad(t, r, "v2", "")
	if b.prepared[1].state != b.prepared[0].state {
		t.Fatal("versions got different state stores")
	}
	if got := r.Module("m").State().Add("n", 1); got != 42 {
		t.Fatalf("state after swap = %d; want 42", got)
	}
}

// TestPrepareChangesNothingUntilActivate checks the two phases: a prepared
// version serves no call and holds the change slot; Discard leaves no trace;
// the migrate hook runs only in Activate.
func TestPrepareChangesNothingUntilActivate(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, time.Second)
	mustLoad(t, r, "v1", "")
	ctx := context.Background()

	p, err := r.Prepare(ctx, "m", module.Source{Version: "v2"})
	if err != nil {
		t.Fatalf("Prepare(v2) = %v", err)
	}
	if got := callVersion(t, r); got != "v1" {
		t.Fatalf("Call() with v2 prepared = %q; want v1", got)
	}
	if b.prepared[1].migrated.Load() != nil {
		t.Fatal("Prepare ran the migrate hook; it belongs to Activate")
	}
	if from, _, ok := p.From(); !ok || from != "v1" || p.Version() != "v2" || p.Rollback() {
		t.Fatalf("Prepared = from %q (%v) to %q rollback %v; want v1 → v2, not a rollback", from, ok, p.Version(), p.Rollback())
	}
	if _, err := r.Load(ctx, "m", module.Source{Version: "v3"}); !errors.Is(err, module.ErrBusy) {
		t.Fatalf("Load() while v2 is prepared = %v; want ErrBusy", err)
	}
	if _, err := r.Rollback(ctx, "m"); !errors.Is(err, module.ErrBusy) {
		t.Fatalf("Rollback() while v2 is prepared = %v; want ErrBusy", err)
	}
	p.Discard()
	if !b.prepared[1].closed.Load() {
		t.Fatal("Discard did not close the prepared version")
	}
	if _, err := p.Activate(ctx); err == nil {
		t.Fatal("Activate() after Discard = nil; want an error")
	}
	if got := callVersion(t, r); got != "v1" {
		t.Fatalf("Call() after Discard = %q; want v1", got)
	}

	p, err = r.Prepare(ctx, "m", module.Source{Version: "v3"})
	if err != nil {
		t.Fatalf("Prepare(v3) after Discard = %v; want the slot free", err)
	}
	st, err := p.Activate(ctx)
	if err != nil || st.Version != "v3" {
		t.Fatalf("Activate() = %+v, %v; want v3", st, err)
	}
	if b.prepared[2].migrated.Load() == nil {
		t.Fatal("Activate did not run the migrate hook")
	}
	if got := callVersion(t, r); got != "v3" {
		t.Fatalf("Call() after Activate = %q; want v3", got)
	}
}

// TestCanceledPrepareIsNotARejection checks that a preparation interrupted by
// its caller reports the cancellation, not a failed check.
func TestCanceledPrepareIsNotARejection(t *testing.T) {
	b := &fakeBackend{prepareGate: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := newTestRegistry(t, b, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Prepare(ctx, "m", module.Source{Version: "v1"})
		errc <- err
	}()
	<-b.entered
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || errors.Is(err, module.ErrRejected) {
			t.Fatalf("Prepare() canceled = %v; want context.Canceled, not ErrRejected", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Prepare did not return after its context was canceled")
	}
	close(b.prepareGate)
	if _, err := r.Load(context.Background(), "m", module.Source{Version: "v1"}); err != nil {
		t.Fatalf("Load() after a canceled Prepare = %v; want the slot released", err)
	}
}

func TestCloseDrainsAndClosesBackend(t *testing.T) {
	before := runtime.NumGoroutine()
	b := &fakeBackend{}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	mustLoad(t, r, "v1", "")
	mustLoad(t, r, "v2", "")
	if err := r.Close(context.Background()); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	for _, c := range b.prepared {
		if !c.closed.Load() {
			t.Errorf("version %s not closed", c.version)
		}
	}
	if !b.closed.Load() {
		t.Error("backend not closed")
	}
	if _, err := r.Load(context.Background(), "m", module.Source{Version: "v3"}); !errors.Is(err, module.ErrClosed) {
		t.Errorf("Load() after Close = %v; want ErrClosed", err)
	}
	if _, err := r.Call(context.Background(), "m", "f", nil); !errors.Is(err, module.ErrNotFound) {
		t.Errorf("Call() after Close = %v; want ErrNotFound", err)
	}
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}

// TestSwapUnderLoad checks that no call fails and every call sees a whole
// version while versions change as fast as they can.
func TestSwapUnderLoad(t *testing.T) {
	b := &fakeBackend{}
	r := newTestRegistry(t, b, 5*time.Second)
	mustLoad(t, r, "v0", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var calls, failed atomic.Int64
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil && calls.Load() < 200000 {
				if _, err := r.Call(context.Background(), "m", "f", nil); err != nil {
					failed.Add(1)
					t.Errorf("Call() = %v", err)
					return
				}
				calls.Add(1)
			}
		})
	}
	waitFor(t, "calls to start", func() bool { return calls.Load() > 0 })
	for i := 1; i <= 200 && ctx.Err() == nil; i++ {
		mustLoad(t, r, fmt.Sprintf("v%d", i), "")
	}
	cancel()
	wg.Wait()
	if failed.Load() != 0 || calls.Load() == 0 {
		t.Fatalf("calls %d, failed %d; want >0 calls and none failed", calls.Load(), failed.Load())
	}
}

func TestBusyAndClosedRefusals(t *testing.T) {
	b := &fakeBackend{prepareGate: make(chan struct{}), entered: make(chan struct{}, 1)}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		_, err := r.Load(context.Background(), "m", module.Source{Version: "a"})
		first <- err
	}()
	<-b.entered
	if _, err := r.Load(context.Background(), "m", module.Source{Version: "b"}); !errors.Is(err, module.ErrBusy) {
		t.Errorf("Load() during a load = %v; want ErrBusy", err)
	}
	if _, err := r.Rollback(context.Background(), "m"); !errors.Is(err, module.ErrBusy) {
		t.Errorf("Rollback() during a load = %v; want ErrBusy", err)
	}
	close(b.prepareGate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	r.Close(context.Background())
	if _, err := r.Load(context.Background(), "m", module.Source{Version: "c"}); !errors.Is(err, module.ErrClosed) {
		t.Errorf("Load() after Close = %v; want ErrClosed", err)
	}
}

func TestUnknownModuleLeavesNoEntry(t *testing.T) {
	r := newTestRegistry(t, &fakeBackend{}, time.Second)
	if _, err := r.Rollback(context.Background(), "typo"); !errors.Is(err, module.ErrNotFound) {
		t.Errorf("Rollback(typo) = %v; want ErrNotFound", err)
	}
	if _, err := r.Call(context.Background(), "typo", "f", nil); !errors.Is(err, module.ErrNotFound) {
		t.Errorf("Call(typo) = %v; want ErrNotFound", err)
	}
	r.Module("handle-only")
	if st := r.Status(); len(st) != 0 {
		t.Errorf("Status() = %+v; want no modules", st)
	}
}
