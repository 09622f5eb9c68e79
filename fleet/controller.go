package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// DefaultTick is how often a leading controller looks at its group even
// when nothing changed (to notice wave timeouts).
const DefaultTick = time.Second

// ControllerOptions configures a Controller.
type ControllerOptions struct {
	// Client reaches etcd. Required; the caller closes it after Run
	// returned.
	Client *clientv3.Client
	// Group is the service group it moves. Required.
	Group string
	// Name names this controller in the election and in rollout records.
	// Required.
	Name string
	// Prefix is the key prefix of every group. Defaults to DefaultPrefix.
	Prefix string
	// LeaseTTL is the leadership lease: a dead leader is replaced that
	// much later. Defaults to DefaultLeaseTTL (5s).
	LeaseTTL time.Duration
	// RequestTimeout bounds one etcd request. Defaults to
	// DefaultRequestTimeout (5s).
	RequestTimeout time.Duration
	// Tick is how often the leader looks at the group without an event.
	// Defaults to DefaultTick (1s).
	Tick time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Controller moves a group's rollouts while it leads: any number may run,
// one leads at a time (an etcd election), and every write it makes checks
// in the same transaction that it still leads. Its state is all in etcd,
// so a new leader takes a rollout over where the last one left it. Run
// drives it; a Controller is not safe for concurrent use of Run.
type Controller struct {
	opts ControllerOptions
	keys keys
	log  *slog.Logger
	// leads is closed when this controller first leads (for tests and
	// status).
	leads chan struct{}
}

// NewController checks opts and returns a controller; Run starts it.
func NewController(opts ControllerOptions) (*Controller, error) {
	if opts.Client == nil {
		return nil, errors.New("fleet: ControllerOptions.Client is required")
	}
	if err := validName(opts.Group); err != nil {
		return nil, fmt.Errorf("fleet: group: %w", err)
	}
	if opts.Name == "" {
		return nil, errors.New("fleet: ControllerOptions.Name is required")
	}
	opts.Prefix = cmpOr(opts.Prefix, DefaultPrefix)
	opts.LeaseTTL = orDuration(opts.LeaseTTL, DefaultLeaseTTL)
	opts.RequestTimeout = orDuration(opts.RequestTimeout, DefaultRequestTimeout)
	opts.Tick = orDuration(opts.Tick, DefaultTick)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{opts: opts, keys: newKeys(opts.Prefix, opts.Group), log: log.With("group", opts.Group, "controller", opts.Name),
		leads: make(chan struct{})}, nil
}

// Leading returns a channel closed once this controller first led.
func (c *Controller) Leading() <-chan struct{} { return c.leads }

// Run campaigns for leadership and, while it leads, moves the group's
// rollout, until ctx ends; then it resigns and returns ctx's error. Lost
// leadership or an unreachable etcd make it campaign again.
func (c *Controller) Run(ctx context.Context) error {
	first := true
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := c.term(ctx, &first)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("fleet: controller term ended", logkey.Err, err)
		if !sleep(ctx, c.opts.Tick) {
			return ctx.Err()
		}
	}
}

// term is one leadership: campaign, lead until the session or ctx ends.
func (c *Controller) term(ctx context.Context, first *bool) error {
	rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	lease, err := c.opts.Client.Grant(rctx, int64(max(1, c.opts.LeaseTTL/time.Second)))
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	sess, err := concurrency.NewSession(c.opts.Client, concurrency.WithLease(lease.ID), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), c.opts.RequestTimeout)
		defer cancel()
		sess.Orphan()
		c.opts.Client.Revoke(rctx, sess.Lease()) // resign: the next leader need not wait for the lease
	}()
	e := concurrency.NewElection(sess, c.keys.leader())
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel() // the lease is gone: stop campaigning
		case <-cctx.Done():
		}
	}()
	if err := e.Campaign(cctx, c.opts.Name); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	c.log.Info("fleet: controller leads")
	if *first {
		*first = false
		close(c.leads)
	}
	return c.lead(cctx, sess, e)
}

// lead reconciles on every change under the group and every tick.
func (c *Controller) lead(ctx context.Context, sess *concurrency.Session, e *concurrency.Election) error {
	tick := time.NewTicker(c.opts.Tick)
	defer tick.Stop()
	watch := func() (clientv3.WatchChan, context.CancelFunc) {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		return c.opts.Client.Watch(wctx, c.keys.group+"/", clientv3.WithPrefix()), cancel
	}
	events, stop := watch()
	defer func() { stop() }()
	for {
		if err := c.reconcile(ctx, e); err != nil {
			if errors.Is(err, ErrNotLeader) {
				return err
			}
			c.log.Warn("fleet: reconcile", logkey.Err, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("leadership lease lost")
		case <-tick.C:
		case wr, ok := <-events:
			if !ok {
				return errors.New("watch closed")
			}
			if err := wr.Err(); err != nil {
				// Compacted or no leader: watch afresh from now; reconcile
				// reads everything anyway.
				stop()
				if !sleep(ctx, c.opts.Tick) {
					return ctx.Err()
				}
				events, stop = watch()
			}
		}
	}
}

// snapshot is the group as read in one transaction.
type snapshot struct {
	rev        int64
	desired    *Desired
	desiredRev int64
	control    *Control
	rollout    *Rollout
	rolloutRev int64 // mod revision, 0 if none
	stable     *Assignment
	applied    map[string]Applied // live instances
	targets    map[string]bool
}

func (c *Controller) read(ctx context.Context) (*snapshot, error) {
	rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	resp, err := c.opts.Client.Txn(rctx).Then(
		clientv3.OpGet(c.keys.desired()),
		clientv3.OpGet(c.keys.control()),
		clientv3.OpGet(c.keys.rollout()),
		clientv3.OpGet(c.keys.stable()),
		clientv3.OpGet(c.keys.applieds(), clientv3.WithPrefix()),
		clientv3.OpGet(c.keys.targets(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read group %s: %w", c.opts.Group, err)
	}
	s := &snapshot{rev: resp.Header.Revision, applied: map[string]Applied{}, targets: map[string]bool{}}
	get := func(i int) []byte {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nil
		}
		if i == 0 {
			s.desiredRev = kvs[0].ModRevision
		}
		if i == 2 {
			s.rolloutRev = kvs[0].ModRevision
		}
		return kvs[0].Value
	}
	if raw := get(0); raw != nil {
		d, err := decode[Desired](c.keys.desired(), raw)
		if err != nil {
			return nil, err
		}
		s.desired = &d
	}
	if raw := get(1); raw != nil {
		if ctl, err := decode[Control](c.keys.control(), raw); err == nil {
			s.control = &ctl
		}
	}
	if raw := get(2); raw != nil {
		r, err := decode[Rollout](c.keys.rollout(), raw)
		if err != nil {
			return nil, err
		}
		s.rollout = &r
	}
	if raw := get(3); raw != nil {
		if st, err := decode[Assignment](c.keys.stable(), raw); err == nil {
			s.stable = &st
		}
	}
	for _, kv := range resp.Responses[4].GetResponseRange().Kvs {
		id := strings.TrimPrefix(string(kv.Key), c.keys.applieds())
		if ap, err := decode[Applied](string(kv.Key), kv.Value); err == nil && validName(id) == nil {
			s.applied[id] = ap
		}
	}
	for _, kv := range resp.Responses[5].GetResponseRange().Kvs {
		s.targets[strings.TrimPrefix(string(kv.Key), c.keys.targets())] = true
	}
	return s, nil
}

// waveOrder sorts instances by a hash of group and instance: the order of
// the waves, the same for every rollout of the group, so an instance in a
// wave at 10% is in it at 50% (sticky, monotone).
func waveOrder(group string, ids []string) []string {
	out := slices.Clone(ids)
	key := func(id string) uint64 {
		h := sha256.Sum256([]byte(group + "\x00" + id))
		return binary.BigEndian.Uint64(h[:8])
	}
	slices.SortFunc(out, func(a, b string) int {
		if ka, kb := key(a), key(b); ka != kb {
			if ka < kb {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return out
}

// reconcile moves the group's rollout one step, if one is due.
func (c *Controller) reconcile(ctx context.Context, e *concurrency.Election) error {
	s, err := c.read(ctx)
	if err != nil {
		return err
	}
	if s.desired == nil {
		return nil
	}
	if s.rollout == nil || s.rollout.Revision != s.desiredRev {
		return c.start(ctx, e, s)
	}
	r := *s.rollout
	if r.Phase.Ended() {
		return nil
	}
	if err := r.check(); err != nil {
		r.Sizes, r.Wave = nil, 0
		return c.revert(ctx, e, s, r, Halted, err.Error())
	}
	if ctl := s.control; ctl != nil && ctl.Rollout == r.Revision {
		switch {
		case ctl.Command == Abort:
			return c.revert(ctx, e, s, r, Aborted, fmt.Sprintf("aborted by %s", ctl.Writer))
		case ctl.Command == Pause && r.Phase == Running:
			r.Phase = Paused
			return c.write(ctx, e, s, r, nil)
		case ctl.Command == Resume && r.Phase == Paused:
			r.Phase = Running
			r.WaveStarted = time.Now().UTC() // the wave's clock starts again
			return c.write(ctx, e, s, r, nil)
		}
	}
	if r.Phase != Running {
		return nil
	}
	id := r.Spec.ID()
	var waiting []string
	current := 0 // the first member of the current wave
	if r.Wave > 0 {
		current = r.Sizes[r.Wave-1]
	}
	for i, inst := range r.Touched() {
		ap, live := s.applied[inst]
		switch {
		case !live && (i < current || slices.Contains(r.Skipped, inst)):
			// It acked in an earlier wave, then left the group; or it
			// had left before its wave.
		case !live:
			// Gone during its wave: it may have died of the new version.
			// Its ack is waited for (it may come back) until the wave
			// timeout halts the rollout.
			waiting = append(waiting, inst+" (gone)")
		case ap.Spec != id || ap.Result == ResultPending:
			waiting = append(waiting, inst)
		case ap.Result != ResultOK:
			return c.revert(ctx, e, s, r, Halted, fmt.Sprintf("wave %d: instance %s: %s", r.Wave+1, inst, ap.Failure()))
		case ap.Health != "serving":
			return c.revert(ctx, e, s, r, Halted, fmt.Sprintf("wave %d: instance %s: health: %s", r.Wave+1, inst, ap.Health))
		}
	}
	if len(waiting) > 0 {
		timeout := orDuration(s.desired.WaveTimeout, DefaultWaveTimeout)
		if time.Since(r.WaveStarted) > timeout {
			return c.revert(ctx, e, s, r, Halted, fmt.Sprintf("wave %d: no ack within %v from %v", r.Wave+1, timeout, waiting))
		}
		return nil
	}
	if r.Wave+1 >= len(r.Sizes) {
		return c.finish(ctx, e, s, r)
	}
	r.Wave++
	r.WaveStarted = time.Now().UTC()
	c.log.Info("fleet: wave acked; next wave", "rollout", r.Revision, "wave", r.Wave+1, "instances", r.Sizes[r.Wave])
	return c.write(ctx, e, s, r, c.moveOps(s, &r, r.Members[r.Sizes[r.Wave-1]:r.Sizes[r.Wave]]))
}

// start begins the rollout of the desired spec: the live instances, in
// wave order, and the first wave's targets; the targets of a rollout it
// replaces are dropped (those instances run stable again).
func (c *Controller) start(ctx context.Context, e *concurrency.Election, s *snapshot) error {
	d := s.desired
	r := Rollout{Revision: s.desiredRev, Phase: Running, Spec: d.Spec, Writer: d.Writer, Leader: c.opts.Name,
		WaveStarted: time.Now().UTC()}
	if s.stable != nil {
		r.Previous = s.stable.Spec
	}
	ids := make([]string, 0, len(s.applied))
	for id := range s.applied {
		ids = append(ids, id)
	}
	r.Members = waveOrder(c.opts.Group, ids)
	waves := d.Waves
	if len(waves) == 0 {
		waves = []string{"100%"}
	}
	sizes, err := waveSizes(waves, len(r.Members))
	if err != nil || d.Spec.Validate() != nil {
		r.Phase, r.Reason = Halted, fmt.Sprintf("desired record refused: %v", errors.Join(err, d.Spec.Validate()))
		return c.write(ctx, e, s, r, nil)
	}
	r.Sizes = sizes
	if len(r.Members) == 0 {
		return c.finish(ctx, e, s, r)
	}
	// Targets of a replaced rollout go, except those the first wave
	// writes again (etcd refuses a key twice in one transaction).
	var drop []clientv3.Op
	for id := range s.targets {
		if !slices.Contains(r.Members[:sizes[0]], id) {
			drop = append(drop, clientv3.OpDelete(c.keys.target(id)))
		}
	}
	c.log.Info("fleet: rollout starts", "rollout", r.Revision, "spec", d.Spec.ID(), "instances", len(r.Members), "waves", sizes)
	return c.write(ctx, e, s, r, append(drop, c.moveOps(s, &r, r.Members[:sizes[0]])...))
}

// moveOps writes the targets of a wave's members, those still in the
// group; the others are recorded as skipped.
func (c *Controller) moveOps(s *snapshot, r *Rollout, ids []string) []clientv3.Op {
	var ops []clientv3.Op
	for _, id := range ids {
		if _, live := s.applied[id]; !live {
			r.Skipped = append(r.Skipped, id)
			continue
		}
		ops = append(ops, clientv3.OpPut(c.keys.target(id), encode(Assignment{Spec: r.Spec, Rollout: r.Revision, Writer: r.Writer, Instance: id})))
	}
	return ops
}

// finish makes the spec stable and drops every target.
func (c *Controller) finish(ctx context.Context, e *concurrency.Election, s *snapshot, r Rollout) error {
	r.Phase = Done
	r.Wave = max(len(r.Sizes)-1, 0)
	// One range delete: a transaction holds at most 128 operations.
	ops := []clientv3.Op{clientv3.OpPut(c.keys.stable(), encode(Assignment{Spec: r.Spec, Rollout: r.Revision, Writer: r.Writer})),
		clientv3.OpDelete(c.keys.targets(), clientv3.WithPrefix())}
	c.log.Info("fleet: rollout done", "rollout", r.Revision, "spec", r.Spec.ID())
	return c.write(ctx, e, s, r, ops)
}

// revert ends the rollout in phase (Halted or Aborted): every instance it
// moved drops its target and so runs stable, the previous spec, again.
func (c *Controller) revert(ctx context.Context, e *concurrency.Election, s *snapshot, r Rollout, phase Phase, why string) error {
	r.Phase, r.Reason = phase, why
	ops := []clientv3.Op{clientv3.OpDelete(c.keys.targets(), clientv3.WithPrefix())}
	c.log.Warn("fleet: rollout "+string(phase)+"; reverting its instances", "rollout", r.Revision, "reason", why, "instances", len(r.Touched()))
	return c.write(ctx, e, s, r, ops)
}

// write stores r with ops in one transaction that holds only if this
// controller still leads and the rollout record is the one it read.
func (c *Controller) write(ctx context.Context, e *concurrency.Election, s *snapshot, r Rollout, ops []clientv3.Op) error {
	r.Leader, r.Time = c.opts.Name, time.Now().UTC()
	rctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()
	resp, err := c.opts.Client.Txn(rctx).If(
		clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()),
		clientv3.Compare(clientv3.ModRevision(c.keys.rollout()), "=", s.rolloutRev),
		clientv3.Compare(clientv3.ModRevision(c.keys.desired()), "=", s.desiredRev),
	).Then(append(ops, clientv3.OpPut(c.keys.rollout(), encode(r)))...).Commit()
	if err != nil {
		return fmt.Errorf("write rollout %d: %w", r.Revision, err)
	}
	if !resp.Succeeded {
		// Either another leader wrote, or the desired state changed under
		// us: the next reconcile reads again; a lost election ends the term.
		lctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
		defer cancel()
		if g, err := c.opts.Client.Get(lctx, e.Key()); err == nil && (len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != e.Rev()) {
			return fmt.Errorf("write rollout %d: %w", r.Revision, ErrNotLeader)
		}
	}
	return nil
}
