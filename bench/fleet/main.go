// Command fleet measures fleet mode: a 3-member etcd cluster (embedded, on
// loopback) and 50 instances, each with its own host, state directory,
// store, etcd client and agent, all in this process, every instance
// serving calls all along.
//
//	go run ./bench/fleet [-instances 50] [-runs 6] [-guest c|go]
//
// The module the fleet moves is, by default, the C quote guest
// (internal/testguests/cquote: a few KiB, compiled by wazero in
// milliseconds), built as v1, v2 and a "bad" version whose init traps.
// -guest go moves the Go pricing guests instead (about 2 MB each): then
// each instance compiles each version itself (about 0.7 s of one core
// here), and on this 2-core machine the 50 compiles of a set queue behind
// one another, which measures the machine's cores rather than the fleet
// (on 50 machines they run in parallel): on this loaded 2-core machine the
// first load of the Go guest on 50 instances did not finish within the
// 5-minute budget (12 instances still compiling). The field guest says
// which ran.
// Every instance has its own wazero compilation cache directory, as on
// its own machine: sharing one between the in-process instances would hide
// the compile of every instance but the first.
//
// It reports:
//   - converge_ms_p50, converge_ms_max: from `fleet set` (one wave of every
//     instance) to every agent's ack, over -runs sets alternating v2 and v1
//     (the first set of each is cold: fetch, verify, compile, pre-warm; the
//     later ones find the other version warm and roll back to it);
//     converge_cold_ms is the first v1→v2 alone.
//   - bad_wave_halted, instances_touched_by_bad: a rollout in the default
//     waves (1, 10%, 50%, 100%) of an artifact whose init traps on every
//     instance must halt at its first wave, touching one instance, and
//     every instance must serve the previous version afterwards.
//   - etcd_member_killed_converged: a rollout in the default waves is
//     paused in its first wave, one etcd member is stopped (member_stop_ms:
//     a stop waits up to etcd's request timeout for its clients' streams),
//     and the rollout resumed: it must complete on every instance without
//     the member; killed_rollout_ms is from the resume to the end,
//     instances_moved_after_kill how many instances it moved meanwhile.
//   - failed_calls: calls that failed on any instance, from the first
//     convergence to the end.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module/wasm"
)

const (
	group     = "bench"
	budget    = 5 * time.Minute       // any one wait
	callPause = 10 * time.Millisecond // per instance: 5,000 calls/s in all
)

var request = []byte(`{"item":"apple","qty":12}`)

func main() {
	n := flag.Int("instances", 50, "instances")
	runs := flag.Int("runs", 6, "fleet sets measured for converge_ms")
	guest := flag.String("guest", "c", "the module's language: c (the C quote guest) or go (the Go pricing guests)")
	flag.Parse()
	if *guest != "c" && *guest != "go" {
		log.Fatalf("-guest %q: want c or go", *guest)
	}
	// Every wait below is bounded; this bounds the whole run too, and
	// says where it hung.
	watchdog := time.AfterFunc(budget*4, func() {
		fmt.Fprintf(os.Stderr, "bench/fleet: no result within %v; goroutines:\n", budget*4)
		pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		os.Exit(2)
	})
	defer watchdog.Stop()
	scratch, err := os.MkdirTemp("", "hotswap-bench-fleet-")
	if err != nil {
		log.Fatal(err)
	}
	err = run(scratch, *n, *runs, *guest)
	os.RemoveAll(scratch)
	guestbuild.Cleanup()
	if err != nil {
		log.Fatal(err)
	}
}

type result struct {
	Instances                 int     `json:"instances"`
	Mode                      string  `json:"mode"`
	Guest                     string  `json:"guest"`
	ConvergeMsP50             float64 `json:"converge_ms_p50"`
	ConvergeMsMax             float64 `json:"converge_ms_max"`
	ConvergeColdMs            float64 `json:"converge_cold_ms"`
	Runs                      int     `json:"runs"`
	BadWaveHalted             bool    `json:"bad_wave_halted"`
	InstancesTouchedByBad     int     `json:"instances_touched_by_bad"`
	FirstWaveSize             int     `json:"first_wave_size"`
	FailedCalls               int64   `json:"failed_calls"`
	Calls                     int64   `json:"calls"`
	EtcdMemberKilledConverged bool    `json:"etcd_member_killed_converged"`
	KilledRolloutMs           float64 `json:"killed_rollout_ms"`
	MovedAfterKill            int     `json:"instances_moved_after_kill"`
	MemberStopMs              float64 `json:"member_stop_ms"`
}

type instance struct {
	host   *host.Host
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan error
}

func run(scratch string, n, runs int, lang string) error {
	ctx := context.Background()
	cluster, err := etcdnode.Start(ctx, etcdnode.Options{Dir: filepath.Join(scratch, "etcd"), Members: 3})
	if err != nil {
		return err
	}
	defer cluster.Close()
	newClient := func() (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	}

	// Artifacts, signed by a key every instance trusts.
	priv, err := artifact.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	signer, err := artifact.NewSigner(priv)
	if err != nil {
		return err
	}
	arts := filepath.Join(scratch, "artifacts")
	if err := os.MkdirAll(arts, 0o700); err != nil {
		return err
	}
	specs := map[string]fleet.Spec{}
	for _, g := range []struct{ version, pkg string }{
		{"v1", "./examples/pricing/guests/v1"},
		{"v2", "./examples/pricing/guests/v2"},
		{"bad", "./examples/pricing/guests/broken/trapinit"},
	} {
		payload, err := guestBytes(lang, g.version, g.pkg)
		if err != nil {
			return err
		}
		p := filepath.Join(arts, g.version+".wasm")
		if err := os.WriteFile(p, payload, 0o644); err != nil {
			return err
		}
		if _, err := signer.SignFile(ctx, p, artifact.Manifest{Name: "pricing", Kind: artifact.KindWasm, Version: g.version}); err != nil {
			return err
		}
		specs[g.version] = fleet.Spec{Modules: map[string]fleet.ModuleSpec{"pricing": {
			Version: g.version, Digest: artifact.DigestOf(payload).String(), URL: "file://" + p}}}
	}

	// Instances.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	newBackend := func(cache string) (*wasm.Backend, error) {
		return wasm.New(wasm.Options{CacheDir: cache, Default: wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV},
			RequiredHandlers: []string{"quote"}, CallTimeout: 30 * time.Second,
			// One pre-warmed instance per version: 50 instances share
			// this machine's 2 cores.
			MinInstances: 1}})
	}
	var ins []*instance
	defer func() {
		for _, in := range ins {
			in.cancel()
		}
		for i, in := range ins {
			select {
			case <-in.done:
			case <-time.After(30 * time.Second):
				log.Printf("agent i%02d: Run did not return within 30 s of its cancel", i)
			}
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			in.host.Close(cctx)
			cancel()
			in.cli.Close()
		}
	}()
	for i := range n {
		state := filepath.Join(scratch, fmt.Sprintf("i%02d", i))
		if _, err := artifact.WritePublicKey(filepath.Join(state, "trust"), signer.PublicKey()); err != nil {
			return err
		}
		b, err := newBackend(filepath.Join(state, "wazero-cache"))
		if err != nil {
			return err
		}
		// The modules' host-kept state in memory: 50 state files each
		// committing every 20 ms would measure this machine's disk.
		h, err := host.New(host.Options{Backend: b, StateDir: state, Service: "bench", Logger: logger, Durability: host.DurabilityMemory})
		if err != nil {
			return err
		}
		cli, err := newClient()
		if err != nil {
			h.Close(ctx)
			return err
		}
		a, err := fleet.NewAgent(fleet.AgentOptions{Client: cli, Host: h, Group: group, Instance: fmt.Sprintf("i%02d", i),
			LeaseTTL: 10 * time.Second, Logger: logger})
		if err != nil {
			return err
		}
		actx, cancel := context.WithCancel(ctx)
		in := &instance{host: h, cli: cli, cancel: cancel, done: make(chan error, 1)}
		go func() { in.done <- a.Run(actx) }()
		ins = append(ins, in)
	}

	// Two controllers; one leads.
	var ctlWG sync.WaitGroup
	cctx, stopControllers := context.WithCancel(ctx)
	defer func() { stopControllers(); ctlWG.Wait() }()
	for _, name := range []string{"ctl-a", "ctl-b"} {
		cli, err := newClient()
		if err != nil {
			return err
		}
		defer cli.Close()
		c, err := fleet.NewController(fleet.ControllerOptions{Client: cli, Group: group, Name: name, Tick: 100 * time.Millisecond, Logger: logger})
		if err != nil {
			return err
		}
		ctlWG.Go(func() { c.Run(cctx) })
	}
	opCli, err := newClient()
	if err != nil {
		return err
	}
	defer opCli.Close()
	g, err := fleet.OpenGroup(opCli, "", group)
	if err != nil {
		return err
	}
	if _, err := waitStatus(g, "every instance registered", func(st fleet.Status) bool { return len(st.Applied) == n }); err != nil {
		return err
	}
	res := result{Instances: n, Guest: lang, Runs: runs,
		Mode: "in-process: one host, store, compilation cache, etcd client and agent per instance"}

	set := func(version string, waves []string) (int64, time.Time, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		t0 := time.Now()
		rev, err := g.Set(rctx, fleet.Desired{Spec: specs[version], Waves: waves, Writer: "bench"})
		return rev, t0, err
	}
	converge := func(version string, waves []string) (time.Duration, error) {
		rev, t0, err := set(version, waves)
		if err != nil {
			return 0, err
		}
		st, err := waitStatus(g, "converged on "+version, func(st fleet.Status) bool {
			halted := st.Rollout != nil && st.Rollout.Revision == rev && (st.Rollout.Phase == fleet.Halted || st.Rollout.Phase == fleet.Aborted)
			return halted || len(st.Applied) == n && st.Converged(specs[version])
		})
		if err != nil {
			return 0, err
		}
		took := time.Since(t0)
		if st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase != fleet.Done && st.Rollout.Phase != fleet.Running {
			return 0, fmt.Errorf("set %s: rollout %s: %s", version, st.Rollout.Phase, st.Rollout.Reason)
		}
		// Every instance acked: that is convergence. The controller makes
		// the spec stable a tick later; the next set must come after that,
		// or it replaces an unfinished rollout, and its revert goes back
		// to the stable spec before this one (a set once stalled here,
		// waiting for a revert to this version).
		if _, err := waitStatus(g, version+" stable", func(st fleet.Status) bool {
			return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase.Ended()
		}); err != nil {
			return 0, err
		}
		return took, nil
	}
	// The first load (not measured) in waves of 10%: 50 first
	// instantiations at once on 2 cores ran past the guest's init deadline.
	if _, err := converge("v1", []string{"10%", "25%", "50%", "75%"}); err != nil {
		return err
	}

	// Calls on every instance from now on.
	var calls, failed atomic.Int64
	stopCalls := make(chan struct{})
	var callWG sync.WaitGroup
	for _, in := range ins {
		m := in.host.Module("pricing")
		callWG.Go(func() {
			for {
				select {
				case <-stopCalls:
					return
				case <-time.After(callPause):
				}
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := m.CallKey(cctx, fmt.Sprint(calls.Load()), "quote", request)
				cancel()
				calls.Add(1)
				if err != nil {
					if failed.Add(1) <= 5 {
						log.Printf("call failed: %v", err)
					}
				}
			}
		})
	}
	defer func() {
		select {
		case <-stopCalls:
		default:
			close(stopCalls)
		}
		callWG.Wait()
	}()

	var times []float64
	current := "v1"
	for i := range runs {
		next := map[string]string{"v1": "v2", "v2": "v1"}[current]
		d, err := converge(next, nil)
		if err != nil {
			return err
		}
		ms := float64(d.Microseconds()) / 1000
		times = append(times, ms)
		if i == 0 {
			res.ConvergeColdMs = ms
		}
		log.Printf("set %s: converged in %.1f ms", next, ms)
		current = next
	}
	res.ConvergeMsP50 = benchutil.Percentile(times, 50)
	res.ConvergeMsMax = benchutil.Percentile(times, 100)

	// A bad artifact, in waves.
	rev, _, err := set("bad", fleet.DefaultWaves())
	if err != nil {
		return err
	}
	st, err := waitStatus(g, "bad rollout ended", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase.Ended()
	})
	if err != nil {
		return err
	}
	res.FirstWaveSize = st.Rollout.Sizes[0]
	res.InstancesTouchedByBad = len(st.Rollout.Touched())
	if _, err := waitStatus(g, "reverted to "+current, func(st fleet.Status) bool {
		return len(st.Applied) == n && st.Converged(specs[current]) && len(st.Targets) == 0
	}); err != nil {
		return err
	}
	res.BadWaveHalted = st.Rollout.Phase == fleet.Halted && st.Rollout.Wave == 0 && serveAll(ins, specs[current])
	log.Printf("bad rollout: %s at wave %d: %s", st.Rollout.Phase, st.Rollout.Wave+1, st.Rollout.Reason)

	// A member killed during a rollout. Stopping a member waits etcd's
	// request timeout (10 s here) for the streams of its clients, serving
	// them meanwhile, while a rollout takes a few seconds: so the rollout
	// is paused in its first wave, the member stopped, and the rollout
	// resumed once the member is gone; its later waves run without it.
	next := map[string]string{"v1": "v2", "v2": "v1"}[current]
	rev, _, err = set(next, fleet.DefaultWaves())
	if err != nil {
		return err
	}
	if _, err := waitStatus(g, "rollout running", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev
	}); err != nil {
		return err
	}
	command := func(c fleet.Command) error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := g.Command(cctx, c, "bench")
		return err
	}
	if err := command(fleet.Pause); err != nil {
		return fmt.Errorf("pause rollout %d: %w", rev, err)
	}
	st, err = waitStatus(g, "rollout paused", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase == fleet.Paused
	})
	if err != nil {
		return err
	}
	movedBefore := st.Rollout.Sizes[st.Rollout.Wave]
	t0 := time.Now()
	cluster.Stop(0)
	res.MemberStopMs = float64(time.Since(t0).Microseconds()) / 1000
	log.Printf("etcd member m0 stopped during rollout %d (paused in wave %d, %d of %d instances moved)", rev, st.Rollout.Wave+1, movedBefore, n)
	t0 = time.Now()
	if err := command(fleet.Resume); err != nil {
		return fmt.Errorf("resume rollout %d with a member down: %w", rev, err)
	}
	st, err = waitStatus(g, "rollout with a member killed ended", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase.Ended() && st.Converged(specs[next])
	})
	if err != nil {
		log.Printf("rollout with a member killed: %v", err)
	} else {
		res.EtcdMemberKilledConverged = st.Rollout.Phase == fleet.Done && len(st.Applied) == n && serveAll(ins, specs[next])
		res.KilledRolloutMs = float64(time.Since(t0).Microseconds()) / 1000
		res.MovedAfterKill = n - movedBefore
	}

	close(stopCalls)
	callWG.Wait()
	res.Calls, res.FailedCalls = calls.Load(), failed.Load()
	benchutil.Result(res)
	return nil
}

// serveAll reports whether every instance's active pricing version is the
// one of spec.
func serveAll(ins []*instance, spec fleet.Spec) bool {
	d, _ := artifact.ParseDigest(spec.Modules["pricing"].Digest[len("sha256:"):])
	for _, in := range ins {
		ok := false
		for _, st := range in.host.Status() {
			ok = ok || (st.Name == "pricing" && st.Active != nil && st.Active.Digest == d.Hex())
		}
		if !ok {
			return false
		}
	}
	return true
}

// waitStatus polls the group every 5 ms until ok, for at most budget.
func waitStatus(g *fleet.Group, what string, ok func(fleet.Status) bool) (fleet.Status, error) {
	deadline := time.Now().Add(budget)
	var last fleet.Status
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := g.Status(ctx)
		cancel()
		if err == nil {
			if ok(st) {
				return st, nil
			}
			last = st
		}
		lastErr = err
		time.Sleep(5 * time.Millisecond)
	}
	return last, fmt.Errorf("%s: not within %v (last error %v); last status:\n%s", what, budget, lastErr, last)
}

// guestBytes returns version of the module in lang: the C quote guest
// built as version, or the Go pricing guest pkg.
func guestBytes(lang, version, pkg string) ([]byte, error) {
	if lang == "go" {
		return benchutil.Guest(pkg, "")
	}
	flags := []string{fmt.Sprintf("-DVERSION=%q", version)}
	if version == "bad" {
		flags = append(flags, "-DTRAPINIT")
	}
	return guestbuild.CBytes("internal/testguests/cquote/quote.c", flags...)
}
