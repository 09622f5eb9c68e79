package fleet

import (
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
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
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
	// DefaultMaxBinarySize bounds a fetched binary, held in memory while
	// it is checked against its pin.
	DefaultMaxBinarySize = 512 << 20
)

// ErrReplaced is what Run returns once the agent's own process handed over
// to a new one through a binary upgrade: the new process's agent reports
// for the instance from then on, under the same instance name. The lease
// is left to expire, not revoked, so the instance never leaves its group.
var ErrReplaced = errors.New("fleet: this process handed over to a new one")

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
	// Host applies and verifies, in the agent's own process: the same as
	// Service: HostService(Host). Call its RestoreModules before Run, so
	// the instance serves its last-known-good versions whether etcd
	// answers or not. One of Host and Service is required.
	Host *host.Host
	// Service applies and verifies: HostService for a host in this
	// process, SocketService for a service beside it (a sidecar). One of
	// Host and Service is required.
	Service Service
	// Group and Instance name the service group and this instance within
	// it (letters, digits, '-', '_', '.'). Required.
	Group, Instance string
	// Prefix is the key prefix of every group. Defaults to DefaultPrefix.
	Prefix string
	// LeaseTTL is the lease of the applied state. Defaults to
	// DefaultLeaseTTL (5s); etcd counts it in whole seconds.
	LeaseTTL time.Duration
	// RequestTimeout bounds one etcd request, and one status request to
	// the service. Defaults to DefaultRequestTimeout (5s).
	RequestTimeout time.Duration
	// ApplyTimeout bounds one change. Defaults to DefaultApplyTimeout
	// (10m).
	ApplyTimeout time.Duration
	// Retry is the pause before trying again after a failure that may
	// pass, and between looks at a process that waits for its parent to
	// commit its upgrade. Defaults to DefaultRetry (1s).
	Retry time.Duration
	// MaxModuleSize bounds a fetched payload. Defaults to
	// host.DefaultMaxModuleSize (32 MiB).
	MaxModuleSize int64
	// MaxBinarySize bounds a fetched binary. Defaults to
	// DefaultMaxBinarySize (512 MiB).
	MaxBinarySize int64
	// HTTPClient fetches http(s) URLs and talks to OCI registries.
	// Defaults to http.DefaultClient.
	HTTPClient *http.Client
	// OCI says how to reach OCI registries; the zero value is the secure
	// default (see OCIOptions).
	OCI OCIOptions
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Agent keeps one instance's binary and modules on what etcd assigns it
// and reports what it applied. Run drives it; Applied is safe for
// concurrent use.
type Agent struct {
	opts AgentOptions
	svc  Service
	keys keys
	log  *slog.Logger

	mu      sync.Mutex // protects applied and reports
	applied Applied
	reports chan struct{} // closed and replaced at every report

	// Owned by Run.
	want     Assignment
	hasWant  bool
	retryID  string   // the spec whose last apply failed in a way that may pass, or waits
	final    *Applied // the report of the last spec that failed for good: not tried again
	finalIn  int64    // in this rollout
	replaced bool     // this process handed over to a new one
}

// NewAgent checks opts and returns an agent; Run starts it. It asks the
// service for its state once (bounded by RequestTimeout), so Applied
// describes the instance before etcd answers.
func NewAgent(opts AgentOptions) (*Agent, error) {
	switch {
	case opts.Client == nil:
		return nil, errors.New("fleet: AgentOptions.Client is required")
	case opts.Host == nil && opts.Service == nil:
		return nil, errors.New("fleet: AgentOptions.Host or AgentOptions.Service is required")
	case opts.Host != nil && opts.Service != nil:
		return nil, errors.New("fleet: set AgentOptions.Host or AgentOptions.Service, not both")
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
	if opts.MaxBinarySize <= 0 {
		opts.MaxBinarySize = DefaultMaxBinarySize
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	svc := opts.Service
	if svc == nil {
		svc = HostService(opts.Host)
	}
	a := &Agent{opts: opts, svc: svc, keys: newKeys(opts.Prefix, opts.Group), log: log.With("group", opts.Group, "instance", opts.Instance),
		reports: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), opts.RequestTimeout)
	defer cancel()
	a.applied = a.observe(a.look(ctx), Spec{}, nil, nil, "last-known-good")
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
// ctx's error. While etcd is unreachable the service keeps serving what it
// has, and Run keeps trying; once etcd answers it reads its assignment
// afresh (also after a watch was compacted) and applies it. Once its own
// process handed over to a new one (a binary upgrade), Run returns
// ErrReplaced.
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
				a.log.Warn("fleet: etcd unreachable; serving what the service has", logkey.Err, err)
				if !sleep(ctx, a.opts.Retry) {
					return ctx.Err()
				}
				continue
			}
			sess = s
		}
		err := a.follow(ctx, sess)
		if errors.Is(err, ErrReplaced) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-sess.Done():
			a.log.Warn("fleet: lease lost; taking a new one", logkey.Err, err)
			a.closeSession(sess)
			sess = nil
		default:
		}
		if err != nil {
			a.log.Warn("fleet: resync", logkey.Err, err)
			if !sleep(ctx, a.opts.Retry) {
				return ctx.Err()
			}
		}
	}
}

func (a *Agent) closeSession(s *concurrency.Session) {
	s.Orphan()
	if a.replaced {
		// The new process reports under its own lease; until its first
		// report the instance stays in its group under this one.
		return
	}
	// Revoking the lease makes the instance leave its group at once;
	// bounded, as etcd may be gone.
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.RequestTimeout)
	defer cancel()
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
			a.log.Error("fleet: assignment refused; keeping what serves", "key", string(kvs[0].Key), logkey.Err, err)
			continue
		}
		a.want, a.hasWant = as, true
		break // the target, when there is one, wins
	}
	return resp.Header.Revision, nil
}

func (a *Agent) pendingRetry() bool { return a.hasWant && a.retryID == a.want.Spec.ID() }

// source fetches artifacts as the options say.
func (a *Agent) source() Source { return Source{HTTPClient: a.opts.HTTPClient, OCI: a.opts.OCI} }

// look asks the service for its state, bounded by RequestTimeout; an
// unreachable service is described by the error it gave.
func (a *Agent) look(ctx context.Context) serviceView {
	rctx, cancel := context.WithTimeout(ctx, a.opts.RequestTimeout)
	defer cancel()
	st, err := a.svc.Status(rctx)
	return serviceView{ServiceStatus: st, err: err}
}

// serviceView is a status of the service, or why there is none.
type serviceView struct {
	ServiceStatus
	err error
}

// binaryStep is where a binary change leaves the apply.
type binaryStep int

const (
	binaryDone     binaryStep = iota // the binary is the spec's (or the spec pins none): on to the modules
	binaryWait                       // the process waits for its parent to commit it: look again later
	binaryRetry                      // failed in a way that may pass: try again later
	binaryFinal                      // refused or failed for good in this rollout
	binaryReplaced                   // this process handed over to a new one
)

// apply brings the service to the wanted spec and reports under sess's
// lease: the binary first, then, in the process that runs the spec's
// binary once it serves alone, the modules. It returns an error only when
// the report could not be written, or ErrReplaced.
func (a *Agent) apply(ctx context.Context, sess *concurrency.Session) error {
	v := a.look(ctx)
	if !a.hasWant {
		return a.report(ctx, sess, a.observe(v, Spec{}, nil, nil, "etcd"))
	}
	spec := a.want.Spec
	id := spec.ID()
	if a.final != nil && a.final.Spec == id && a.finalIn == a.want.Rollout {
		// Refusals are final for a spec within a rollout: report it
		// again, do not retry. A new rollout of it tries again.
		ap := *a.final
		ap.Time = time.Now().UTC()
		if v.PID != 0 {
			ap.PID = v.PID
		}
		return a.report(ctx, sess, ap)
	}
	a.retryID = ""
	if v.err != nil {
		a.retryID = id
		return a.report(ctx, sess, a.observe(v, spec, nil, nil, "etcd"))
	}
	if !serves(v, spec) {
		// Say so before the work (a fetch, a compile, an upgrade, a
		// canary): the controller waits for a pending instance.
		if err := a.report(ctx, sess, a.observe(v, spec, nil, nil, "etcd")); err != nil {
			return err
		}
	}
	actx, cancel := context.WithTimeout(host.WithActor(ctx, fmt.Sprintf("fleet:%s@%d", cmpOr(a.want.Writer, "controller"), a.want.Rollout)), a.opts.ApplyTimeout)
	defer cancel()
	bin, step := a.applyBinary(actx, v, spec.Binary)
	switch step {
	case binaryReplaced:
		a.replaced = true
		return ErrReplaced
	case binaryDone:
		if bin != nil && bin.Result == ResultOK && v.Binary.Digest != bin.Digest {
			v = a.look(ctx) // the new process answers now
		}
	case binaryWait, binaryRetry:
		a.retryID = id
	}
	results := map[string]ModuleApplied{}
	if step == binaryDone {
		for _, name := range slices.Sorted(maps.Keys(spec.Modules)) {
			r := a.applyModule(actx, sess, v, name, spec.Modules[name])
			if r.Result == ResultFailed {
				a.retryID = id
			}
			results[name] = r
		}
		v = a.look(ctx)
	}
	ap := a.observe(v, spec, results, bin, "etcd")
	a.final = nil
	if ap.Result == ResultRefused || step == binaryFinal {
		a.final, a.finalIn = &ap, a.want.Rollout
	}
	return a.report(ctx, sess, ap)
}

// serves reports whether the service runs spec: its binary, in a process
// that serves alone, and its modules' active versions.
func serves(v serviceView, spec Spec) bool {
	if b := spec.Binary; b != nil {
		pin, err := parseDigest(b.Digest)
		if err != nil || v.Binary.Digest != pin.Hex() || v.TakingOver {
			return false
		}
	}
	for name, m := range spec.Modules {
		pin, err := parseDigest(m.Digest)
		if st := v.module(name); err != nil || st.Active == nil || st.Active.Digest != pin.Hex() || !splitServes(v, name, m) {
			return false
		}
	}
	return true
}

// applyBinary brings the service's binary to b (nil: whatever it runs).
// A process started by an upgrade waits for its parent to commit it before
// it counts as running b, and changes nothing meanwhile: if it dies, the
// parent serves again. Anything else is fetched by digest and handed to
// the service's upgrade, which verifies it as a binary of the service.
func (a *Agent) applyBinary(ctx context.Context, v serviceView, b *BinarySpec) (*ModuleApplied, binaryStep) {
	if b == nil {
		if v.TakingOver {
			return nil, binaryWait
		}
		return nil, binaryDone
	}
	pin, err := parseDigest(b.Digest)
	if err != nil {
		return &ModuleApplied{Result: ResultRefused, Check: "spec", Error: err.Error()}, binaryFinal
	}
	running := ModuleApplied{Version: v.Binary.Version, Digest: v.Binary.Digest}
	switch {
	case v.Binary.Digest == pin.Hex() && v.TakingOver:
		running.Result, running.Version = ResultPending, cmpOr(running.Version, b.Version)
		running.Check, running.Error = "probation", "the upgrade is not committed yet"
		return &running, binaryWait
	case v.Binary.Digest == pin.Hex():
		running.Result, running.Version = ResultOK, cmpOr(running.Version, b.Version)
		return &running, binaryDone
	case v.TakingOver:
		// Started by an upgrade to another binary: it cannot upgrade
		// before its parent committed it.
		running.Result = ResultPending
		return &running, binaryWait
	case !v.Upgrades:
		running.Result, running.Check = ResultRefused, "upgrade"
		running.Error = fmt.Sprintf("binary %s: the service runs without binary upgrades", b.Version)
		return &running, binaryFinal
	case v.Binary.Digest == "":
		running.Result, running.Check = ResultFailed, "binary"
		running.Error = fmt.Sprintf("the running binary is unknown (%s), so it cannot be compared with the pin", v.Binary.Error)
		return &running, binaryFinal
	}
	label := fmt.Sprintf("binary@%s", pin.Short())
	f, err := a.source().Fetch(ctx, b.source(), a.opts.MaxBinarySize)
	if err == nil {
		var up Upgraded
		if up, err = a.svc.Upgrade(ctx, label, f); err == nil {
			if up.Replaced {
				a.log.Info("fleet: binary upgrade committed; the new process reports from now on", "binary", b.Version, logkey.PID, up.PID)
				return nil, binaryReplaced
			}
			return &ModuleApplied{Result: ResultOK, Version: b.Version, Digest: pin.Hex()}, binaryDone
		}
	}
	a.log.Warn("fleet: binary upgrade refused or failed; keeping the running binary", "binary", b.Version, logkey.Err, err)
	r, step := binaryRefusal(err)
	r.Version, r.Digest = running.Version, running.Digest
	return &r, step
}

// binaryRefusal turns a failed binary change into a report. A refusal of
// the trust path names its check; a new process that did not take over
// names its stage ("start", "init", "probation") and is final for the
// rollout (the same binary would fail again); a busy upgrader or a fetch
// may pass and is retried.
func binaryRefusal(err error) (ModuleApplied, binaryStep) {
	check, refused := checkOf(err)
	var ce *upgrade.ChildError
	var ctlErr *control.Error
	switch {
	case refused:
		return ModuleApplied{Result: ResultRefused, Check: check, Error: err.Error()}, binaryFinal
	case errors.Is(err, upgrade.ErrUpgradeInProgress), errors.Is(err, control.ErrBusy):
		return ModuleApplied{Result: ResultFailed, Check: "busy", Error: err.Error()}, binaryRetry
	case errors.As(err, &ce) && ce.Stage != "prepare" && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded):
		return ModuleApplied{Result: ResultFailed, Check: ce.Stage, Error: err.Error()}, binaryFinal
	case errors.As(err, &ctlErr) && ctlErr.Kind == control.KindUpgradeFailed:
		return ModuleApplied{Result: ResultFailed, Check: "init", Error: err.Error()}, binaryFinal
	case errors.As(err, &ctlErr) && ctlErr.Kind == control.KindRolledBack:
		return ModuleApplied{Result: ResultFailed, Check: "probation", Error: err.Error()}, binaryFinal
	}
	return ModuleApplied{Result: ResultFailed, Check: check, Error: err.Error()}, binaryRetry
}

// checkOf names the check that refused err and reports whether it was a
// refusal (the artifact failed a check) rather than a failure that may
// pass; the check of a fetch is "fetch".
func checkOf(err error) (string, bool) {
	var ve *artifact.VerifyError
	var le *module.LoadError
	var ce *control.Error
	switch {
	case errors.As(err, &ve):
		return string(ve.Check), true
	case errors.As(err, &le):
		return le.Check, true
	case errors.As(err, &ce) && ce.Kind == control.KindRejected:
		return ce.Check, true
	case errors.Is(err, ErrInvalid):
		return "spec", true
	case errors.Is(err, ErrNoSplits):
		return "split", true
	case errors.Is(err, ErrFetch):
		return "fetch", false
	}
	return "", false
}

// applyModule brings one module to m: its version, then its A/B split
// (see split.go).
func (a *Agent) applyModule(ctx context.Context, sess *concurrency.Session, v serviceView, name string, m ModuleSpec) ModuleApplied {
	v = a.endStaleSplit(ctx, v, name, m)
	return a.applySplit(ctx, v, name, m, a.applyVersion(ctx, sess, v, name, m))
}

// applyVersion brings module name's active version to m's. A version the
// service already serves is kept; the warm previous version is restored
// by a rollback; anything else is fetched by digest and handed to the
// service's trust path.
func (a *Agent) applyVersion(ctx context.Context, sess *concurrency.Session, v serviceView, name string, m ModuleSpec) ModuleApplied {
	pin, err := parseDigest(m.Digest)
	if err != nil {
		return ModuleApplied{Result: ResultRefused, Check: "spec", Error: err.Error()}
	}
	st := v.module(name)
	if st.Active != nil && st.Active.Digest == pin.Hex() {
		return kept(st, ModuleApplied{Result: ResultOK})
	}
	if st.Previous != nil && st.Previous.Digest == pin.Hex() {
		vs, err := a.svc.Rollback(ctx, name)
		if err == nil {
			return ModuleApplied{Result: ResultOK, Version: vs.Version, Digest: vs.Digest}
		}
		a.log.Warn("fleet: rollback to the warm version failed; fetching it", logkey.Module, name, logkey.Err, err)
	}
	f, err := a.source().Fetch(ctx, m, a.opts.MaxModuleSize)
	if err != nil {
		return a.refusal(st, err)
	}
	label := fmt.Sprintf("%s@%s", name, pin.Short())
	if m.Canary != nil && st.Active != nil {
		return a.canary(ctx, sess, v, st, label, m, f)
	}
	vs, err := a.svc.Load(ctx, name, label, f)
	if err != nil {
		return a.refusal(st, err)
	}
	return ModuleApplied{Result: ResultOK, Version: vs.Version, Digest: vs.Digest}
}

// canary runs f as a canary of module st.Name and waits for its end,
// reporting it pending meanwhile.
func (a *Agent) canary(ctx context.Context, sess *concurrency.Session, v serviceView, st module.Status, label string, m ModuleSpec, f Fetched) ModuleApplied {
	serving := func(state string) {
		pending := a.observe(v, a.want.Spec, map[string]ModuleApplied{st.Name: {Result: ResultPending, Canary: state}}, nil, "etcd")
		pending.Result = ResultPending
		if err := a.report(ctx, sess, pending); err != nil {
			a.log.Warn("fleet: report a pending canary", logkey.Module, st.Name, logkey.Err, err)
		}
	}
	end, err := a.svc.Canary(ctx, st.Name, label, f, m.Canary.Policy(), serving)
	switch {
	case err == nil:
		return ModuleApplied{Result: ResultOK, Version: end.Version, Digest: end.Digest, Canary: end.Note}
	case errors.Is(err, canary.ErrAborted):
		return kept(st, ModuleApplied{Result: ResultRefused, Check: "canary", Error: err.Error(), Canary: end.Note})
	case errors.Is(err, errCanaryCut):
		return kept(st, ModuleApplied{Result: ResultFailed, Check: "canary", Error: err.Error(), Canary: end.Note})
	}
	return a.refusal(st, err)
}

// refusal turns a failed change of module st.Name into a report: the
// trust path's and the module's refusals name their check; anything else
// may pass and is retried.
func (a *Agent) refusal(st module.Status, err error) ModuleApplied {
	a.log.Warn("fleet: change refused; keeping what serves", logkey.Module, st.Name, logkey.Err, err)
	check, refused := checkOf(err)
	if refused {
		return kept(st, ModuleApplied{Result: ResultRefused, Check: check, Error: err.Error()})
	}
	return kept(st, ModuleApplied{Result: ResultFailed, Check: check, Error: err.Error()})
}

// kept fills r with the version st serves.
func kept(st module.Status, r ModuleApplied) ModuleApplied {
	if st.Active != nil {
		r.Version, r.Digest = st.Active.Version, st.Active.Digest
	}
	return r
}

// observe builds a report of spec from results and bin (the binary's, nil
// if not tried); modules without a result, and the binary, are described
// as the service serves them.
func (a *Agent) observe(v serviceView, spec Spec, results map[string]ModuleApplied, bin *ModuleApplied, source string) Applied {
	ap := Applied{Instance: a.opts.Instance, Modules: map[string]ModuleApplied{}, Source: source, Time: time.Now().UTC(),
		Result: ResultOK, Health: "serving", PID: v.PID}
	if len(spec.Modules) > 0 || spec.Binary != nil {
		ap.Spec = spec.ID()
	}
	if v.err != nil {
		ap.Result, ap.Health = ResultFailed, fmt.Sprintf("service unreachable: %v", v.err)
		return ap
	}
	merge := func(r Result) {
		if r != ResultOK && (ap.Result == ResultOK || r != ResultPending) {
			ap.Result = r
		}
	}
	for _, st := range v.Modules {
		if st.Active != nil {
			ap.Modules[st.Name] = ModuleApplied{Result: ResultOK, Version: st.Active.Version, Digest: st.Active.Digest, B: splitApplied(v, st.Name)}
		}
	}
	if v.Binary.Digest != "" {
		ap.Binary = &ModuleApplied{Result: ResultOK, Version: v.Binary.Version, Digest: v.Binary.Digest}
	}
	switch b := spec.Binary; {
	case bin != nil:
		ap.Binary = bin
	case b != nil && ap.Binary != nil:
		if pin, _ := parseDigest(b.Digest); pin.Hex() != ap.Binary.Digest || v.TakingOver {
			ap.Binary.Result = ResultPending
		}
	case b != nil:
		ap.Binary = &ModuleApplied{Result: ResultPending}
	}
	if ap.Binary != nil {
		merge(ap.Binary.Result)
	}
	var missing []string
	for _, name := range slices.Sorted(maps.Keys(spec.Modules)) {
		r, ok := results[name]
		if !ok {
			r = kept(v.module(name), ModuleApplied{Result: ResultPending})
		}
		ap.Modules[name] = r
		merge(r.Result)
		if v.module(name).Active == nil {
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
