package main

import (
	"fmt"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"time"
)

// runMode drives s with mode's load during cfg.upgrades upgrades.
func runMode(cfg config, mode string, s *server) (any, upgradeCounts, error) {
	var (
		finish func(time.Duration) (any, error)
		errs   *tally
	)
	switch mode {
	case "keepalive", "close":
		conns := cfg.conns
		if mode == "close" {
			conns = cfg.closeConns
		}
		fmt.Fprintf(os.Stderr, "mode %s: %d workers, %d upgrades\n", mode, conns, cfg.upgrades)
		l := startLoad(s.addr, mode == "keepalive", conns, cfg.maxRequests)
		finish = func(d time.Duration) (any, error) { return l.stop(d) }
		errs = &l.tally
	case "grpc":
		fmt.Fprintf(os.Stderr, "mode grpc: %d unary callers, %d streams, %d upgrades\n", cfg.grpcCallers, cfg.grpcStreams, cfg.upgrades)
		l, err := startGRPCLoad(s.addr, cfg.grpcCallers, cfg.grpcStreams, cfg.maxRequests)
		if err != nil {
			return nil, upgradeCounts{}, err
		}
		finish = func(d time.Duration) (any, error) { return l.stop(d) }
		errs = &l.tally
	case "h2":
		fmt.Fprintf(os.Stderr, "mode h2: %d clients, %d upgrades\n", cfg.h2Conns, cfg.upgrades)
		l := startH2Load(s.addr, s.roots, cfg.h2Conns, cfg.maxRequests)
		finish = func(d time.Duration) (any, error) { return l.stop(d) }
		errs = &l.tally
	}
	time.Sleep(300 * time.Millisecond) // let the load settle
	ok, failed := s.upgradeN(cfg, cfg.upgrades, nil)
	time.Sleep(300 * time.Millisecond) // requests after the last hand-over
	res, err := finish(30 * time.Second)
	if err != nil {
		return nil, upgradeCounts{}, err
	}
	counts := upgradeCounts{Upgrades: ok, UpgradesFailed: failed}
	fmt.Fprintf(os.Stderr, "mode %s: %+v, %d upgrades committed, %d failed\n", mode, res, ok, failed)
	errs.printErrors()
	return withCounts(res, counts), counts, nil
}

// withCounts adds the mode's upgrade counts to the load's result, except
// for the HTTP/1.1 modes, whose result keeps its historical shape.
func withCounts(res any, c upgradeCounts) any {
	switch r := res.(type) {
	case grpcResult:
		r.upgradeCounts = c
		return r
	case h2Result:
		r.upgradeCounts = c
		return r
	}
	return res
}

// stopWorkers closes quit and waits until the workers in wg returned, at
// most timeout.
func stopWorkers(quit chan struct{}, wg *sync.WaitGroup, timeout time.Duration) error {
	close(quit)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("load did not stop within %v", timeout)
	}
}

// tally counts failures by kind. The zero value is ready.
type tally struct {
	failed atomic.Int64
	mu     sync.Mutex // protects errs
	errs   map[string]int
}

var addrPort = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+`)

// fail counts a failure of stage; errors that differ only by address are
// counted together.
func (t *tally) fail(stage string, err error) {
	t.failed.Add(1)
	t.note(stage, err)
}

// note records err without counting it as a failure.
func (t *tally) note(stage string, err error) {
	key := stage + ": " + addrPort.ReplaceAllString(err.Error(), "ADDR")
	t.mu.Lock()
	if t.errs == nil {
		t.errs = map[string]int{}
	}
	t.errs[key]++
	t.mu.Unlock()
}

func (t *tally) printErrors() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, n := range t.errs {
		fmt.Fprintf(os.Stderr, "  %6d × %s\n", n, k)
	}
}
