package module

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// DefaultDrainTimeout bounds how long a retired version may keep finishing
// its calls before it is closed under them.
const DefaultDrainTimeout = 30 * time.Second

// Options configures a Registry. The zero value of each field means its
// default; Backend is required.
type Options struct {
	// Backend prepares versions. Required. The registry owns it from now on.
	Backend Backend
	// Logger receives one line per load, swap, rollback and refusal.
	// Defaults to discarding.
	Logger *slog.Logger
	// DrainTimeout bounds the drain of a retired version; calls still
	// running then fail with ErrDrained and are counted. Defaults to
	// DefaultDrainTimeout (30s).
	DrainTimeout time.Duration
	// State, when set, makes the host-kept state of each module the
	// registry creates (package host attaches its persistence to it). It
	// is called once per module, with the registry's lock held: it must
	// not call the registry. Defaults to nil: NewKV.
	State func(module string) *KV
	// TimeCalls is the share of calls (0 to 1) timed into their version's
	// latency histogram (see Module.Samples) while the module runs no
	// canary, e.g. 0.01 for a metrics collector. It costs every call a
	// random draw (a few ns) and a timed call two clock reads. Defaults to
	// 0: calls are timed only during a canary, and a module without one
	// pays nothing for it.
	TimeCalls float64
	// ProfileLabels sets the pprof labels module and version on the
	// calling goroutine for the duration of each call, so a CPU profile
	// splits the time spent in each module version. The labels replace
	// the goroutine's own for the call; afterwards the goroutine carries
	// the labels of the call's context (those pprof.Do put there), as
	// after pprof.Do. It costs a call two label switches (see
	// bench/modcall, labels_p50_ns). Defaults to false.
	ProfileLabels bool
	// CallTracer, when set, is asked at the start of each call whether the
	// call gets a span, and told how it ended if it did (package host
	// provides one over OpenTelemetry: host.Options.TraceCalls). It costs
	// every call an interface call and what the tracer does. Defaults to
	// nil: no call spans, and calls pay nothing for them.
	CallTracer CallTracer
}

// CallTracer records spans of module calls (see Options.CallTracer). It
// must be safe for concurrent use.
type CallTracer interface {
	// StartCall decides whether the call of handler of module's version
	// gets a span. If so it returns ctx carrying the span, which the call
	// runs with, and true; else ctx and false.
	StartCall(ctx context.Context, module, version, handler string) (context.Context, bool)
	// EndCall ends the span StartCall put in ctx. err is the call's error
	// (a *CallError), nil on success; kind classifies it.
	EndCall(ctx context.Context, err error, kind FailureKind)
}

// Source is one version's artifact.
type Source struct {
	// Version names the version, e.g. "v2" or "1.4.0". Required.
	Version string
	// Artifact is the payload, already verified (see package artifact).
	Artifact []byte
	// Digest is the artifact's hex sha256; computed when empty.
	Digest string
}

// Registry holds named modules and their versions. Every new call goes to a
// module's active version; a call keeps the version it started on for its
// whole duration; at most one load or rollback per module runs at a time;
// the previous version stays warm for rollback; a version that failed a
// check never serves.
//
// A Registry is safe for concurrent use.
type Registry struct {
	backend      Backend
	log          *slog.Logger
	drainTimeout time.Duration
	newState     func(module string) *KV // Options.State
	timeCalls    float64
	labels       bool       // Options.ProfileLabels
	spans        CallTracer // Options.CallTracer
	epoch        time.Time  // the origin of clock

	mu      sync.Mutex // protects modules, closed; writers publish lookup
	modules map[string]*Module
	closed  bool
	// lookup is an immutable copy of modules for lock-free reads.
	lookup atomic.Pointer[map[string]*Module]

	drains sync.WaitGroup // one per retired version not yet closed
}

// New returns a Registry that prepares versions with opts.Backend.
func New(opts Options) (*Registry, error) {
	if opts.Backend == nil {
		return nil, errors.New("module: Options.Backend is required")
	}
	if opts.DrainTimeout < 0 {
		return nil, fmt.Errorf("module: negative DrainTimeout %v", opts.DrainTimeout)
	}
	if !(opts.TimeCalls >= 0 && opts.TimeCalls <= 1) {
		return nil, fmt.Errorf("module: TimeCalls %v is not a share between 0 and 1", opts.TimeCalls)
	}
	r := &Registry{
		backend:      opts.Backend,
		log:          opts.Logger,
		drainTimeout: cmp(opts.DrainTimeout, DefaultDrainTimeout),
		timeCalls:    opts.TimeCalls,
		labels:       opts.ProfileLabels,
		spans:        opts.CallTracer,
		epoch:        time.Now(),
		modules:      make(map[string]*Module),
		newState:     opts.State,
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.newState == nil {
		r.newState = func(string) *KV { return NewKV() }
	}
	r.lookup.Store(&map[string]*Module{})
	return r, nil
}

func cmp[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Module returns the handle of the named module, creating an empty entry if
// it has never been loaded. Holding the handle saves a lookup per call.
func (r *Registry) Module(name string) *Module {
	if m := (*r.lookup.Load())[name]; m != nil {
		return m
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.modules[name]; m != nil {
		return m
	}
	m := &Module{name: name, reg: r, state: r.newState(name)}
	m.route.Store(r.baseRoute())
	r.modules[name] = m
	next := make(map[string]*Module, len(r.modules))
	for k, v := range r.modules {
		next[k] = v
	}
	r.lookup.Store(&next)
	return m
}

// Call runs handler of the named module's active version.
func (r *Registry) Call(ctx context.Context, module, handler string, in []byte) ([]byte, error) {
	m := (*r.lookup.Load())[module]
	if m == nil {
		return nil, fmt.Errorf("call %s %s: %w", module, handler, ErrNotFound)
	}
	return m.Call(ctx, handler, in)
}

// Load prepares src as the next version of the named module and, if every
// check passes, activates it: Prepare followed by Activate. The version that
// was active stays warm as the previous version; the one before that drains
// and closes. If any check fails, Load returns a *LoadError (matching
// ErrRejected) and nothing changes. A concurrent change of the same module
// fails with ErrBusy. Cancelling ctx aborts the preparation.
func (r *Registry) Load(ctx context.Context, name string, src Source) (VersionStatus, error) {
	p, err := r.Prepare(ctx, name, src)
	if err != nil {
		return VersionStatus{}, err
	}
	return p.Activate(ctx)
}

// Rollback makes the previous version of the named module active again, at
// once: it is still warm. The version rolled back from drains and closes.
// It is PrepareRollback followed by Activate.
func (r *Registry) Rollback(ctx context.Context, name string) (VersionStatus, error) {
	p, err := r.PrepareRollback(ctx, name)
	if err != nil {
		return VersionStatus{}, err
	}
	return p.Activate(ctx)
}

// Status describes every module that has a version or state, sorted by
// name.
func (r *Registry) Status() []Status {
	mods := *r.lookup.Load()
	out := make([]Status, 0, len(mods))
	for _, m := range mods {
		st := m.Status()
		if st.Active == nil && st.Previous == nil && len(st.Draining) == 0 && st.StateKeys == 0 {
			continue // a handle taken before any load
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b Status) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Close stops taking calls and loads, drains every version (bounded by the
// drain timeout and by ctx) and closes the backend.
func (r *Registry) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	mods := make([]*Module, 0, len(r.modules))
	for _, m := range r.modules {
		mods = append(mods, m)
	}
	r.mu.Unlock()

	for _, m := range mods {
		m.mu.Lock()
		c := m.canary
		m.mu.Unlock()
		if c != nil {
			c.Abort()
		}
		m.mu.Lock()
		cur, prev := m.active.Swap(nil), m.previous
		m.previous = nil
		m.mu.Unlock()
		r.retire(m, cur)
		r.retire(m, prev)
	}
	done := make(chan struct{})
	go func() { r.drains.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("close registry: %w", ctx.Err())
	}
	return r.backend.Close(ctx)
}

// baseRoute is the route of a module without a canary: nil, unless calls
// are timed, labelled or traced.
func (r *Registry) baseRoute() *route {
	if r.timeCalls == 0 && !r.labels && r.spans == nil {
		return nil
	}
	rt := &route{}
	if r.timeCalls > 0 {
		rt = timingRoute(r.timeCalls)
	}
	rt.labels, rt.spans = r.labels, r.spans
	return rt
}

// canaryRoute is the route of a canary at weight w.
func (r *Registry) canaryRoute(canary *version, salt uint64, w float64) *route {
	rt := newRoute(canary, salt, w)
	rt.labels, rt.spans = r.labels, r.spans
	return rt
}

// clock reads the monotonic clock, for call latencies: one clock read,
// where time.Now reads two.
func (r *Registry) clock() time.Duration { return time.Since(r.epoch) }

func (r *Registry) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// retire drains v in the background and closes it.
func (r *Registry) retire(m *Module, v *version) {
	if v == nil {
		return
	}
	m.mu.Lock()
	m.draining = append(m.draining, v)
	m.mu.Unlock()
	v.retire()
	r.drains.Add(1)
	go func() {
		defer r.drains.Done()
		t := time.NewTimer(r.drainTimeout)
		defer t.Stop()
		select {
		case <-v.drained:
		case <-t.C:
			r.log.Warn("drain deadline passed; closing version under running calls",
				logkey.Module, m.name, logkey.Version, v.name, "in_flight", v.inFlight())
		}
		if err := v.code.Close(context.Background()); err != nil {
			r.log.Warn("close version", logkey.Module, m.name, logkey.Version, v.name, logkey.Err, err)
		}
		m.mu.Lock()
		m.draining = slices.DeleteFunc(m.draining, func(d *version) bool { return d == v })
		m.mu.Unlock()
	}()
}

// loadError completes a backend's *LoadError with the module and version,
// or wraps any other error as one with the given check.
func loadError(module, version, check string, err error) error {
	var le *LoadError
	if errors.As(err, &le) {
		le.Module, le.Version = module, version
		return le
	}
	return &LoadError{Module: module, Version: version, Check: check, Err: err}
}
