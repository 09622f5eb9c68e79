package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
)

// Defaults of AgentOptions.
const (
	// DefaultLeaseTTL is how long an instance's applied state outlives its
	// last keep-alive: a dead instance leaves its group that much later.
	DefaultLeaseTTL = 5 * time.Second
	// DefaultRequestTimeout bounds one etcd request.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultApplyTimeout bounds one change: fetch, verify, prepare and,
	// with a canary policy, the canary.
	DefaultApplyTimeout = 10 * time.Minute
	// DefaultRetry is the pause after etcd failed or an apply failed for a
	// reason that may pass (a fetch, a busy module), before trying again.
	DefaultRetry = time.Second
)

// Assignment is what stable and target/<instance> hold: a spec, and the
// rollout and writer it comes from, for the audit log.
type Assignment struct {
	Spec     Spec   `json:"spec"`
	Rollout  int64  `json:"rollout"`
	Writer   string `json:"writer"`
	Instance string `json:"instance,omitempty"` // set on targets
}

// AgentOptions configures an Agent.
type AgentOptions struct {
	// Client reaches etcd. Required; the caller closes it after Run
	// returned.
	Client *clientv3.Client
	// Host applies and verifies. Required. Call its RestoreModules before
	// Run, so the instance serves its last-known-good versions whether
	// etcd answers or not.
	Host *host.Host
	// Group and Instance name the service group and this instance within
	// it (letters, digits, '-', '_', '.'). Required.
	Group, Instance string
	// Prefix is the key prefix of every group. Defaults to DefaultPrefix.
	Prefix string
	// LeaseTTL is the lease of the applied state. Defaults to
	// DefaultLeaseTTL (5s); etcd counts it in whole seconds.
	LeaseTTL time.Duration
	// RequestTimeout bounds one etcd request. Defaults to
	// DefaultRequestTimeout (5s).
	RequestTimeout time.Duration
	// ApplyTimeout bounds one change. Defaults to DefaultApplyTimeout
	// (10m).
	ApplyTimeout time.Duration
	// Retry is the pause before trying again after a failure that may
	// pass. Defaults to DefaultRetry (1s).
	Retry time.Duration
	// MaxModuleSize bounds a fetched payload. Defaults to
	// host.DefaultMaxModuleSize (32 MiB).
	MaxModuleSize int64
	// HTTPClient fetches http(s) URLs and talks to OCI registries.
	// Defaults to http.DefaultClient.
	HTTPClient *http.Client
	// OCI says how to reach OCI registries; the zero value is the secure
	// default (see OCIOptions).
	OCI OCIOptions
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Agent keeps one instance's modules on what etcd assigns it and reports
// what it applied. Run drives it; Applied is safe for concurrent use.
type Agent struct {
	opts AgentOptions
	keys keys
	log  *slog.Logger

	mu      sync.Mutex // protects applied and reports
	applied Applied
	reports chan struct{} // closed and replaced at every report

	// Owned by Run.
	want      Assignment
	hasWant   bool
	retryID   string   // the spec whose last apply failed in a way that may pass
	refused   *Applied // the report of the last spec refused: not tried again
	refusedIn int64    // in this rollout
}

// NewAgent checks opts and returns an agent; Run starts it.
func NewAgent(opts AgentOptions) (*Agent, error) {
	switch {
	case opts.Client == nil:
		return nil, errors.New("fleet: AgentOptions.Client is required")
	case opts.Host == nil:
		return nil, errors.New("fleet: AgentOptions.Host is required")
	}
	if err := validName(opts.Group); err != nil {
		return nil, fmt.Errorf("fleet: group: %w", err)
	}
	if err := validName(opts.Instance); err != nil {
		return nil, fmt.Errorf("fleet: instance: %w", err)
	}
	opts.Prefix = cmpOr(opts.Prefix, DefaultPrefix)
	opts.LeaseTTL = orDuration(opts.LeaseTTL, DefaultLeaseTTL)
	opts.RequestTimeout = orDuration(opts.RequestTimeout, DefaultRequestTimeout)
	opts.ApplyTimeout = orDuration(opts.ApplyTimeout, DefaultApplyTimeout)
	opts.Retry = orDuration(opts.Retry, DefaultRetry)
	if opts.MaxModuleSize <= 0 {
		opts.MaxModuleSize = host.DefaultMaxModuleSize
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{opts: opts, keys: newKeys(opts.Prefix, opts.Group), log: log.With("group", opts.Group, "instance", opts.Instance),
		reports: make(chan struct{})}
	a.applied = a.observe(Spec{}, nil, "last-known-good")
	return a, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Applied returns the agent's last report, and a channel closed at its
// next one.
func (a *Agent) Applied() (Applied, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied, a.reports
}

// Run keeps the instance on its assignment until ctx ends, then returns
// ctx's error. While etcd is unreachable the host keeps serving what it
// has, and Run keeps trying; once etcd answers it reads its assignment
// afresh (also after a watch was compacted) and applies it.
func (a *Agent) Run(ctx context.Context) error {
	var sess *concurrency.Session
	defer func() {
		if sess != nil {
			a.closeSession(sess)
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if sess == nil {
			s, err := a.newSession(ctx)
			if err != nil {
				a.log.Warn("fleet: etcd unreachable; serving what the host has", "err", err)
				if !sleep(ctx, a.opts.Retry) {
					return ctx.Err()
				}
				continue
			}
			sess = s
		}
		err := a.follow(ctx, sess)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-sess.Done():
			a.log.Warn("fleet: lease lost; taking a new one", "err", err)
			a.closeSession(sess)
			sess = nil
		default:
		}
		if err != nil {
			a.log.Warn("fleet: resync", "err", err)
			if !sleep(ctx, a.opts.Retry) {
				return ctx.Err()
			}
		}
	}
}

func (a *Agent) closeSession(s *concurrency.Session) {
	// Close revokes the lease, so the instance leaves its group at once;
	// bounded, as etcd may be gone.
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.RequestTimeout)
	defer cancel()
	s.Orphan()
	a.opts.Client.Revoke(ctx, s.Lease())
}

// newSession grants a lease (bounded, so an unreachable etcd is noticed)
// and keeps it alive until ctx ends.
func (a *Agent) newSession(ctx context.Context) (*concurrency.Session, error) {
	rctx, cancel := context.WithTimeout(ctx, a.opts.RequestTimeout)
	defer cancel()
	lease, err := a.opts.Client.Grant(rctx, int64(max(1, a.opts.LeaseTTL/time.Second)))
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	return concurrency.NewSession(a.opts.Client, concurrency.WithLease(lease.ID), concurrency.WithContext(ctx))
}

// follow reads the assignment, applies it, reports, and watches for the
// next change, until the watch ends (compaction, lost leader, lost lease)
// or ctx does.
func (a *Agent) follow(ctx context.Context, sess *concurrency.Session) error {
	rev, err := a.read(ctx)
	if err != nil {
		return err
	}
	if err := a.apply(ctx, sess); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	target := a.opts.Client.Watch(wctx, a.keys.target(a.opts.Instance), clientv3.WithRev(rev+1))
	stable := a.opts.Client.Watch(wctx, a.keys.stable(), clientv3.WithRev(rev+1))
	var retry <-chan time.Time
	if a.pendingRetry() {
		retry = time.After(a.opts.Retry)
	}
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return errors.New("lease expired")
		case <-retry:
			retry = nil
			if err := a.apply(ctx, sess); err != nil {
				return err
			}
			if a.pendingRetry() {
				retry = time.After(a.opts.Retry)
			}
			continue
		case wr, ok = <-target:
		case wr, ok = <-stable:
		}
		if !ok {
			return errors.New("watch closed")
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch: %w", err) // compacted or no leader: read afresh
		}
		if len(wr.Events) == 0 {
			continue
		}
		if _, err := a.read(ctx); err != nil {
			return err
		}
		if err := a.apply(ctx, sess); err != nil {
			return err
		}
		if a.pendingRetry() {
			retry = time.After(a.opts.Retry)
		}
	}
}

// read reads the instance's target and the group's stable spec in one
// transaction and returns its revision.
func (a *Agent) read(ctx context.Context) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, a.opts.RequestTimeout)
	defer cancel()
	resp, err := a.opts.Client.Txn(rctx).Then(
		clientv3.OpGet(a.keys.target(a.opts.Instance)),
		clientv3.OpGet(a.keys.stable()),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("read assignment: %w", err)
	}
	a.hasWant = false
	for _, r := range resp.Responses {
		kvs := r.GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue
		}
		as, err := decode[Assignment](string(kvs[0].Key), kvs[0].Value)
		if err == nil {
			err = as.Spec.Validate()
		}
		if err != nil {
			// A record this instance cannot use: keep what serves.
			a.log.Error("fleet: assignment refused; keeping what serves", "key", string(kvs[0].Key), "err", err)
			continue
		}
		a.want, a.hasWant = as, true
		break // the target, when there is one, wins
	}
	return resp.Header.Revision, nil
}

func (a *Agent) pendingRetry() bool { return a.hasWant && a.retryID == a.want.Spec.ID() }

// apply brings the host to the wanted spec and reports under sess's lease.
// It returns an error only when the report could not be written.
func (a *Agent) apply(ctx context.Context, sess *concurrency.Session) error {
	if !a.hasWant {
		return a.report(ctx, sess, a.observe(Spec{}, nil, "etcd"))
	}
	spec := a.want.Spec
	id := spec.ID()
	if a.refused != nil && a.refused.Spec == id && a.refusedIn == a.want.Rollout {
		// Refusals are final for a spec within a rollout: report it
		// again, do not retry. A new rollout of it tries again.
		ap := *a.refused
		ap.Time = time.Now().UTC()
		return a.report(ctx, sess, ap)
	}
	if !a.serves(spec) {
		// Say so before the work (a fetch, a compile, a canary): the
		// controller waits for a pending instance.
		if err := a.report(ctx, sess, a.observe(spec, nil, "etcd")); err != nil {
			return err
		}
	}
	results := map[string]ModuleApplied{}
	retryable := false
	actx, cancel := context.WithTimeout(host.WithActor(ctx, fmt.Sprintf("fleet:%s@%d", cmpOr(a.want.Writer, "controller"), a.want.Rollout)), a.opts.ApplyTimeout)
	defer cancel()
	for _, name := range slices.Sorted(maps.Keys(spec.Modules)) {
		r := a.applyModule(actx, sess, name, spec.Modules[name])
		if r.Result == ResultFailed {
			retryable = true
		}
		results[name] = r
	}
	a.retryID = ""
	if retryable {
		a.retryID = id
	}
	ap := a.observe(spec, results, "etcd")
	a.refused = nil
	if ap.Result == ResultRefused {
		a.refused, a.refusedIn = &ap, a.want.Rollout
	}
	return a.report(ctx, sess, ap)
}

// serves reports whether the host's active versions are those of spec.
func (a *Agent) serves(spec Spec) bool {
	for name, m := range spec.Modules {
		pin, err := parseDigest(m.Digest)
		if st := a.status(name); err != nil || st.Active == nil || st.Active.Digest != pin.Hex() || !a.splitServes(name, m) {
			return false
		}
	}
	return true
}

// applyModule brings one module to m: its version, then its A/B split
// (see split.go).
func (a *Agent) applyModule(ctx context.Context, sess *concurrency.Session, name string, m ModuleSpec) ModuleApplied {
	a.endStaleSplit(ctx, name, m)
	return a.applySplit(ctx, name, m, a.applyVersion(ctx, sess, name, m))
}

// applyVersion brings module name's active version to m's. A version the
// host already serves is kept; the warm previous version is restored by a
// rollback; anything else is fetched by digest and handed to the host's
// trust path.
func (a *Agent) applyVersion(ctx context.Context, sess *concurrency.Session, name string, m ModuleSpec) ModuleApplied {
	pin, err := parseDigest(m.Digest)
	if err != nil {
		return ModuleApplied{Result: ResultRefused, Check: "spec", Error: err.Error()}
	}
	st := a.status(name)
	if st.Active != nil && st.Active.Digest == pin.Hex() {
		return a.kept(name, ModuleApplied{Result: ResultOK})
	}
	if st.Previous != nil && st.Previous.Digest == pin.Hex() {
		vs, err := a.opts.Host.Rollback(ctx, name)
		if err == nil {
			return ModuleApplied{Result: ResultOK, Version: vs.Version, Digest: vs.Digest}
		}
		a.log.Warn("fleet: rollback to the warm version failed; fetching it", "module", name, "err", err)
	}
	f, err := Source{HTTPClient: a.opts.HTTPClient, OCI: a.opts.OCI}.Fetch(ctx, m, a.opts.MaxModuleSize)
	if err != nil {
		return a.refusal(name, err)
	}
	label := fmt.Sprintf("%s@%s", name, pin.Short())
	if m.Canary != nil && st.Active != nil {
		return a.canary(ctx, sess, name, label, m, f)
	}
	vs, err := a.opts.Host.LoadArtifact(ctx, name, label, f.Payload, f.Manifest)
	if err != nil {
		return a.refusal(name, err)
	}
	return ModuleApplied{Result: ResultOK, Version: vs.Version, Digest: vs.Digest}
}

// canary runs f as a canary of module name and waits for its end,
// reporting it pending meanwhile.
func (a *Agent) canary(ctx context.Context, sess *concurrency.Session, name, label string, m ModuleSpec, f Fetched) ModuleApplied {
	cs, err := a.opts.Host.CanaryReader(ctx, name, label, f.Manifest, bytes.NewReader(f.Payload), m.Canary.Policy())
	if err != nil {
		return a.refusal(name, err)
	}
	pending := a.observe(a.want.Spec, map[string]ModuleApplied{name: {Result: ResultPending, Canary: string(cs.State)}}, "etcd")
	pending.Result = ResultPending
	if err := a.report(ctx, sess, pending); err != nil {
		a.log.Warn("fleet: report a pending canary", "module", name, "err", err)
	}
	seq := 0
	for cs.State != canary.Promoted && cs.State != canary.Aborted {
		var vs []canary.Verdict
		vs, cs, err = a.opts.Host.WatchCanary(ctx, name, cs.ID, seq)
		if err != nil {
			// Out of time: the canary must not outlive the change.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.RequestTimeout)
			a.opts.Host.CanaryCommand(host.WithActor(actx, "fleet"), name, canary.Abort)
			cancel()
			return ModuleApplied{Result: ResultFailed, Check: "canary", Error: fmt.Sprintf("canary of %s: %v", label, err)}
		}
		seq += len(vs)
	}
	if err := host.CanaryResult(cs); err != nil {
		return ModuleApplied{Result: ResultRefused, Check: "canary", Error: err.Error(), Canary: canaryNote(cs)}
	}
	return ModuleApplied{Result: ResultOK, Version: cs.Version, Digest: cs.Digest, Canary: canaryNote(cs)}
}

func canaryNote(cs host.CanaryStatus) string {
	if cs.Last != nil {
		return fmt.Sprintf("%s: %s", cs.State, cs.Last)
	}
	return string(cs.State)
}

// refusal turns a failed change into a report: the trust path's and the
// module's refusals name their check; anything else may pass and is
// retried.
func (a *Agent) refusal(name string, err error) ModuleApplied {
	a.log.Warn("fleet: change refused; keeping what serves", "module", name, "err", err)
	var ve *artifact.VerifyError
	var le *module.LoadError
	switch {
	case errors.As(err, &ve):
		return a.kept(name, ModuleApplied{Result: ResultRefused, Check: string(ve.Check), Error: err.Error()})
	case errors.As(err, &le):
		return a.kept(name, ModuleApplied{Result: ResultRefused, Check: le.Check, Error: err.Error()})
	case errors.Is(err, ErrInvalid):
		return a.kept(name, ModuleApplied{Result: ResultRefused, Check: "spec", Error: err.Error()})
	case errors.Is(err, ErrFetch):
		return a.kept(name, ModuleApplied{Result: ResultFailed, Check: "fetch", Error: err.Error()})
	}
	return a.kept(name, ModuleApplied{Result: ResultFailed, Error: err.Error()})
}

// kept fills r with the version module name serves.
func (a *Agent) kept(name string, r ModuleApplied) ModuleApplied {
	if st := a.status(name); st.Active != nil {
		r.Version, r.Digest = st.Active.Version, st.Active.Digest
	}
	return r
}

func (a *Agent) status(name string) module.Status {
	for _, st := range a.opts.Host.Status() {
		if st.Name == name {
			return st
		}
	}
	return module.Status{Name: name}
}

// observe builds a report of spec from results; modules without a result
// are described as the host serves them.
func (a *Agent) observe(spec Spec, results map[string]ModuleApplied, source string) Applied {
	ap := Applied{Instance: a.opts.Instance, Modules: map[string]ModuleApplied{}, Source: source, Time: time.Now().UTC(), Result: ResultOK, Health: "serving"}
	if len(spec.Modules) > 0 {
		ap.Spec = spec.ID()
	}
	for _, st := range a.opts.Host.Status() {
		if st.Active != nil {
			ap.Modules[st.Name] = ModuleApplied{Result: ResultOK, Version: st.Active.Version, Digest: st.Active.Digest, B: a.splitApplied(st.Name)}
		}
	}
	var missing []string
	for _, name := range slices.Sorted(maps.Keys(spec.Modules)) {
		r, ok := results[name]
		if !ok {
			r = a.kept(name, ModuleApplied{Result: ResultPending})
		}
		ap.Modules[name] = r
		if r.Result != ResultOK && (ap.Result == ResultOK || r.Result != ResultPending) {
			ap.Result = r.Result
		}
		if a.status(name).Active == nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		ap.Health = fmt.Sprintf("no active version of %v", missing)
	}
	return ap
}

// report publishes ap locally and, under the session's lease, in etcd.
func (a *Agent) report(ctx context.Context, sess *concurrency.Session, ap Applied) error {
	a.mu.Lock()
	a.applied = ap
	close(a.reports)
	a.reports = make(chan struct{})
	a.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, a.opts.RequestTimeout)
	defer cancel()
	if _, err := a.opts.Client.Put(rctx, a.keys.applied(a.opts.Instance), encode(ap), clientv3.WithLease(sess.Lease())); err != nil {
		return fmt.Errorf("report applied state: %w", err)
	}
	return nil
}

// sleep waits d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
