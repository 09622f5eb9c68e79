package host

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/statedb"
	"github.com/hotswapgo/hotswap/module"
)

// noCode is a Backend that prepares nothing: these tests use the KVs only.
type noCode struct{}

func (noCode) Prepare(context.Context, module.Spec) (module.Code, error) {
	return nil, errors.New("no code in this test")
}
func (noCode) Close(context.Context) error { return nil }

// childState returns the state of a process started by an upgrade from a
// parent that keeps the file in dir, with the handed-over state restored.
func childState(t *testing.T, dir string, handed map[string][]byte) (*kvState, *module.Registry) {
	t.Helper()
	s, err := newKVState(Options{StateDir: dir}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := module.New(module.Options{Backend: noCode{}, State: s.newKV})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close(context.Background()) })
	reg.Module("m").State().Restore(handed) // as startUpgrader does
	s.parentKeepsFile = true
	if err := s.open(reg, true); err != nil {
		t.Fatalf("open() = %v", err)
	}
	return s, reg
}

func waitTaken(t *testing.T, s *kvState) {
	t.Helper()
	select {
	case <-s.taken:
	case <-time.After(20 * time.Second):
		t.Fatal("the state file was not taken over 20s after the parent closed it")
	}
}

// TestTakeoverAddsBothSides: the parent's writes after the snapshot (in
// the file) and the child's meanwhile (journaled) are both in the state
// the child ends with, and the child's later writes reach the file.
func TestTakeoverAddsBothSides(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, StateFileName)
	parent, err := statedb.Open(path, statedb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The parent handed over n=500, then counted on to 1000 and set a key.
	ps := parent.Sink("m")
	ps.Changed(module.KVChange{Op: module.KVSet, Key: "n", Value: []byte("1000")})
	ps.Changed(module.KVChange{Op: module.KVSet, Key: "parent", Value: []byte("p")})

	s, reg := childState(t, dir, map[string][]byte{"n": []byte("500"), "gone": []byte("x")})
	kv := reg.Module("m").State()
	if st := s.status(); !st.TakingOver || st.Path != path {
		t.Errorf("status() while the parent keeps the file = %+v; want TakingOver, Path %s", st, path)
	}
	const writers, adds = 4, 250
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range adds {
				kv.Add("n", 1)
			}
		})
	}
	kv.Delete("gone")
	kv.Set("child", []byte("c"))
	reg.Module("late").State().Add("k", 7) // a module created while taking over
	if err := parent.Close(); err != nil {
		t.Fatal(err)
	}
	waitTaken(t, s)
	wg.Wait()
	want := map[string]string{"n": strconv.Itoa(1000 + writers*adds), "parent": "p", "child": "c"}
	assertKV(t, "after the takeover", kv.Snapshot(), want)
	if st := s.status(); st.TakingOver || st.LastError != "" {
		t.Errorf("status() after the takeover = %+v; want not TakingOver, no error", st)
	}
	kv.Add("n", 1)
	if err := s.close(); err != nil {
		t.Fatalf("close() = %v", err)
	}

	db, err := statedb.Open(path, statedb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	all, err := db.Load()
	if err != nil {
		t.Fatal(err)
	}
	want["n"] = strconv.Itoa(1000 + writers*adds + 1)
	assertKV(t, "in the file", all["m"], want)
	assertKV(t, "in the file", all["late"], map[string]string{"k": "7"})
}

// TestTakeoverStopsOnClose: a child whose parent never releases the file
// stops waiting when it closes, leaving no goroutine behind.
func TestTakeoverStopsOnClose(t *testing.T) {
	dir := t.TempDir()
	parent, err := statedb.Open(filepath.Join(dir, StateFileName), statedb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	before := runtime.NumGoroutine()
	s, reg := childState(t, dir, map[string][]byte{"n": []byte("1")})
	reg.Module("m").State().Add("n", 1)
	select {
	case <-s.taken:
		t.Fatal("took the file over while the parent keeps it")
	case <-time.After(3 * takeoverPoll):
	}
	done := make(chan error, 1)
	go func() { done <- s.close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("close() = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close() still waiting 5s later")
	}
	select {
	case <-s.taken:
	default:
		t.Error("taken still open after close()")
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after close(); want at most %d as before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
	if got, _ := reg.Module("m").State().Get("n"); string(got) != "2" {
		t.Errorf("n = %s after close(); want 2 still served from memory", got)
	}
}

func assertKV(t *testing.T, when string, got map[string][]byte, want map[string]string) {
	t.Helper()
	ok := len(got) == len(want)
	for k, v := range want {
		ok = ok && string(got[k]) == v
	}
	if !ok {
		t.Errorf("state %s = %q; want %q", when, got, want)
	}
}
