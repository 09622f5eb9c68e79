package canary

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// Defaults of Policy, for production. docs/canary.md says why.
const (
	// DefaultInterval is how long each step lasts at least: long enough to
	// span a garbage collection cycle and periodic work of a service.
	DefaultInterval = time.Minute
	// DefaultMinCalls is how many calls each version must serve in a step
	// before any verdict: with a 1% background failure rate it is 10
	// expected failures, and 10 calls beyond each version's p99.
	DefaultMinCalls = 1000
	// DefaultMaxEmptyWindows is how many windows in a row a step may end
	// without MinCalls calls of each version (holding) before the canary is
	// aborted for lack of data.
	DefaultMaxEmptyWindows = 10
	// DefaultFalseAbortRate bounds the probability that a canary as good as
	// the stable version is aborted by the statistical tests.
	DefaultFalseAbortRate = 0.001
	// DefaultErrorRatio is the failure rate, relative to the stable
	// version's, the failure test is built to detect.
	DefaultErrorRatio = 2.0
	// DefaultErrorFloor is the smallest increase of the failure rate over
	// the stable version's that may abort a canary: 0.1 percentage point.
	DefaultErrorFloor = 0.001
	// DefaultLatencyRatio is the slowdown of the median, relative to the
	// stable version's, that is tolerated (applied at the histogram's
	// resolution: 2^(3/16) ≈ 1.14).
	DefaultLatencyRatio = 1.1
	// DefaultTailRatio is the slowdown of the 99th percentile that is
	// tolerated: tails are noisy, and a new version's young instances have
	// heavier ones (garbage-collection pauses while their memory grows).
	DefaultTailRatio = 2.0
	// DefaultLatencyFloor is the smallest slowdown that may abort a canary.
	DefaultLatencyFloor = time.Microsecond
	// DefaultLatencyWeight is the weight, in percent, from which latencies
	// are compared: where both versions serve as many calls.
	DefaultLatencyWeight = 50.0
	// DefaultFailureLimit is how many failed user checks, over the whole
	// canary, abort it.
	DefaultFailureLimit = 1
)

// DefaultSteps returns the default weights, in percent: 1, 5, 25, 50, then
// promotion.
func DefaultSteps() []float64 { return []float64{1, 5, 25, 50} }

// Policy says how a canary advances and when it is aborted. The zero value
// of each field means its default.
type Policy struct {
	// Steps are the weights the canary serves, in percent of the module's
	// calls, increasing, each above 0 and at most 100. Each step lasts at
	// least one Interval; after the last step passes the canary is
	// promoted. A last step of 100 means promotion itself. Defaults to
	// DefaultSteps() (1, 5, 25, 50).
	Steps []float64
	// Interval is a step's window: at its end the step passes if each
	// version served MinCalls calls in the step and no check failed, and
	// holds otherwise. Defaults to DefaultInterval (1m).
	Interval time.Duration
	// MinCalls is the sample each version must have in a step before any
	// verdict, pass or abort. Defaults to DefaultMinCalls (1000).
	MinCalls int
	// MaxEmptyWindows aborts a canary whose step ended this many windows in
	// a row without MinCalls calls of each version. Defaults to
	// DefaultMaxEmptyWindows (10).
	MaxEmptyWindows int
	// FalseAbortRate bounds the probability that the statistical tests
	// abort a canary exactly as good as the stable version, over all its
	// steps and tests. Defaults to DefaultFalseAbortRate (0.001).
	FalseAbortRate float64
	// ErrorRatio is the failure rate relative to the stable version's that
	// the failure test is built to detect; above 1. Defaults to
	// DefaultErrorRatio (2).
	ErrorRatio float64
	// ErrorFloor is the least excess of the canary's failure rate over the
	// stable version's, in the step, that may abort the canary (0.001 is a
	// tenth of a percentage point). Defaults to DefaultErrorFloor (0.001).
	ErrorFloor float64
	// LatencyRatio is the slowdown of the median relative to the stable
	// version's that is tolerated; at least 1. Defaults to
	// DefaultLatencyRatio (1.1).
	LatencyRatio float64
	// TailRatio is the slowdown of the 99th percentile relative to the
	// stable version's that is tolerated; at least 1. Defaults to
	// DefaultTailRatio (2).
	TailRatio float64
	// LatencyFloor is the least slowdown that may abort the canary.
	// Defaults to DefaultLatencyFloor (1µs).
	LatencyFloor time.Duration
	// LatencyWeight is the weight, in percent, from which the latency tests
	// run; they always run in the last step. Below it a canary's calls are
	// slower for running rarely alone (in one process both versions share
	// the CPU caches, and a version serving 2% of the calls answered three
	// times slower than the one serving 98%, on the same code); at 50% both
	// are as warm. Failures are compared at every step. Defaults to
	// DefaultLatencyWeight (50).
	LatencyWeight float64
	// Checks run at the end of every window that has enough calls; a check
	// that returns an error fails. Defaults to none.
	Checks []Check
	// FailureLimit is how many failed checks, counted over the whole
	// canary (not only in a row), abort it; a failed check below the limit
	// holds the step for another window. Defaults to DefaultFailureLimit
	// (1).
	FailureLimit int
}

// Check is a user check of a canary: a Go function of the service, e.g.
// one comparing the outputs of both versions on mirrored inputs.
type Check struct {
	// Name names the check in verdicts and the audit log.
	Name string
	// Run judges the step so far; an error fails the check and says why.
	// ctx ends after one Interval.
	Run func(ctx context.Context, w Window) error
}

// Validate returns why p is invalid, or nil.
func (p Policy) Validate() error {
	_, err := p.withDefaults()
	return err
}

// withDefaults returns p with its defaults filled in, or why p is invalid.
func (p Policy) withDefaults() (Policy, error) {
	if len(p.Steps) == 0 {
		p.Steps = DefaultSteps()
	}
	p.Steps = slices.Clone(p.Steps)
	p.Interval = orDefault(p.Interval, DefaultInterval)
	p.MinCalls = orDefault(p.MinCalls, DefaultMinCalls)
	p.MaxEmptyWindows = orDefault(p.MaxEmptyWindows, DefaultMaxEmptyWindows)
	p.FalseAbortRate = orDefault(p.FalseAbortRate, DefaultFalseAbortRate)
	p.ErrorRatio = orDefault(p.ErrorRatio, DefaultErrorRatio)
	p.ErrorFloor = orDefault(p.ErrorFloor, DefaultErrorFloor)
	p.LatencyRatio = orDefault(p.LatencyRatio, DefaultLatencyRatio)
	p.TailRatio = orDefault(p.TailRatio, DefaultTailRatio)
	p.LatencyFloor = orDefault(p.LatencyFloor, DefaultLatencyFloor)
	p.LatencyWeight = orDefault(p.LatencyWeight, DefaultLatencyWeight)
	p.FailureLimit = orDefault(p.FailureLimit, DefaultFailureLimit)
	var errs []error
	for i, w := range p.Steps {
		switch {
		case !(w > 0 && w <= 100):
			errs = append(errs, fmt.Errorf("step %d: weight %v%% is not in (0, 100]", i+1, w))
		case i > 0 && w <= p.Steps[i-1]:
			errs = append(errs, fmt.Errorf("step %d: weight %v%% does not increase on %v%%", i+1, w, p.Steps[i-1]))
		case w == 100 && i != len(p.Steps)-1:
			errs = append(errs, fmt.Errorf("step %d: 100%% can only be the last step (promotion)", i+1))
		}
	}
	if n := len(p.Steps); n > 0 && p.Steps[n-1] == 100 {
		p.Steps = p.Steps[:n-1] // 100% is the promotion
		if n == 1 {
			errs = append(errs, errors.New("steps: a canary needs a step below 100%"))
		}
	}
	switch {
	case p.Interval < 0:
		errs = append(errs, fmt.Errorf("negative interval %v", p.Interval))
	case p.MinCalls < 0 || p.MaxEmptyWindows < 0 || p.FailureLimit < 0:
		errs = append(errs, errors.New("negative MinCalls, MaxEmptyWindows or FailureLimit"))
	case !(p.FalseAbortRate > 0 && p.FalseAbortRate < 1):
		errs = append(errs, fmt.Errorf("false-abort rate %v is not in (0, 1)", p.FalseAbortRate))
	case !(p.ErrorRatio > 1) || math.IsInf(p.ErrorRatio, 0):
		errs = append(errs, fmt.Errorf("error ratio %v is not above 1", p.ErrorRatio))
	case !(p.LatencyRatio >= 1) || math.IsInf(p.LatencyRatio, 0) || !(p.TailRatio >= 1) || math.IsInf(p.TailRatio, 0):
		errs = append(errs, fmt.Errorf("latency ratio %v or tail ratio %v is below 1", p.LatencyRatio, p.TailRatio))
	case p.ErrorFloor < 0 || p.ErrorFloor >= 1 || p.LatencyFloor < 0:
		errs = append(errs, errors.New("error floor not in [0, 1), or negative latency floor"))
	case !(p.LatencyWeight > 0 && p.LatencyWeight <= 100):
		errs = append(errs, fmt.Errorf("latency weight %v%% is not in (0, 100]", p.LatencyWeight))
	}
	for i, c := range p.Checks {
		if c.Name == "" || c.Run == nil {
			errs = append(errs, fmt.Errorf("check %d: a check needs a Name and a Run", i+1))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	return p, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
