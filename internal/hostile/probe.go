package hostile

import (
	"sync"
	"time"
)

// Probe measures how long a plain goroutine is kept from running: it wakes
// every period and records by how much each wake-up came late. A guest that
// holds up the Go scheduler or a stop-the-world phase of the garbage
// collector shows up as a long delay.
type Probe struct {
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex // protects maxDelay
	maxDelay time.Duration
}

// StartProbe starts a probe waking every period.
func StartProbe(period time.Duration) *Probe {
	p := &Probe{stop: make(chan struct{}), done: make(chan struct{})}
	go p.run(period)
	return p
}

func (p *Probe) run(period time.Duration) {
	defer close(p.done)
	t := time.NewTicker(period)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			// The ticker's channel holds one tick: a late wake-up reads
			// the tick of when it was due, so measure from the wall clock.
			now = time.Now()
			if d := now.Sub(last) - period; d > 0 {
				p.mu.Lock()
				p.maxDelay = max(p.maxDelay, d)
				p.mu.Unlock()
			}
			last = now
		}
	}
}

// Max returns the longest delay so far.
func (p *Probe) Max() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxDelay
}

// Reset forgets the delays so far.
func (p *Probe) Reset() {
	p.mu.Lock()
	p.maxDelay = 0
	p.mu.Unlock()
}

// Stop stops the probe and returns the longest delay.
func (p *Probe) Stop() time.Duration {
	close(p.stop)
	<-p.done
	return p.Max()
}
