// Command swapmem measures whether swapped-out versions really unload: the
// process's resident memory and the guests' memory before and after 1,000
// swaps of the echo guest between two builds of it (v1 and v2).
//
//	go run ./bench/swapmem [-swaps 1000] [-calls 10] [-untrusted]
//
// The baseline is taken once the module has the shape it keeps during the
// swaps: v1 and v2 loaded (v2 active, v1 kept warm as the previous version),
// some calls made. Then each swap loads the other version and makes -calls
// calls, checking every answer (echo content, and the version handler answers
// the version just loaded). After the last swap it waits (bounded by
// -drain-wait) until no version is draining, so every retired version has
// been closed, and measures again.
//
// RSS is VmRSS from /proc/self/status after runtime.GC and
// debug.FreeOSMemory, twice with a pause between (wazero unmaps compiled
// code in finalizers, which run after a collection). Guest memory is the sum
// of Status().MemoryBytes over the active, previous and draining versions.
// go_heap_live_*_mb is the Go heap's live bytes (MemStats.HeapAlloc right
// after the collection): it separates retained objects from heap
// fragmentation and from memory outside the Go heap (wazero's compiled code
// is mmap'd).
//
// The last line is
//
//	RESULT {"swaps":…,"rss_before_mb":…,"rss_after_mb":…,"rss_growth_mb":…,"guest_mem_before_mb":…,"guest_mem_after_mb":…,…}
//
// with sizes in MiB, rounded down to 0.01. rss_after_2_swaps_mb is measured
// once both versions have been loaded a second time, and
// rss_growth_from_swap_2_mb is the growth from there to the end: wazero's
// engine keeps, for as long as a version's compiled code is in memory, the
// decoded module of the first compilation of it, while every later load of
// the same bytes decodes its own copy, so the first reload of each version
// adds one decoded module per runtime (about 5 MiB for this guest; trusted
// modules have two runtimes). That step is counted in rss_growth_mb; growth
// after it would be a leak per swap.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const guestPkg = "./internal/testguests/echo"

type config struct {
	swaps, calls int
	untrusted    bool
	drainWait    time.Duration
	heapProfile  string
	cacheDir     string
	progress     int
}

func main() {
	var c config
	flag.IntVar(&c.swaps, "swaps", 1000, "swaps between v1 and v2")
	flag.IntVar(&c.calls, "calls", 10, "calls after each swap")
	flag.BoolVar(&c.untrusted, "untrusted", false, "run the module untrusted (runaway protection on)")
	flag.DurationVar(&c.drainWait, "drain-wait", time.Minute, "longest wait for retired versions to close")
	flag.StringVar(&c.heapProfile, "heapprofile", "", "write heap profiles to this path with suffixes .before and .after")
	flag.IntVar(&c.progress, "progress", 0, "every this many swaps, print RSS and the live Go heap to stderr (0: never)")
	flag.StringVar(&c.cacheDir, "cache", os.TempDir()+"/hotswap-bench-wazero-cache", "wazero compilation cache directory")
	flag.Parse()
	if err := run(c); err != nil {
		log.Fatal("swapmem: ", err)
	}
}

func run(c config) error {
	ctx := context.Background()
	versions := []string{"v1", "v2"}
	artifacts := map[string][]byte{}
	for _, v := range versions {
		b, err := benchutil.Guest(guestPkg, "-X main.version="+v)
		if err != nil {
			return err
		}
		artifacts[v] = b
	}
	mcfg := wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}}
	if !c.untrusted { // every module is stoppable now; "trusted" only drops the deadline
		mcfg.CallTimeout = wasm.NoCallTimeout
	}
	b, err := wasm.New(wasm.Options{CacheDir: c.cacheDir, Default: mcfg})
	if err != nil {
		return err
	}
	reg, err := module.New(module.Options{Backend: b})
	if err != nil {
		return err
	}
	defer reg.Close(ctx)
	mod := reg.Module("echo")

	in := []byte("hotswap swapmem echo input")
	var dst []byte
	failed := 0
	call := func(want string) {
		for i := range c.calls {
			var (
				out []byte
				err error
			)
			if i == 0 {
				out, err = mod.AppendCall(ctx, dst[:0], "version", nil)
				if err == nil && string(out) != want {
					err = fmt.Errorf("version answered %q, want %q", out, want)
				}
			} else {
				out, err = mod.AppendCall(ctx, dst[:0], "echo", in)
				if err == nil && !bytes.Equal(out, in) {
					err = fmt.Errorf("echo answered %q", out)
				}
			}
			dst = out
			if err != nil {
				failed++
				if failed <= 5 {
					fmt.Fprintln(os.Stderr, "failed:", err)
				}
			}
		}
	}
	load := func(v string) error {
		if _, err := reg.Load(ctx, "echo", module.Source{Version: v, Artifact: artifacts[v]}); err != nil {
			return err
		}
		call(v)
		return nil
	}

	if err := load("v1"); err != nil {
		return err
	}
	rssFirst, err := rss()
	if err != nil {
		return err
	}
	if err := load("v2"); err != nil {
		return err
	}
	if err := waitDrained(mod, c.drainWait); err != nil {
		return err
	}
	rssBefore, err := rss()
	if err != nil {
		return err
	}
	heapBefore := liveHeap()
	guestBefore := guestMem(mod.Status())
	gBefore := runtime.NumGoroutine()
	writeHeap(c.heapProfile, ".before")

	start := time.Now()
	done := 0
	var rss2 uint64
	for i := range c.swaps {
		if err := load(versions[i%2]); err != nil {
			return fmt.Errorf("swap %d: %w", i, err)
		}
		done++
		if done == 2 {
			// Both versions have now been loaded a second time; what
			// wazero keeps per version from then on is in place (see
			// rss_after_2_swaps_mb in the doc comment).
			if err := waitDrained(mod, c.drainWait); err != nil {
				return err
			}
			if rss2, err = rss(); err != nil {
				return err
			}
		}
		if c.progress > 0 && done%c.progress == 0 {
			r, err := rss()
			if err != nil {
				return err
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(os.Stderr, "after %d swaps: rss %.2f MiB, live heap %.2f MiB, heap in use %.2f MiB, goroutines %d\n",
				done, float64(r)/(1<<20), float64(ms.HeapAlloc)/(1<<20), float64(ms.HeapInuse)/(1<<20), runtime.NumGoroutine())
		}
	}
	swapTime := time.Since(start)
	waitStart := time.Now()
	if err := waitDrained(mod, c.drainWait); err != nil {
		return err
	}
	drainTime := time.Since(waitStart)
	rssAfter, err := rss()
	if err != nil {
		return err
	}
	heapAfter := liveHeap()
	st := mod.Status()
	guestAfter := guestMem(st)
	gAfter := runtime.NumGoroutine()
	writeHeap(c.heapProfile, ".after")

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mib := func(n uint64) float64 { return float64(n*100/(1<<20)) / 100 }
	growth := int64(rssAfter) - int64(rssBefore)
	growthMiB := math.Floor(float64(growth)*100/(1<<20)) / 100
	mode := "trusted"
	if c.untrusted {
		mode = "untrusted"
	}
	fmt.Printf("%s: %d swaps in %v (drained %v later), rss %.2f → %.2f MiB, guest %.2f → %.2f MiB, goroutines %d → %d\n",
		mode, done, swapTime.Round(time.Millisecond), drainTime.Round(time.Millisecond),
		mib(rssBefore), mib(rssAfter), mib(guestBefore), mib(guestAfter), gBefore, gAfter)
	res := map[string]any{
		"mode":                   mode,
		"swaps":                  done,
		"failed":                 failed,
		"rss_first_load_mb":      mib(rssFirst),
		"rss_before_mb":          mib(rssBefore),
		"rss_after_mb":           mib(rssAfter),
		"rss_growth_mb":          growthMiB,
		"guest_mem_before_mb":    mib(guestBefore),
		"guest_mem_after_mb":     mib(guestAfter),
		"go_heap_live_before_mb": mib(heapBefore),
		"go_heap_live_after_mb":  mib(heapAfter),
		"go_heap_inuse_mb":       mib(ms.HeapInuse),
		"go_sys_mb":              mib(ms.Sys),
		"goroutines_before":      gBefore,
		"goroutines_after":       gAfter,
		"instances_after":        instances(st),
		"swap_s":                 float64(swapTime.Milliseconds()) / 1e3,
		"calls_per_swap":         c.calls,
	}
	if done >= 2 {
		res["rss_after_2_swaps_mb"] = mib(rss2)
		res["rss_growth_from_swap_2_mb"] = math.Floor(float64(int64(rssAfter)-int64(rss2))*100/(1<<20)) / 100
	}
	benchutil.Result(res)
	runtime.KeepAlive(artifacts) // live in both measurements, so they count alike
	return nil
}

// waitDrained waits until no version of mod is draining.
func waitDrained(mod *module.Module, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		st := mod.Status()
		if len(st.Draining) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d versions still draining after %v", len(st.Draining), limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func guestMem(st module.Status) uint64 {
	var n uint64
	for _, v := range st.Versions() {
		n += v.MemoryBytes
	}
	return n
}

func instances(st module.Status) int {
	n := 0
	for _, v := range st.Versions() {
		n += v.Instances
	}
	return n
}

// rss collects garbage, returns freed memory to the OS and reads VmRSS.
func rss() (uint64, error) {
	for range 2 {
		runtime.GC()
		debug.FreeOSMemory()
		time.Sleep(100 * time.Millisecond) // let finalizers (wazero's munmap) run
	}
	return benchutil.VmRSS()
}

// liveHeap returns the bytes of live Go heap objects; rss has just collected.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func writeHeap(path, suffix string) {
	if path == "" {
		return
	}
	f, err := os.Create(path + suffix)
	if err != nil {
		log.Print(err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		log.Print(err)
	}
}
