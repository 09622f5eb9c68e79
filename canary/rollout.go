package canary

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// Conditions callers branch on.
var (
	// ErrEnded: the canary was promoted or aborted already.
	ErrEnded = errors.New("canary already ended")
	// ErrAborted: the canary was aborted; the stable version serves.
	ErrAborted = errors.New("canary aborted")
	// ErrInvalidPolicy: a Policy field is out of range; nothing started.
	ErrInvalidPolicy = errors.New("invalid canary policy")
)

// Target is the split a Rollout drives. *module.Canary is one.
type Target interface {
	// SetWeight makes the canary serve share w (0 to 1) of the calls.
	SetWeight(w float64) error
	// Sample reads both versions' counters.
	Sample() (stable, canary module.Sample)
	// Promote makes the canary the active version.
	Promote(ctx context.Context) (module.VersionStatus, error)
	// Abort takes the canary out at once; its running calls finish.
	Abort()
}

// State is where a canary is.
type State string

// States.
const (
	Running   State = "running"   // the analysis advances, holds and aborts on its own
	Paused    State = "paused"    // no step advances; the analysis still aborts a regression
	Frozen    State = "frozen"    // the weight stays; no automatic decision at all
	Promoting State = "promoting" // the canary is being activated
	Promoted  State = "promoted"  // the canary is the active version
	Aborted   State = "aborted"   // the canary was taken out; the stable version serves everything
)

// Decision is what a verdict decided.
type Decision string

// Decisions. Begin, Pass, Resume and Promote widen the canary's exposure:
// when Options.Record fails for one of them, the canary is aborted instead.
const (
	Begin   Decision = "begin"   // the canary serves its first weight
	Pass    Decision = "pass"    // the step passed; the next one starts at a higher weight
	Hold    Decision = "hold"    // the window ended without enough calls, or a check failed below the limit
	Pause   Decision = "pause"   // an operator paused the steps
	Resume  Decision = "resume"  // an operator resumed automatic decisions
	Freeze  Decision = "freeze"  // an operator froze the canary at its weight
	Promote Decision = "promote" // the canary is activated: every call goes to it
	Abort   Decision = "abort"   // the canary is taken out
)

// Verdict is one decision of a canary, with the numbers behind it.
type Verdict struct {
	// Seq numbers the verdicts of a canary from 1.
	Seq      int
	Time     time.Time
	Decision Decision
	// Step (from 1) and Weight (percent) when the verdict was taken; for
	// Begin and Pass, the step that starts.
	Step   int
	Weight float64
	// Reason says why, e.g. the failed test and its numbers.
	Reason string
	// By names the operator who asked; empty for the automatic analysis.
	By string
	// Window holds the step's numbers when the verdict was taken.
	Window Window
}

func (v Verdict) String() string {
	s := fmt.Sprintf("%s at step %d (%v%%)", v.Decision, v.Step, v.Weight)
	if v.By != "" {
		s += " by " + v.By
	}
	if v.Reason != "" {
		s += ": " + v.Reason
	}
	return s
}

// Options configures a Rollout. The zero value of each field means its
// default.
type Options struct {
	// Policy says how the canary advances and when it is aborted.
	Policy Policy
	// Record, if set, is called with every verdict before it takes effect,
	// from the Rollout's goroutine (and from Start for the first); e.g. to
	// write it to an audit log. If it fails for a verdict that widens the
	// canary's exposure (Begin, Pass, Resume, Promote), that verdict does
	// not take effect: Start fails, and a running canary is aborted.
	// Defaults to nil.
	Record func(Verdict) error
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Status is a snapshot of a Rollout.
type Status struct {
	State State
	// Step is the current step, from 1; Steps the weights in percent
	// (without the final promotion).
	Step   int
	Steps  []float64
	Weight float64 // percent of calls the canary serves now
	Policy Policy
	// StartedAt is when the canary started; StepStartedAt when its current
	// step did; EndedAt when it was promoted or aborted.
	StartedAt, StepStartedAt, EndedAt time.Time
	// EmptyWindows is how many windows of the step ended without enough
	// calls; CheckFailures how many checks failed over the canary.
	EmptyWindows, CheckFailures int
	// Window holds the current step's numbers.
	Window Window
	// Last is the last verdict; nil before the first.
	Last *Verdict
}

// maxVerdicts bounds the verdicts a Rollout keeps for Verdicts.
const maxVerdicts = 256

// Rollout drives one canary through its steps: every tick it samples both
// versions and updates the sequential tests, aborting as soon as the
// evidence suffices; at the end of every window it passes the step (the
// next one starts at a higher weight, or the canary is promoted after the
// last), or holds it. Operators may pause, resume, freeze, promote or abort
// it at any time.
//
// A Rollout is safe for concurrent use.
type Rollout struct {
	target Target
	p      Policy
	record func(Verdict) error
	log    *slog.Logger
	tick   time.Duration
	cmds   chan command
	done   chan struct{}

	// Owned by the goroutine of run (and by Start before it).
	a     *analysis
	state State
	seq   int // of the last verdict made

	mu       sync.Mutex // protects status, verdicts, changed
	status   Status
	verdicts []Verdict
	changed  chan struct{} // closed and replaced at each verdict
}

type command struct {
	decision Decision
	by       string
	reply    chan error
}

// Start records the Begin verdict, makes the target serve the first step's
// weight and starts the Rollout's goroutine. The target should serve no
// call before (weight 0). If the policy is invalid or the record fails, the
// target is left as it was and Start returns the error.
func Start(t Target, o Options) (*Rollout, error) {
	p, err := o.Policy.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Rollout{target: t, p: p, record: o.Record, log: o.Logger, cmds: make(chan command), done: make(chan struct{}),
		a: newAnalysis(p), state: Running, changed: make(chan struct{})}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.tick = min(max(p.Interval/20, 10*time.Millisecond), time.Second)
	now := time.Now()
	r.a.startStep(now, r.sample())
	v := r.verdict(Begin, "", fmt.Sprintf("serve %v%% of the calls (step 1 of %d)", p.Steps[0], len(p.Steps)))
	if r.record != nil {
		if err := r.record(v); err != nil {
			return nil, err
		}
	}
	if err := t.SetWeight(p.Steps[0] / 100); err != nil {
		return nil, err
	}
	r.a.startStep(time.Now(), r.sample())
	r.mu.Lock()
	r.status.StartedAt = now
	r.mu.Unlock()
	r.publish(&v)
	go r.run()
	return r, nil
}

// Done is closed once the canary was promoted or aborted.
func (r *Rollout) Done() <-chan struct{} { return r.done }

// Status returns a snapshot of the rollout.
func (r *Rollout) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Steps = slices.Clone(s.Steps)
	if s.Last != nil {
		last := *s.Last
		s.Last = &last
	}
	return s
}

// Verdicts returns the verdicts numbered after seq (at most the last 256)
// and a channel closed at the next change of the status: a verdict or a
// tick of the analysis.
func (r *Rollout) Verdicts(seq int) ([]Verdict, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, _ := slices.BinarySearchFunc(r.verdicts, seq+1, func(v Verdict, s int) int { return v.Seq - s })
	return slices.Clone(r.verdicts[i:]), r.changed
}

// Pause stops the steps from advancing; the analysis still aborts a
// regression. by names who asked.
func (r *Rollout) Pause(ctx context.Context, by string) error { return r.command(ctx, Pause, by) }

// Resume undoes Pause or Freeze: automatic decisions resume, and the
// current window starts again.
func (r *Rollout) Resume(ctx context.Context, by string) error { return r.command(ctx, Resume, by) }

// Freeze keeps the canary at its weight with no automatic decision at all
// (not even an abort) until an operator resumes, promotes or aborts it:
// for a canary that made a change the stable version cannot undo.
func (r *Rollout) Freeze(ctx context.Context, by string) error { return r.command(ctx, Freeze, by) }

// Promote promotes the canary now, whatever its step, and returns once it
// is the active version or its promotion failed.
func (r *Rollout) Promote(ctx context.Context, by string) error { return r.command(ctx, Promote, by) }

// Abort takes the canary out now.
func (r *Rollout) Abort(ctx context.Context, by string) error { return r.command(ctx, Abort, by) }

func (r *Rollout) command(ctx context.Context, d Decision, by string) error {
	c := command{decision: d, by: by, reply: make(chan error, 1)}
	select {
	case r.cmds <- c:
	case <-r.done:
		return ErrEnded
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-c.reply:
		return err
	case <-ctx.Done():
		return ctx.Err() // the command was taken; it completes
	}
}

// run is the Rollout's goroutine: the only one that changes the target and
// the analysis.
func (r *Rollout) run() {
	defer close(r.done)
	t := time.NewTicker(r.tick)
	defer t.Stop()
	for !r.ended() {
		select {
		case now := <-t.C:
			r.onTick(now)
		case c := <-r.cmds:
			c.reply <- r.onCommand(c)
		}
	}
}

func (r *Rollout) ended() bool { return r.state == Promoted || r.state == Aborted }

func (r *Rollout) sample() [2]module.Sample {
	s, c := r.target.Sample()
	return [2]module.Sample{stable: s, canary: c}
}

func (r *Rollout) onTick(now time.Time) {
	a := r.a
	a.update(now, r.sample())
	defer r.publish(nil)
	if r.state == Frozen {
		return
	}
	if why := a.regression(); why != "" {
		r.abort("", why)
		return
	}
	if r.state != Running || now.Sub(a.windowStart) < r.p.Interval {
		return
	}
	a.windowStart = now
	if !a.enoughCalls() {
		a.empty++
		w := a.window()
		why := fmt.Sprintf("not enough calls in the step: %d on the stable version, %d on the canary; %d needed of each",
			w.Stable.Calls, w.Canary.Calls, r.p.MinCalls)
		if a.empty >= r.p.MaxEmptyWindows {
			r.abort("", fmt.Sprintf("no data: %s, for %d windows in a row", why, a.empty))
			return
		}
		r.hold(fmt.Sprintf("%s (window %d of %d)", why, a.empty, r.p.MaxEmptyWindows))
		return
	}
	if failed := r.runChecks(); len(failed) > 0 {
		a.checkFailures += len(failed)
		why := "check failed: " + joinErrors(failed)
		if a.checkFailures >= r.p.FailureLimit {
			r.abort("", fmt.Sprintf("%s (%d failed checks, limit %d)", why, a.checkFailures, r.p.FailureLimit))
			return
		}
		r.hold(fmt.Sprintf("%s (%d of %d failures before an abort)", why, a.checkFailures, r.p.FailureLimit))
		return
	}
	if a.lastStep() {
		r.promote("", fmt.Sprintf("all %d steps passed", len(r.p.Steps)))
		return
	}
	r.advance()
}

// runChecks runs the user checks on the step so far and returns their
// errors.
func (r *Rollout) runChecks() []error {
	var failed []error
	for _, c := range r.p.Checks {
		ctx, cancel := context.WithTimeout(context.Background(), r.p.Interval)
		err := c.Run(ctx, r.a.window())
		cancel()
		if err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", c.Name, err))
		}
	}
	return failed
}

func joinErrors(errs []error) string {
	s := make([]string, len(errs))
	for i, e := range errs {
		s[i] = e.Error()
	}
	return fmt.Sprint(s)
}

// advance passes the step: the next one starts at its higher weight.
func (r *Rollout) advance() {
	a := r.a
	next := a.step + 1
	v := r.verdict(Pass, "", fmt.Sprintf("step %d of %d passed at %v%%; now %v%%", a.step+1, len(r.p.Steps), a.weight(), r.p.Steps[next]))
	v.Step, v.Weight = next+1, r.p.Steps[next]
	if r.recorded(v) != nil {
		return
	}
	if err := r.target.SetWeight(r.p.Steps[next] / 100); err != nil {
		r.abort("", fmt.Sprintf("set weight %v%%: %v", r.p.Steps[next], err))
		return
	}
	a.step = next
	a.startStep(time.Now(), r.sample())
	r.publish(&v)
}

// hold records that the step goes on for another window.
func (r *Rollout) hold(why string) {
	v := r.verdict(Hold, "", why)
	r.recordAnyway(v)
	r.publish(&v)
}

// promote activates the canary.
func (r *Rollout) promote(by, why string) error {
	v := r.verdict(Promote, by, why)
	if err := r.recorded(v); err != nil {
		return err
	}
	r.state = Promoting
	r.publish(&v)
	if _, err := r.target.Promote(context.Background()); err != nil {
		r.abort("", fmt.Sprintf("promotion failed: %v", err))
		return err
	}
	r.state = Promoted
	r.publish(nil)
	return nil
}

// abort takes the canary out.
func (r *Rollout) abort(by, why string) {
	r.target.Abort()
	v := r.verdict(Abort, by, why)
	r.state = Aborted
	r.recordAnyway(v)
	r.publish(&v)
}

// recorded records a verdict that widens exposure, or aborts the canary
// and says why when it cannot.
func (r *Rollout) recorded(v Verdict) error {
	if r.record == nil {
		return nil
	}
	if err := r.record(v); err != nil {
		err = fmt.Errorf("could not record the verdict %q: %w", v.Decision, err)
		r.abort("", err.Error())
		return err
	}
	return nil
}

// recordAnyway records a verdict that takes effect whether or not it could
// be recorded.
func (r *Rollout) recordAnyway(v Verdict) {
	if r.record == nil {
		return
	}
	if err := r.record(v); err != nil {
		r.log.Error("canary: record a verdict", "decision", v.Decision, logkey.Err, err)
	}
}

// commandStates maps the commands that change the state to the state they
// lead to.
var commandStates = map[Decision]State{Pause: Paused, Freeze: Frozen, Resume: Running}

func (r *Rollout) onCommand(c command) error {
	now := time.Now()
	r.a.update(now, r.sample())
	switch c.decision {
	case Promote:
		return r.promote(c.by, "asked by an operator")
	case Abort:
		r.abort(c.by, "asked by an operator")
		return nil
	}
	to := commandStates[c.decision]
	if r.state == to {
		return nil
	}
	v := r.verdict(c.decision, c.by, "")
	if c.decision == Resume {
		if err := r.recorded(v); err != nil {
			return err
		}
		r.a.windowStart = now
	} else {
		r.recordAnyway(v)
	}
	r.state = to
	r.publish(&v)
	return nil
}

// verdict returns a verdict with the current step's numbers.
func (r *Rollout) verdict(d Decision, by, why string) Verdict {
	r.seq++
	return Verdict{Seq: r.seq, Time: time.Now(), Decision: d, Step: r.a.step + 1, Weight: r.a.weight(), Reason: why, By: by, Window: r.a.window()}
}

// publish updates the status and, with v, appends a verdict.
func (r *Rollout) publish(v *Verdict) {
	a := r.a
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &r.status
	s.State, s.Step, s.Steps, s.Policy = r.state, a.step+1, r.p.Steps, r.p
	s.Weight = a.weight()
	if r.state == Promoted {
		s.Weight = 100
	}
	if r.state == Aborted {
		s.Weight = 0
	}
	s.StepStartedAt, s.EmptyWindows, s.CheckFailures = a.stepStart, a.empty, a.checkFailures
	s.Window = a.window()
	if r.ended() && s.EndedAt.IsZero() {
		s.EndedAt = time.Now()
	}
	if v != nil {
		r.verdicts = append(r.verdicts, *v)
		if len(r.verdicts) > maxVerdicts {
			r.verdicts = slices.Delete(r.verdicts, 0, len(r.verdicts)-maxVerdicts)
		}
		last := *v
		s.Last = &last
	}
	close(r.changed)
	r.changed = make(chan struct{})
}
