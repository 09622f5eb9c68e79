package module

import (
	"context"
	"errors"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// FailureKind classifies a failed call for the per-version counters.
type FailureKind uint8

// Failure kinds, one per call sentinel that says whose fault a failure is.
const (
	FailGuest    FailureKind = iota // ErrGuest: the handler returned an error
	FailTrap                        // ErrTrapped
	FailTimeout                     // ErrTimeout, or the caller's deadline passed
	FailMemory                      // ErrMemoryLimit
	FailDrained                     // ErrDrained
	FailCanceled                    // the caller canceled the call: not the version's fault
	FailOther                       // anything else (ErrNoHandler, ErrTooLarge, …)

	NumFailureKinds = iota
)

var failureKindNames = [NumFailureKinds]string{"guest", "trap", "timeout", "memory", "drained", "canceled", "other"}

// String returns the kind's name as metrics and status label it: "guest",
// "trap", "timeout", "memory", "drained", "canceled" or "other".
func (k FailureKind) String() string {
	if int(k) < len(failureKindNames) {
		return failureKindNames[k]
	}
	return "other"
}

// failureKind classifies the error a Code returned for a call.
func failureKind(err error) FailureKind {
	var ce *CallError
	if errors.As(err, &ce) {
		err = ce.Kind
	}
	switch {
	case err == ErrGuest:
		return FailGuest
	case err == ErrTrapped:
		return FailTrap
	case err == ErrTimeout, errors.Is(err, context.DeadlineExceeded):
		return FailTimeout
	case err == ErrMemoryLimit:
		return FailMemory
	case err == ErrDrained:
		return FailDrained
	case errors.Is(err, context.Canceled):
		return FailCanceled
	}
	return FailOther
}

// Latency histogram layout: bucket i holds durations in [2^(i/16),
// 2^((i+1)/16)) nanoseconds, sixteen buckets per doubling (the resolution of
// a Prometheus native histogram of schema 4), from 1 ns up; the last bucket
// also holds everything longer than 2^40 ns (18 minutes).
const (
	// BucketsPerDoubling is the histogram's resolution: neighbouring bucket
	// bounds differ by a factor of 2^(1/16) ≈ 1.044.
	BucketsPerDoubling = 16
	// HistogramBuckets is the number of latency buckets.
	HistogramBuckets = 40 * BucketsPerDoubling
)

// subBucket maps the 8 bits after a duration's leading one bit to its
// bucket within the doubling: floor(16·log2(1 + f/256)).
var subBucket = func() (t [256]uint8) {
	for f := range t {
		t[f] = uint8(math.Floor(BucketsPerDoubling * math.Log2(1+float64(f)/256)))
	}
	return t
}()

// bucketOf returns the bucket of a duration of ns nanoseconds. A duration
// within 1/256 of a bound may land in the bucket below it.
func bucketOf(ns uint64) int {
	if ns == 0 {
		return 0
	}
	e := bits.Len64(ns) - 1 // 2^e ≤ ns < 2^(e+1)
	if e >= HistogramBuckets/BucketsPerDoubling {
		return HistogramBuckets - 1
	}
	frac := (ns << (63 - e)) >> 55 & 0xff
	return e*BucketsPerDoubling + int(subBucket[frac])
}

// BucketLowerBound returns the shortest duration bucket i holds.
func BucketLowerBound(i int) time.Duration {
	return time.Duration(math.Exp2(float64(i) / BucketsPerDoubling))
}

// BucketUpperBound returns the duration bucket i holds durations below
// (for the last bucket, the bound of the durations it was made for).
func BucketUpperBound(i int) time.Duration { return BucketLowerBound(i + 1) }

// Histogram counts call latencies in HistogramBuckets exponential buckets
// (see BucketLowerBound). It is a plain value: a snapshot.
type Histogram struct {
	Counts [HistogramBuckets]uint64
	// Sum is the total of the durations counted.
	Sum time.Duration
}

// Observe counts a duration. Unlike a version's own counters it is not
// safe for concurrent use: the caller guards it.
func (h *Histogram) Observe(d time.Duration) {
	h.Counts[bucketOf(uint64(max(d, 0)))]++
	h.Sum += d
}

// Count returns the number of durations counted.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// QuantileBucket returns the bucket holding the q-quantile (0 < q ≤ 1) of
// the durations counted, and -1 when none were.
func (h *Histogram) QuantileBucket(q float64) int {
	n := h.Count()
	if n == 0 {
		return -1
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			return i
		}
	}
	return HistogramBuckets - 1
}

// Quantile returns the upper bound of the bucket holding the q-quantile,
// which overstates it by at most 4.4%, or 0 when nothing was counted.
func (h *Histogram) Quantile(q float64) time.Duration {
	i := h.QuantileBucket(q)
	if i < 0 {
		return 0
	}
	return BucketUpperBound(i)
}

// Above returns how many durations were counted in buckets above bucket i.
func (h *Histogram) Above(i int) uint64 {
	var n uint64
	for _, c := range h.Counts[max(i+1, 0):] {
		n += c
	}
	return n
}

// Sub returns h minus an earlier snapshot of the same histogram.
func (h *Histogram) Sub(earlier *Histogram) Histogram {
	var d Histogram
	for i := range h.Counts {
		d.Counts[i] = h.Counts[i] - earlier.Counts[i]
	}
	d.Sum = h.Sum - earlier.Sum
	return d
}

// Sample is a snapshot of one version's call counters. Counters only grow,
// so the numbers of an interval are the difference of two samples (Sub).
type Sample struct {
	// Calls counts the calls the version completed, successfully or not
	// (the backend's count, CodeStats.Calls).
	Calls uint64
	// Failures counts failed calls by FailureKind.
	Failures [NumFailureKinds]uint64
	// Latency holds the durations of the calls that were timed: a share of
	// them while a canary runs (see Canary) or when Options.TimeCalls asks
	// for it; none otherwise.
	Latency Histogram
}

// Failed returns the failed calls the version is to blame for: every kind
// but FailCanceled.
func (s *Sample) Failed() uint64 {
	var n uint64
	for k, c := range s.Failures {
		if FailureKind(k) != FailCanceled {
			n += c
		}
	}
	return n
}

// Sub returns s minus an earlier sample of the same version.
func (s *Sample) Sub(earlier *Sample) Sample {
	d := Sample{Calls: s.Calls - earlier.Calls, Latency: s.Latency.Sub(&earlier.Latency)}
	for k := range s.Failures {
		d.Failures[k] = s.Failures[k] - earlier.Failures[k]
	}
	return d
}

// counters are a version's call counters, written lock-free by calls and
// read by Sample. Failures are counted on the error path only; durations
// only for timed calls, so a call that is neither failed nor timed touches
// none of them.
type counters struct {
	failures [NumFailureKinds]atomic.Uint64
	latency  [HistogramBuckets]atomic.Uint64
	sum      atomic.Int64 // nanoseconds
}

func (c *counters) fail(err error) { c.failures[failureKind(err)].Add(1) }

func (c *counters) observe(d time.Duration) {
	c.latency[bucketOf(uint64(max(d, 0)))].Add(1)
	c.sum.Add(int64(d))
}

// sample reads the counters. Calls are counted by the backend.
func (v *version) sample() Sample {
	s := Sample{Calls: v.code.Stats().Calls}
	for k := range s.Failures {
		s.Failures[k] = v.stats.failures[k].Load()
	}
	for i := range s.Latency.Counts {
		s.Latency.Counts[i] = v.stats.latency[i].Load()
	}
	s.Latency.Sum = time.Duration(v.stats.sum.Load())
	// The backend does not count a call that failed before it reached an
	// instance, and a call may end between the two reads: a version never
	// has fewer calls than failures.
	s.Calls = max(s.Calls, s.Failed()+s.Failures[FailCanceled])
	return s
}

// VersionSample is the Sample of one live version of a module.
type VersionSample struct {
	Version string
	Digest  string
	// Role is "active", "previous", "canary" or "draining".
	Role string
	Sample
}

// Samples reads the call counters of every live version of the module: the
// active one, the canary, the previous one and those draining. It takes no
// lock a call takes, so a metrics collector may call it at scrape time.
func (m *Module) Samples() []VersionSample {
	m.mu.Lock()
	prev := m.previous
	draining := append([]*version(nil), m.draining...)
	var canary *version
	if m.canary != nil {
		canary = m.canary.v
	}
	m.mu.Unlock()
	var out []VersionSample
	add := func(v *version, role string) {
		if v != nil {
			out = append(out, VersionSample{Version: v.name, Digest: v.digest, Role: role, Sample: v.sample()})
		}
	}
	add(m.active.Load(), "active")
	add(canary, "canary")
	add(prev, "previous")
	for _, d := range draining {
		add(d, "draining")
	}
	return out
}
