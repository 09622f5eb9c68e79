package module

import (
	"context"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"
)

// drainBias is subtracted from a version's reference count when it retires.
// A negative count then tells acquire that the version takes no new calls,
// and the count reaching exactly -drainBias tells that the last call left.
const drainBias = 1 << 62

// version is one loaded version of a module.
type version struct {
	module   *Module
	name     string
	digest   string
	code     Code
	loadedAt time.Time

	// refs counts calls holding this version. Invariant: a call that
	// incremented refs to a non-negative value may use code until it
	// decrements; code is closed only after refs reached -drainBias or the
	// drain deadline passed.
	refs atomic.Int64
	// peak is the most calls seen holding the version at once (it may miss
	// a racing maximum by one); the next version pre-warms for it.
	peak      atomic.Int64
	drained   chan struct{}
	drainOnce sync.Once

	stats counters // failures by kind and timed latencies

	// labels carries the pprof labels module and version, made once so
	// that a labelled call allocates nothing.
	labels context.Context
}

func newVersion(m *Module, name, digest string, code Code) *version {
	return &version{module: m, name: name, digest: digest, code: code, loadedAt: time.Now(), drained: make(chan struct{}),
		labels: pprof.WithLabels(context.Background(), pprof.Labels("module", m.name, "version", name))}
}

// tryAcquire takes a reference unless the version is retiring.
func (v *version) tryAcquire() bool {
	if n := v.refs.Add(1); n > 0 {
		if n > v.peak.Load() {
			v.peak.Store(n)
		}
		return true
	}
	v.release()
	return false
}

func (v *version) release() {
	if v.refs.Add(-1) == -drainBias {
		v.drainOnce.Do(func() { close(v.drained) })
	}
}

// retire stops new calls from taking the version; drained closes once the
// calls holding it are gone.
func (v *version) retire() {
	if v.refs.Add(-drainBias) == -drainBias {
		v.drainOnce.Do(func() { close(v.drained) })
	}
}

// inFlight returns the number of calls holding the version.
func (v *version) inFlight() int64 {
	n := v.refs.Load()
	if n < 0 {
		n += drainBias
	}
	return n
}

func (v *version) status() *VersionStatus {
	s := v.code.Stats()
	return &VersionStatus{
		Version:         v.name,
		Digest:          v.digest,
		LoadedAt:        v.loadedAt,
		InFlight:        v.inFlight(),
		Instances:       s.Instances,
		IdleInstances:   s.IdleInstances,
		MemoryBytes:     s.MemoryBytes,
		Calls:           s.Calls,
		Failures:        s.Failures,
		Discarded:       s.Discarded,
		TableEntries:    s.TableEntries,
		DroppedLogLines: s.DroppedLogLines,
	}
}
