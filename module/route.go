package module

import (
	"math"
	"math/bits"
)

// route splits a module's calls while a canary runs, and picks the calls
// that are timed. It is immutable: a change of weight publishes a new one.
//
// Every call gets a 64-bit bucket: the hash of its routing key (salted per
// canary), or a random number for a call without a key. A call whose
// bucket is below threshold goes to the canary. Widening raises threshold
// only, so a key that went to the canary at a weight goes there at every
// higher weight of the same canary, and a key is sticky: the same bucket
// every time.
//
// A call whose bucket is in [timeLo, timeLo+timeSpan) is timed: as many
// buckets on each side of threshold, so the canary and the stable version
// are timed on cohorts of calls (or keys) of the same size, and the call
// path reads the clock for 2·min(w, 1-w) of the calls at weight w.
type route struct {
	canary    *version // nil when the route only times or labels calls
	threshold uint64
	salt      uint64
	timeLo    uint64
	timeSpan  uint64
	// labels sets the version's profiling labels around each call (see
	// Options.ProfileLabels).
	labels bool
	// spans, when set, decides which calls get a span (see
	// Options.CallTracer).
	spans CallTracer
}

// newRoute returns the route of a canary at weight w (0 ≤ w ≤ 1).
func newRoute(canary *version, salt uint64, w float64) *route {
	t := share(w)
	m := min(t, math.MaxUint64-t)
	span := m * 2
	if m > math.MaxUint64/2 {
		span = math.MaxUint64
	}
	return &route{canary: canary, threshold: t, salt: salt, timeLo: t - m, timeSpan: span}
}

// timingRoute returns the route of a module without a canary whose calls
// are timed with probability p (0 < p ≤ 1).
func timingRoute(p float64) *route { return &route{timeSpan: share(p)} }

// share maps a fraction in [0, 1] onto the bucket space, monotonically.
func share(w float64) uint64 {
	switch {
	case w <= 0:
		return 0
	case w >= 1:
		return math.MaxUint64
	}
	return uint64(w * (1 << 64))
}

// weight returns the share of buckets that go to the canary.
func (r *route) weight() float64 {
	if r.threshold == math.MaxUint64 {
		return 1
	}
	return float64(r.threshold) / (1 << 64)
}

func (r *route) toCanary(bucket uint64) bool { return bucket < r.threshold }
func (r *route) timed(bucket uint64) bool    { return bucket-r.timeLo < r.timeSpan }

// keyBucket hashes a routing key with a salt. It is deterministic across
// processes and builds (a key keeps its version through a restart), reads
// eight bytes at a time, and mixes every input bit into every output bit
// (the finalizer of MurmurHash3), so buckets are uniform over keys.
func keyBucket(key string, salt uint64) uint64 {
	const (
		k0 = 0x9e3779b97f4a7c15
		k1 = 0xbf58476d1ce4e5b9
		k2 = 0x94d049bb133111eb
	)
	h := salt ^ uint64(len(key))*k0
	for len(key) >= 8 {
		w := uint64(key[0]) | uint64(key[1])<<8 | uint64(key[2])<<16 | uint64(key[3])<<24 |
			uint64(key[4])<<32 | uint64(key[5])<<40 | uint64(key[6])<<48 | uint64(key[7])<<56
		h = bits.RotateLeft64((h^w)*k1, 31)
		key = key[8:]
	}
	var w uint64
	for i := 0; i < len(key); i++ {
		w |= uint64(key[i]) << (8 * i)
	}
	h = (h ^ w) * k2
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
