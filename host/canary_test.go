package host_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// canaryGuest builds the canary example guest answering as label and
// failing failPerMille quotes in a thousand.
func canaryGuest(t testing.TB, label string, failPerMille int) []byte {
	t.Helper()
	b, err := guestbuild.Bytes("./examples/pricing/guests/canary", fmt.Sprintf("-X main.label=%s -X main.failPerMille=%d", label, failPerMille))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyedLoad calls pricing with routing keys from 2 goroutines until
// stopped, sorting failures by the version that failed.
type keyedLoad struct {
	calls  atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex     // protects failed, others
	failed map[string]int // failed calls by version
	others []error        // failures that are not a version's call failing
}

func startKeyedLoad(t *testing.T, h *host.Host) *keyedLoad {
	l := &keyedLoad{stop: make(chan struct{}), failed: map[string]int{}}
	m := h.Module("pricing")
	for g := range 2 {
		l.wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := m.CallKey(ctx, fmt.Sprintf("user-%d-%d", g, k), "quote", []byte(`{"item":"apple","qty":3}`))
				cancel()
				l.calls.Add(1)
				if err == nil {
					continue
				}
				var ce *module.CallError
				l.mu.Lock()
				if errors.As(err, &ce) && errors.Is(err, module.ErrGuest) {
					l.failed[ce.Version]++
				} else {
					l.others = append(l.others, err)
				}
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.end() })
	return l
}

func (l *keyedLoad) end() (failed map[string]int, others []error) {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed, l.others
}

// waitCanary follows the canary of pricing until it ends (at most 60s) and
// returns its verdicts and final status.
func waitCanary(t *testing.T, h *host.Host, id string) ([]canary.Verdict, host.CanaryStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var all []canary.Verdict
	seq := 0
	for {
		vs, st, err := h.WatchCanary(ctx, "pricing", id, seq)
		if err != nil {
			t.Fatalf("WatchCanary() = %v; status %+v", err, st)
		}
		all = append(all, vs...)
		if len(vs) > 0 {
			seq = vs[len(vs)-1].Seq
		}
		if st.State == canary.Promoted || st.State == canary.Aborted {
			return all, st
		}
	}
}

// canaryRecords returns the outcome records of the change id.
func canaryRecords(t *testing.T, h *host.Host, id string) []audit.Event {
	t.Helper()
	var out []audit.Event
	for _, ev := range history(t, h) {
		if ev.ID == id {
			out = append(out, ev)
		}
	}
	return out
}

// TestCanaryPromoted: a good canary advances through its steps under keyed
// load and is promoted; meanwhile loads, rollbacks and other canaries of
// the module are refused naming it; every verdict is audited with its
// numbers; the store remembers the promoted version across a restart.
func TestCanaryPromoted(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	f := newFixture(t)
	h := f.open(t, hostOptions{noClose: true})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
	v2Path := f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"})
	v3Path := f.signed(t, f.trusted, "pricing-v3.wasm", canaryGuest(t, "v3", 0), artifact.Manifest{Version: "3.0.0"})
	load := startKeyedLoad(t, h)

	// Latencies of young instances under the race detector on a shared
	// machine are not what this test is about: a wide tolerance.
	st, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v2Path,
		canary.Policy{Steps: []float64{20, 50}, Interval: time.Second, MinCalls: 200, LatencyRatio: 4})
	if err != nil {
		t.Fatalf("CanaryFile() = %v", err)
	}
	if st.State != canary.Running || st.Weight != 20 || st.Version != "2.0.0" || st.Stable != "1.0.0" || st.ID == "" {
		t.Errorf("CanaryFile() = %+v; want 2.0.0 running at 20%% beside 1.0.0", st)
	}
	if s, ok := h.Canary("pricing"); !ok || s.ID != st.ID {
		t.Errorf("Canary(pricing) = %+v, %v; want the running canary", s, ok)
	}

	// Changes of the module meanwhile are refused, naming the canary.
	_, errLoad := h.LoadFile(ctxFor(t, "bob"), "pricing", v3Path)
	_, errRollback := h.Rollback(ctxFor(t, "bob"), "pricing")
	_, errCanary := h.CanaryFile(ctxFor(t, "bob"), "pricing", v3Path, canary.Policy{})
	for _, err := range []error{errLoad, errRollback, errCanary} {
		var be *module.BusyError
		if !errors.Is(err, module.ErrBusy) || !errors.As(err, &be) || be.Canary != "2.0.0" {
			t.Errorf("change during the canary = %v; want a *module.BusyError naming canary 2.0.0", err)
		}
	}

	verdicts, st := waitCanary(t, h, st.ID)
	if st.State != canary.Promoted || host.CanaryResult(st) != nil {
		t.Fatalf("canary ended %s: %v; want promoted", st.State, st.Last)
	}
	// Holds for want of calls depend on the machine's speed: left out.
	var decisions []canary.Decision
	for _, v := range verdicts {
		if v.Decision == canary.Hold && strings.Contains(v.Reason, "not enough calls") {
			continue
		}
		decisions = append(decisions, v.Decision)
	}
	if want := []canary.Decision{canary.Begin, canary.Pass, canary.Promote}; !slices.Equal(decisions, want) {
		t.Errorf("verdicts %v; want %v", decisions, want)
	}
	s := h.Module("pricing").Status()
	if s.Active.Version != "2.0.0" || s.Previous == nil || s.Previous.Version != "1.0.0" || s.Canary != nil {
		t.Errorf("status after the promotion %+v; want 2.0.0 active, 1.0.0 previous", s)
	}
	failed, others := load.end()
	if len(failed) > 0 || len(others) > 0 || load.calls.Load() == 0 {
		t.Errorf("load: %d calls, failed %v, other errors %v; want none failed", load.calls.Load(), failed, others)
	}

	recs := canaryRecords(t, h, st.ID)
	var got []string
	for _, ev := range recs {
		if strings.HasPrefix(ev.Detail, "hold") {
			continue
		}
		got = append(got, string(ev.Result)+" "+strings.SplitN(ev.Detail, " ", 2)[0])
		if ev.Action != host.ActionCanary || ev.From != ref("1.0.0", v1) || ev.To != ref("2.0.0", v2) || ev.Artifact != "pricing-v2.wasm" {
			t.Errorf("record %+v; want action canary from 1.0.0 to 2.0.0", ev)
		}
		if numbers := strings.Contains(ev.Detail, "calls") && strings.Contains(ev.Detail, "evidence"); numbers == strings.HasPrefix(ev.Detail, "begin") {
			t.Errorf("record detail %q; want the numbers behind the verdict (none for the beginning)", ev.Detail)
		}
	}
	if want := []string{"ok begin", "ok pass", "ok promote"}; !slices.Equal(got, want) {
		t.Errorf("audit records of the canary %v; want %v", got, want)
	}
	if recs[0].Actor != "alice" || recs[1].Actor != "canary" {
		t.Errorf("actors %q, %q; want alice, then canary", recs[0].Actor, recs[1].Actor)
	}
	refused := 0
	for _, ev := range history(t, h) {
		if ev.Actor == "bob" && ev.Result == audit.ResultRefused && strings.Contains(ev.Error, "2.0.0 is under canary") {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("%d refusals of bob's changes naming the canary in the audit log; want 3", refused)
	}

	// The store knows the promoted version: a restart serves it.
	closeHost(t, h)
	h2 := f.open(t, hostOptions{})
	if err := h2.RestoreModules(ctxFor(t, "restart")); err != nil {
		t.Fatal(err)
	}
	if v := servedBy(t, h2); v != "v2" {
		t.Errorf("after a restart %s serves; want v2", v)
	}
}

// TestCanaryAbortedUnderLoad: a canary failing 30% of calls is aborted by
// the sequential test long before its window ends; every call that failed
// was the canary's, none was the stable version's or lost to the abort;
// the abort is audited with its numbers and the stable version serves on.
func TestCanaryAbortedUnderLoad(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "1.0.0"}))
	flaky := f.signed(t, f.trusted, "pricing-flaky.wasm", canaryGuest(t, "flaky", 300), artifact.Manifest{Version: "1.1.0-flaky"})
	load := startKeyedLoad(t, h)

	st, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", flaky,
		canary.Policy{Steps: []float64{10}, Interval: time.Hour, MinCalls: 100})
	if err != nil {
		t.Fatalf("CanaryFile() = %v", err)
	}
	_, st = waitCanary(t, h, st.ID)
	err = host.CanaryResult(st)
	if st.State != canary.Aborted || !errors.Is(err, canary.ErrAborted) || !strings.Contains(err.Error(), "failure rate") {
		t.Fatalf("canary ended %s: %v; want aborted for its failure rate", st.State, err)
	}
	after := load.calls.Load()
	waitFor(t, "calls after the abort", func() bool { return load.calls.Load() > after+200 })
	failed, others := load.end()
	if len(others) > 0 || failed["1.0.0"] > 0 || failed["1.1.0-flaky"] == 0 {
		t.Errorf("failed calls by version %v, other errors %v; want failures of the canary only", failed, others)
	}
	w := st.Last.Window
	t.Logf("aborted after %d canary calls: %s", w.Canary.Calls, st.Last.Reason)
	if w.Canary.Calls < 100 || uint64(failed["1.1.0-flaky"]) > w.Canary.Calls+100 {
		t.Errorf("abort after %d canary calls, %d failed calls of the canary; want at least MinCalls and no failure after the abort", w.Canary.Calls, failed["1.1.0-flaky"])
	}
	if s := h.Module("pricing").Status(); s.Active.Version != "1.0.0" || s.Canary != nil {
		t.Errorf("status after the abort %+v; want 1.0.0 active, no canary", s)
	}
	recs := canaryRecords(t, h, st.ID)
	last := recs[len(recs)-1]
	if last.Result != audit.ResultFailed || last.Actor != "canary" || !strings.HasPrefix(last.Error, "aborted: failure rate") || !strings.Contains(last.Detail, "failed") {
		t.Errorf("last record %+v; want failed by the canary analysis, with its numbers", last)
	}
	// An aborted canary leaves the store, like a refused load.
	store, err := artifact.OpenStore(filepath.Join(f.state, "store"), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the aborted canary to leave the store", func() bool {
		entries, err := store.Entries("pricing")
		if err != nil {
			return false
		}
		for _, e := range entries {
			if e.Manifest.Digest.Hex() == st.Digest {
				return false
			}
		}
		return len(entries) == 1
	})
	// The module is free again.
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v2.wasm", guest(t, "v2"), artifact.Manifest{Version: "2.0.0"}))
}

// TestCanaryCommands: operators pause, freeze, resume and abort a canary;
// each is audited under their name.
func TestCanaryCommands(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "1.0.0"}))
	v2 := f.signed(t, f.trusted, "pricing-v2.wasm", guest(t, "v2"), artifact.Manifest{Version: "2.0.0"})
	st, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v2, canary.Policy{Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		actor string
		d     canary.Decision
		want  canary.State
	}{
		{"bob", canary.Pause, canary.Paused},
		{"bob", canary.Freeze, canary.Frozen},
		{"bob", canary.Resume, canary.Running},
		{"carol", canary.Abort, canary.Aborted},
	} {
		s, err := h.CanaryCommand(ctxFor(t, c.actor), "pricing", c.d)
		if err != nil || s.State != c.want {
			t.Errorf("CanaryCommand(%s) = %s, %v; want %s", c.d, s.State, err, c.want)
		}
	}
	if _, err := h.CanaryCommand(ctxFor(t, "carol"), "pricing", canary.Promote); !errors.Is(err, host.ErrNoCanary) {
		t.Errorf("CanaryCommand(promote) after the abort = %v; want ErrNoCanary", err)
	}
	recs := canaryRecords(t, h, st.ID)
	var got []string
	for _, ev := range recs[1:] {
		got = append(got, ev.Actor+" "+string(ev.Result)+" "+strings.SplitN(ev.Detail, " ", 2)[0])
	}
	want := []string{"bob ok pause", "bob ok freeze", "bob ok resume", "carol canceled abort"}
	if !slices.Equal(got, want) {
		t.Errorf("records %v; want %v", got, want)
	}
	last, _ := h.Canary("pricing")
	if err := host.CanaryResult(last); err == nil || !strings.Contains(err.Error(), "carol") {
		t.Errorf("CanaryResult() = %v; want an abort naming carol", err)
	}
}

// TestCanaryNeedsAStableVersion: a canary of a module never loaded is
// refused and audited, and leaves nothing held.
func TestCanaryNeedsAStableVersion(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	v1 := f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "1.0.0"})
	if _, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v1, canary.Policy{}); !errors.Is(err, module.ErrNotFound) {
		t.Fatalf("CanaryFile() of a first version = %v; want ErrNotFound", err)
	}
	if ev := newest(t, h); ev.Action != host.ActionCanary || ev.Result != audit.ResultRefused {
		t.Errorf("newest record %+v; want the canary refused", ev)
	}
	mustLoad(t, h, "deploy", v1)
	if _, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v1, canary.Policy{Steps: []float64{50, 10}}); err == nil || !strings.Contains(err.Error(), "does not increase") {
		t.Errorf("CanaryFile() with decreasing steps = %v; want a policy refusal", err)
	}
}

// TestUpgradeRefusedDuringCanary: a binary upgrade does not carry a canary
// to the new process; it is refused while one runs, naming it, and audited.
func TestUpgradeRefusedDuringCanary(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{upgrade: &upgrade.Options{NoSignals: true}})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "1.0.0"}))
	v2 := f.signed(t, f.trusted, "pricing-v2.wasm", guest(t, "v2"), artifact.Manifest{Version: "2.0.0"})
	if _, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v2, canary.Policy{Interval: time.Hour}); err != nil {
		t.Fatal(err)
	}
	bogus := f.write(t, "next-binary", []byte("#!/bin/sh\n"))
	_, err := h.Upgrade(ctxFor(t, "bob"), bogus)
	var be *module.BusyError
	if !errors.Is(err, module.ErrBusy) || !errors.As(err, &be) || be.Canary != "2.0.0" || !strings.Contains(err.Error(), "does not carry a canary") {
		t.Fatalf("Upgrade() during a canary = %v; want a *module.BusyError naming canary 2.0.0", err)
	}
	if ev := newest(t, h); ev.Action != audit.ActionUpgrade || ev.Result != audit.ResultRefused || ev.Actor != "bob" {
		t.Errorf("newest record %+v; want bob's upgrade refused", ev)
	}
	if s, _ := h.Canary("pricing"); s.State != canary.Running {
		t.Errorf("canary %s after the refused upgrade; want running", s.State)
	}
	if _, err := h.CanaryCommand(ctxFor(t, "bob"), "pricing", canary.Abort); err != nil {
		t.Fatal(err)
	}
	// Without a canary the upgrade gets past that check (and fails
	// verification: the binary is not signed), and canaries start again.
	if _, err := h.Upgrade(ctxFor(t, "bob"), bogus); errors.Is(err, module.ErrBusy) || !errors.Is(err, artifact.ErrUnsigned) {
		t.Errorf("Upgrade() after the abort = %v; want a verification refusal", err)
	}
	if _, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v2, canary.Policy{Interval: time.Hour}); err != nil {
		t.Errorf("CanaryFile() after a refused upgrade = %v", err)
	}
}

// TestCloseAbortsCanary: closing the host aborts a running canary and
// records it; the stable version stays the current one in the store.
func TestCloseAbortsCanary(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{noClose: true})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "1.0.0"}))
	v2 := f.signed(t, f.trusted, "pricing-v2.wasm", guest(t, "v2"), artifact.Manifest{Version: "2.0.0"})
	st, err := h.CanaryFile(ctxFor(t, "alice"), "pricing", v2, canary.Policy{Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	closeHost(t, h)
	h2 := f.open(t, hostOptions{})
	recs := canaryRecords(t, h2, st.ID)
	if last := recs[len(recs)-1]; last.Result != audit.ResultCanceled || last.Actor != "shutdown" {
		t.Errorf("last record of the canary %+v; want canceled by shutdown", last)
	}
	if err := h2.RestoreModules(ctxFor(t, "restart")); err != nil {
		t.Fatal(err)
	}
	if v := servedBy(t, h2); v != "v1" {
		t.Errorf("after a restart %s serves; want v1 (the canary never became current)", v)
	}
}
