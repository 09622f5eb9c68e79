// Command pluginmem measures what each Go plugin version costs a process
// for good: plugins never unload (golang/go#20461), so every version loaded
// stays mapped after it retires.
//
//	go run ./bench/pluginmem [-versions 50] [-jobs 2]
//
// It builds the echo guest (internal/testguests/echo) -versions times as
// distinct plugins, then loads them one after the other as versions of one
// module of one registry, calling each 1,000 times, so the registry holds
// two versions and retires the rest, as in service. After each load it
// collects garbage, returns free memory to the system and reads the
// process's resident set (VmRSS).
//
// rss_per_version_mb is (RSS after the last load - RSS before the first) /
// versions; mapped_per_version_mb is the plugins' file mappings per version
// as the backend reports them (what `hotswap status` shows), of which only
// the pages touched are resident; retained_versions is how many plugins the
// backend still holds at the end (all of them) and in_use how many a
// version still runs.
//
// The last line is
//
//	RESULT {"versions":50,"rss_per_version_mb":…,"retained_versions":…,…}
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/bench/internal/pluginguest"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/goplugin"
)

func main() {
	versions := flag.Int("versions", 50, "plugin versions to build and load")
	jobs := flag.Int("jobs", 2, "builds at once")
	flag.Parse()
	if *versions < 2 || *jobs < 1 {
		log.Fatal("pluginmem: need -versions ≥ 2 and -jobs ≥ 1")
	}
	dir, err := os.MkdirTemp("", "pluginmem-")
	if err != nil {
		log.Fatal(err)
	}
	err = run(dir, *versions, *jobs)
	os.RemoveAll(dir)
	if err != nil {
		log.Fatal("pluginmem: ", err)
	}
}

func run(dir string, n, jobs int) error {
	ctx := context.Background()
	start := time.Now()
	sos, err := buildAll(dir, n, jobs)
	if err != nil {
		return err
	}
	built := time.Since(start)
	var size int64
	for _, so := range sos {
		size += int64(len(so))
	}
	fmt.Fprintf(os.Stderr, "built %d plugins in %v, %.1f MiB each\n", n, built.Round(time.Second), float64(size)/float64(n)/(1<<20))

	b, err := goplugin.New(goplugin.Options{Dir: filepath.Join(dir, "plugins"), MaxRetained: n})
	if err != nil {
		return err
	}
	reg, err := module.New(module.Options{Backend: b, DrainTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer reg.Close(ctx)
	m := reg.Module("echo")
	in := make([]byte, 1024)
	dst := make([]byte, 0, 2048)

	before, err := settledRSS()
	if err != nil {
		return err
	}
	var loadTimes []time.Duration
	rss := make([]int64, n)
	for i, so := range sos {
		t0 := time.Now()
		if _, err := reg.Load(ctx, "echo", module.Source{Version: fmt.Sprintf("v%d", i+1), Artifact: so}); err != nil {
			return fmt.Errorf("load v%d: %w", i+1, err)
		}
		loadTimes = append(loadTimes, time.Since(t0))
		for range 1000 {
			if dst, err = m.AppendCall(ctx, dst[:0], "echo", in); err != nil {
				return fmt.Errorf("call v%d: %w", i+1, err)
			}
		}
		if rss[i], err = settledRSS(); err != nil {
			return err
		}
	}
	// Let the retired versions finish draining before counting who runs what.
	for deadline := time.Now().Add(10 * time.Second); len(m.Status().Draining) > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	ret := b.Retained()
	inUse := 0
	for _, v := range ret.Versions {
		if v.InUse {
			inUse++
		}
	}
	mb := func(b int64) float64 { return float64(b) / (1 << 20) }
	perVersion := mb(rss[n-1]-before) / float64(n)
	fmt.Printf("%d versions: RSS %.1f MiB before, %.1f MiB after the first, %.1f MiB after the last; %.2f MiB per version; "+
		"%d retained (%d in use), %.2f MiB mapped per version\n",
		n, mb(before), mb(rss[0]), mb(rss[n-1]), perVersion, len(ret.Versions), inUse, mb(int64(ret.MappedBytes))/float64(n))
	benchutil.Result(map[string]any{
		"versions":              n,
		"rss_per_version_mb":    round2(perVersion),
		"retained_versions":     len(ret.Versions),
		"in_use":                inUse,
		"mapped_per_version_mb": round2(mb(int64(ret.MappedBytes)) / float64(n)),
		"rss_before_mb":         round2(mb(before)),
		"rss_after_mb":          round2(mb(rss[n-1])),
		"plugin_file_mb":        round2(mb(size) / float64(n)),
		"load_ms_p50":           float64(benchutil.Percentile(loadTimes, 50).Microseconds()) / 1e3,
	})
	return nil
}

// buildAll builds n distinct plugins of the echo guest, jobs at a time.
func buildAll(dir string, n, jobs int) ([][]byte, error) {
	sos := make([][]byte, n)
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range jobs {
		wg.Go(func() {
			for i := range next {
				sos[i], errs[i] = pluginguest.Build("./internal/testguests/echo", map[string]string{"version": fmt.Sprintf("v%d", i+1)}, dir)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("build v%d: %w", i+1, err)
		}
	}
	return sos, nil
}

// settledRSS collects garbage, returns free memory to the system and reads
// the process's resident set in bytes.
func settledRSS() (int64, error) {
	debug.FreeOSMemory()
	rss, err := benchutil.VmRSS()
	return int64(rss), err
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }
