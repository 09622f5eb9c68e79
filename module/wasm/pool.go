package wasm

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// pool keeps the instances of one version. An instance runs one call at a
// time, so a call takes one from the pool and gives it back when done. When
// none is idle, the call waits for the first one to come back or be created;
// instances are created in the background, never on a call's own stack.
type pool struct {
	host *moduleHost
	cm   *compiledModule
	cfg  *ModuleConfig
	bg   context.Context // what instances are created and yield under

	mu       sync.Mutex // protects every field below
	returned sync.Cond  // signalled, once closed, when a call gives its instance back; on mu
	held     int        // instances held by calls (each with instance.held set)
	idle     []*instance
	all      map[*instance]struct{} // live instances: busy, idle or yielding
	creating int                    // instances being created
	yielding int                    // instances in a maintenance yield, back soon
	waiters  []chan *instance
	closed   bool
	lastErr  error // why the last background creation failed
	// Counters for Stats.
	calls, failures, discarded uint64

	wg sync.WaitGroup // background creations and maintenance yields
}

func newPool(h *moduleHost, cm *compiledModule, bg context.Context) *pool {
	p := &pool{host: h, cm: cm, cfg: &h.cfg, bg: bg, all: make(map[*instance]struct{})}
	p.returned.L = &p.mu
	return p
}

// get returns an idle instance, waiting for one if needed; ctx bounds the
// wait.
func (p *pool) get(ctx context.Context) (*instance, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		inst := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.heldLocked(inst)
		p.mu.Unlock()
		return inst, nil
	}
	if p.closed {
		p.mu.Unlock()
		return nil, module.Fail(module.ErrDrained, "version closed")
	}
	ch := make(chan *instance, 1)
	p.waiters = append(p.waiters, ch)
	// Create an instance only for waiters that no instance on its way back
	// from a yield or a creation will serve.
	if len(p.all)+p.creating < p.cfg.MaxInstances && p.creating+p.yielding < len(p.waiters) {
		p.startCreateLocked()
	}
	p.mu.Unlock()

	select {
	case inst := <-ch:
		if inst == nil {
			return nil, p.unavailable()
		}
		return inst, nil
	case <-ctx.Done():
		p.mu.Lock()
		i := slices.Index(p.waiters, ch)
		if i >= 0 {
			p.waiters = slices.Delete(p.waiters, i, i+1)
		}
		p.mu.Unlock()
		if i < 0 { // an instance was handed over as ctx ended: give it back
			if inst := <-ch; inst != nil {
				p.release(inst)
			}
		}
		return nil, module.Fail(ctx.Err(), "waiting for an idle instance")
	}
}

func (p *pool) unavailable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return module.Fail(module.ErrDrained, "version closed")
	}
	return module.Fail(module.ErrTrapped, fmt.Sprintf("no instance could be created: %v", p.lastErr))
}

// done takes back inst after a call. dead discards it; otherwise it goes
// back to the pool, through a maintenance yield when one is due.
func (p *pool) done(inst *instance, dead, failed bool) {
	var size uint32
	if !dead {
		size = inst.mem.Size()
		inst.sinceYield++
		if p.cm.growsTables {
			inst.tableEntries.Store(p.cm.tables + uint64(uint32(inst.grown.Get())))
		}
	}
	p.mu.Lock()
	p.returnedLocked(inst)
	p.calls++
	if failed {
		p.failures++
	}
	switch {
	case dead:
		p.discardLocked(inst)
	case p.closed:
		p.dropLocked(inst)
	case size > inst.memMark || inst.sinceYield >= max(inst.yieldEvery, p.cfg.MaintainEvery):
		inst.memBytes.Store(uint64(size))
		p.yielding++
		p.wg.Add(1)
		go p.maintain(inst)
	default:
		p.putLocked(inst)
	}
	p.mu.Unlock()
}

// release gives back an instance that served no call.
func (p *pool) release(inst *instance) {
	p.mu.Lock()
	p.returnedLocked(inst)
	if p.closed {
		p.dropLocked(inst)
	} else {
		p.putLocked(inst)
	}
	p.mu.Unlock()
}

func (p *pool) maintain(inst *instance) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.bg, p.cfg.InitTimeout)
	err := inst.maintain(ctx, p.cfg.MaintainEvery)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.yielding--
	switch {
	case err != nil:
		p.host.log.Warn("garbage-collection yield failed; instance discarded", logkey.Err, err)
		p.discardLocked(inst)
	case p.closed:
		p.dropLocked(inst)
	default:
		p.putLocked(inst)
	}
}

func (p *pool) putLocked(inst *instance) {
	if len(p.waiters) > 0 {
		ch := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.heldLocked(inst) // handed to a call
		ch <- inst
		return
	}
	p.idle = append(p.idle, inst)
}

// heldLocked notes that a call holds inst.
func (p *pool) heldLocked(inst *instance) {
	inst.held = true
	p.held++
}

// returnedLocked notes that a call gave inst back.
func (p *pool) returnedLocked(inst *instance) {
	inst.held = false
	p.held--
	if p.closed {
		p.returned.Broadcast()
	}
}

// discardLocked drops a broken instance and replaces it if the pool fell
// below its minimum or calls are waiting.
func (p *pool) discardLocked(inst *instance) {
	p.discarded++
	p.dropLocked(inst)
	if !p.closed && len(p.all)+p.creating < max(p.cfg.MinInstances, len(p.waiters)) {
		p.startCreateLocked()
	}
}

func (p *pool) dropLocked(inst *instance) {
	delete(p.all, inst)
	inst.close()
}

func (p *pool) startCreateLocked() {
	p.creating++
	p.wg.Add(1)
	go p.create()
}

func (p *pool) create() {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.bg, p.cfg.InitTimeout)
	inst, err := newInstance(ctx, p.host, p.cm)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.creating--
	if err != nil {
		p.lastErr = err
		p.host.log.Error("create instance", logkey.Err, err)
		// Calls waiting with nobody left to serve them fail now rather
		// than wait for their deadline.
		if len(p.all) == 0 && p.creating == 0 {
			for _, ch := range p.waiters {
				ch <- nil
			}
			p.waiters = nil
		}
		return
	}
	p.addLocked(inst)
}

func (p *pool) addLocked(inst *instance) {
	if p.closed {
		inst.close()
		return
	}
	p.all[inst] = struct{}{}
	p.putLocked(inst)
}

// add puts a ready instance into the pool.
func (p *pool) add(inst *instance) {
	p.mu.Lock()
	p.addLocked(inst)
	p.mu.Unlock()
}

// warm creates n instances concurrently, failing if any fails.
func (p *pool) warm(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	errs := make(chan error, n)
	sem := make(chan struct{}, max(1, min(n, procs())))
	for range n {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			ictx, cancel := context.WithTimeout(ctx, p.cfg.InitTimeout)
			inst, err := newInstance(ictx, p.host, p.cm)
			cancel()
			if err == nil {
				p.add(inst)
			}
			errs <- err
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// forEachBusy calls f for every instance currently running a call, under
// the pool's lock.
func (p *pool) forEachBusy(f func(*instance)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for inst := range p.all {
		if inst.held && inst.started.Load() > 0 {
			f(inst)
		}
	}
}

// close stops the pool. Idle instances close now; busy ones close when
// their call returns. With force set, calls still running are halted and
// fail with ErrDrained, and close waits for them to return (a halted call
// traps within guard.FuelPerYield units of work, or as its host function
// returns), so that no instance of the pool is running when its runtime
// closes. It returns once no background work is left.
func (p *pool) close(force bool) {
	p.mu.Lock()
	p.closed = true
	for _, ch := range p.waiters {
		ch <- nil
	}
	p.waiters = nil
	for _, inst := range p.idle {
		p.dropLocked(inst)
	}
	p.idle = nil
	if force {
		// Held instances whose call has not started yet are halted too:
		// their call will stop at once.
		for inst := range p.all {
			if inst.held {
				inst.halt(errDrained)
			}
		}
		for p.held > 0 {
			p.returned.Wait()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

type poolStats struct {
	instances, idle       int
	memory, tables        uint64
	calls, failures, drop uint64
}

func (p *pool) stats() poolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := poolStats{instances: len(p.all), idle: len(p.idle), calls: p.calls, failures: p.failures, drop: p.discarded}
	for inst := range p.all {
		s.memory += inst.memBytes.Load()
		s.tables += inst.tableEntries.Load()
	}
	return s
}
