package wasm

import (
	"sync/atomic"
	"time"
)

// watchdogTicks is how many ticks make up a call timeout: a call is stopped
// between CallTimeout and 9/8 of it after it started.
const watchdogTicks = 8

// watchdog enforces CallTimeout without a context or a timer per call: a
// call records the current tick when it starts, and the watchdog halts
// every instance whose call is older than the timeout: it sets the
// instance's stop flag, and the call traps within guard.FuelPerYield units
// of work (or as its host function returns) and fails with ErrTimeout.
type watchdog struct {
	tick atomic.Int64 // starts at 1: a zero start means idle
	stop chan struct{}
	done chan struct{}
}

func startWatchdog(p *pool, timeout time.Duration) *watchdog {
	w := &watchdog{stop: make(chan struct{}), done: make(chan struct{})}
	w.tick.Store(1)
	period := max(timeout/watchdogTicks, time.Millisecond)
	go w.run(p, period)
	return w
}

func (w *watchdog) run(p *pool, period time.Duration) {
	defer close(w.done)
	t := time.NewTicker(period)
	defer t.Stop()
	var overdue []*instance
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		now := w.tick.Add(1)
		overdue = overdue[:0]
		p.forEachBusy(func(inst *instance) {
			if s := inst.started.Load(); s > 0 && now-s > watchdogTicks && inst.started.CompareAndSwap(s, killed) {
				overdue = append(overdue, inst)
			}
		})
		for _, inst := range overdue {
			inst.halt(errWatchdog)
		}
	}
}

func (w *watchdog) close() {
	close(w.stop)
	<-w.done
}
