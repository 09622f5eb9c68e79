// Command kv measures what a write to a module's host-kept state costs
// under each durability mode of package host: memory only, the group-commit
// window, and synchronous.
//
//	go run ./bench/kv
//
// Three hosts run side by side, one per mode, each over its own state
// directory under the temporary directory, with the echo test guest loaded
// (trusted mode). "add" is module.KV.Add called from Go; "guest_add" is a
// call of the guest's "count" handler, which makes one kv_add host call,
// and "guest_call" a call of its "version" handler, which makes none: the
// difference is what kv_add adds to a call. Memory and window latencies are
// medians of the mean time of batches of 100 writes, batches of the modes
// interleaved so machine noise hits them alike; synchronous writes wait for
// a commit (an fsync), so each is timed alone. "sync4" runs 4 writers at
// once in synchronous mode: writes_per_commit says how many writes shared
// one commit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const batch = 100

func main() {
	rounds := flag.Int("rounds", 1000, "batches of 100 writes per mode (memory, window)")
	syncWrites := flag.Int("sync-writes", 500, "synchronous writes timed one by one")
	sync4 := flag.Duration("sync4", 2*time.Second, "how long 4 synchronous writers run")
	flag.Parse()
	if err := run(*rounds, *syncWrites, *sync4); err != nil {
		log.Fatal(err)
	}
}

type mode struct {
	name string
	d    host.Durability
	h    *host.Host
	kv   *module.KV
	m    *module.Module
	// Per-write nanoseconds: batch means (memory, window) or single writes.
	add, guestAdd, guestCall []float64
}

func run(rounds, syncWrites int, sync4Time time.Duration) error {
	ctx := context.Background()
	code, err := benchutil.Guest("./internal/testguests/echo", "")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "hotswap-bench-kv-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cache := filepath.Join(tmp, "cache")

	modes := []*mode{{name: "mem", d: host.DurabilityMemory}, {name: "window", d: host.DurabilityWindow}, {name: "sync", d: host.DurabilitySync}}
	for _, m := range modes {
		b, err := wasm.New(wasm.Options{CacheDir: cache, Default: wasm.ModuleConfig{CallTimeout: wasm.NoCallTimeout, Grants: []wasm.Capability{wasm.CapKV}}})
		if err != nil {
			return err
		}
		m.h, err = host.New(host.Options{Backend: b, StateDir: filepath.Join(tmp, m.name), Development: true, Durability: m.d})
		if err != nil {
			return err
		}
		defer m.h.Close(ctx)
		if _, err := m.h.LoadArtifact(ctx, "echo", "v1", code, nil); err != nil {
			return fmt.Errorf("%s: load echo: %w", m.name, err)
		}
		m.m = m.h.Module("echo")
		m.kv = m.m.State()
	}
	dst := make([]byte, 0, 64)
	call := func(m *module.Module, handler string) error {
		_, err := m.AppendCall(ctx, dst[:0], handler, nil)
		return err
	}
	timed := func(n int, f func() error) (float64, error) {
		start := time.Now()
		for range n {
			if err := f(); err != nil {
				return 0, err
			}
		}
		return float64(time.Since(start).Nanoseconds()) / float64(n), nil
	}
	// Warm up, then measure.
	for _, m := range modes {
		for range 10 {
			if err := call(m.m, "count"); err != nil {
				return fmt.Errorf("%s: count: %w", m.name, err)
			}
		}
	}
	for r := range rounds {
		for _, m := range modes[:2] {
			for _, v := range []struct {
				out *[]float64
				f   func() error
			}{
				{&m.add, func() error { m.kv.Add("n", 1); return nil }},
				{&m.guestAdd, func() error { return call(m.m, "count") }},
				{&m.guestCall, func() error { return call(m.m, "version") }},
			} {
				ns, err := timed(batch, v.f)
				if err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
				*v.out = append(*v.out, ns)
			}
		}
		if r < syncWrites {
			s := modes[2]
			for _, v := range []struct {
				out *[]float64
				f   func() error
			}{
				{&s.add, func() error { s.kv.Add("n", 1); return nil }},
				{&s.guestAdd, func() error { return call(s.m, "count") }},
			} {
				ns, err := timed(1, v.f)
				if err != nil {
					return fmt.Errorf("sync: %w", err)
				}
				*v.out = append(*v.out, ns)
			}
		}
	}

	// Four synchronous writers at once.
	s := modes[2]
	before := s.h.StateStatus()
	var mu sync.Mutex // protects lat
	var lat []float64
	var wg sync.WaitGroup
	deadline := time.Now().Add(sync4Time)
	for w := range 4 {
		wg.Go(func() {
			key := fmt.Sprintf("w%d", w)
			var mine []float64
			for time.Now().Before(deadline) {
				start := time.Now()
				s.kv.Add(key, 1)
				mine = append(mine, float64(time.Since(start).Nanoseconds()))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	after := s.h.StateStatus()
	commits := after.Commits - before.Commits
	if commits == 0 || after.LastError != "" {
		return errors.New("sync4: no commit succeeded: " + after.LastError)
	}
	writes := after.Changes - before.Changes

	p50 := func(xs []float64) int64 { return int64(benchutil.Percentile(xs, 50)) }
	res := map[string]any{
		"add_mem_p50_ns":           p50(modes[0].add),
		"add_window_p50_ns":        p50(modes[1].add),
		"add_sync_p50_ns":          p50(modes[2].add),
		"add_sync_p99_ns":          int64(benchutil.Percentile(modes[2].add, 99)),
		"guest_add_mem_p50_ns":     p50(modes[0].guestAdd),
		"guest_add_window_p50_ns":  p50(modes[1].guestAdd),
		"guest_add_sync_p50_ns":    p50(modes[2].guestAdd),
		"guest_call_mem_p50_ns":    p50(modes[0].guestCall),
		"guest_call_window_p50_ns": p50(modes[1].guestCall),
		"commit_window_ms":         float64(host.DefaultCommitWindow) / 1e6,
		"sync4_writes_per_commit":  float64(writes) / float64(commits),
		"sync4_add_p50_ns":         p50(lat),
		"sync4_writes_per_sec":     float64(writes) / sync4Time.Seconds(),
		"window_commits":           modes[1].h.StateStatus().Commits,
	}
	fmt.Printf("KV write p50 (ns): memory %d, window %d, sync %d (p99 %d)\n",
		res["add_mem_p50_ns"], res["add_window_p50_ns"], res["add_sync_p50_ns"], res["add_sync_p99_ns"])
	fmt.Printf("guest call with one kv_add p50 (ns): memory %d, window %d, sync %d; without kv_add: %d\n",
		res["guest_add_mem_p50_ns"], res["guest_add_window_p50_ns"], res["guest_add_sync_p50_ns"], res["guest_call_mem_p50_ns"])
	fmt.Printf("4 synchronous writers: %.1f writes per commit, %.0f writes/s, p50 %d ns\n",
		res["sync4_writes_per_commit"], res["sync4_writes_per_sec"], res["sync4_add_p50_ns"])
	benchutil.Result(res)
	return nil
}
