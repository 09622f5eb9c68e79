package fleet

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Group is an operator's handle on one service group: the only writer of
// its desired state and of its rollout commands. It is safe for
// concurrent use.
type Group struct {
	cli  *clientv3.Client
	name string
	keys keys
}

// OpenGroup returns the handle of group under prefix ("": DefaultPrefix).
func OpenGroup(cli *clientv3.Client, prefix, group string) (*Group, error) {
	if err := validName(group); err != nil {
		return nil, fmt.Errorf("fleet: group: %w", err)
	}
	return &Group{cli: cli, name: group, keys: newKeys(cmpOr(prefix, DefaultPrefix), group)}, nil
}

// Set writes d as the group's desired state and returns its revision, the
// rollout's number. The running controller starts rolling it out; a
// rollout under way is replaced (its instances run stable until their
// wave). d.Writer names who asked; d.Time is set here.
func (g *Group) Set(ctx context.Context, d Desired) (int64, error) {
	if err := d.Spec.Validate(); err != nil {
		return 0, fmt.Errorf("set %s: %w", g.name, err)
	}
	if _, err := waveSizes(d.Waves, 100); err != nil {
		return 0, fmt.Errorf("set %s: %w", g.name, err)
	}
	if d.WaveTimeout < 0 {
		return 0, fmt.Errorf("set %s: %w: wave timeout %v is negative", g.name, ErrInvalid, d.WaveTimeout)
	}
	d.Writer = cmpOr(d.Writer, "operator")
	d.Time = time.Now().UTC()
	resp, err := g.cli.Put(ctx, g.keys.desired(), encode(d))
	if err != nil {
		return 0, fmt.Errorf("set %s: %w", g.name, err)
	}
	return resp.Header.Revision, nil
}

// Command sends cmd (Pause, Resume, Abort) about the running rollout, as
// writer. It fails with ErrNoRollout when the group's rollout has ended.
func (g *Group) Command(ctx context.Context, cmd Command, writer string) (Rollout, error) {
	if cmd != Pause && cmd != Resume && cmd != Abort {
		return Rollout{}, fmt.Errorf("%s %s: %w: no command %q (pause, resume, abort)", cmd, g.name, ErrInvalid, cmd)
	}
	st, err := g.Status(ctx)
	if err != nil {
		return Rollout{}, err
	}
	if st.Rollout == nil || st.Rollout.Phase.Ended() {
		return Rollout{}, fmt.Errorf("%s %s: %w", cmd, g.name, ErrNoRollout)
	}
	ctl := Control{Command: cmd, Rollout: st.Rollout.Revision, Writer: cmpOr(writer, "operator"), Time: time.Now().UTC()}
	// Only while the rollout is the one read: a newer one is not ordered
	// about by a command about this one.
	resp, err := g.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(g.keys.desired()), "=", st.Rollout.Revision),
	).Then(clientv3.OpPut(g.keys.control(), encode(ctl))).Commit()
	if err != nil {
		return Rollout{}, fmt.Errorf("%s %s: %w", cmd, g.name, err)
	}
	if !resp.Succeeded {
		return Rollout{}, fmt.Errorf("%s %s: %w: a newer desired state replaced rollout %d", cmd, g.name, ErrNoRollout, st.Rollout.Revision)
	}
	return *st.Rollout, nil
}

// Status is a group as etcd holds it.
type Status struct {
	Group    string
	Desired  *Desired
	Rollout  *Rollout
	Stable   *Assignment
	Applied  []Applied // the live instances, by instance
	Targets  []string  // instances a rollout moves
	Revision int64
}

// Status reads the group in one transaction.
func (g *Group) Status(ctx context.Context) (Status, error) {
	c := &Controller{opts: ControllerOptions{Client: g.cli, Group: g.name, RequestTimeout: DefaultRequestTimeout}, keys: g.keys}
	s, err := c.read(ctx)
	if err != nil {
		return Status{}, err
	}
	st := Status{Group: g.name, Desired: s.desired, Rollout: s.rollout, Stable: s.stable, Revision: s.rev}
	for _, id := range slices.Sorted(maps.Keys(s.applied)) {
		st.Applied = append(st.Applied, s.applied[id])
	}
	st.Targets = slices.Sorted(maps.Keys(s.targets))
	return st, nil
}

// Converged reports whether every live instance acked spec.
func (st Status) Converged(spec Spec) bool {
	id := spec.ID()
	for _, ap := range st.Applied {
		if ap.Spec != id || ap.Result != ResultOK {
			return false
		}
	}
	return len(st.Applied) > 0
}

// String renders the status for people.
func (st Status) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "group %s (revision %d)\n", st.Group, st.Revision)
	if d := st.Desired; d != nil {
		fmt.Fprintf(&b, "desired: spec %s by %s%s\n", d.Spec.ID(), d.Writer, describeSpec(d.Spec))
	}
	if st.Stable != nil {
		fmt.Fprintf(&b, "stable: spec %s from rollout %d%s\n", st.Stable.Spec.ID(), st.Stable.Rollout, describeSpec(st.Stable.Spec))
	}
	if r := st.Rollout; r != nil {
		fmt.Fprintf(&b, "rollout %d: %s, wave %d of %d (sizes %v), spec %s by %s, leader %s\n",
			r.Revision, r.Phase, r.Wave+1, len(r.Sizes), r.Sizes, r.Spec.ID(), r.Writer, r.Leader)
		if r.Reason != "" {
			fmt.Fprintf(&b, "  reason: %s\n", r.Reason)
		}
	}
	for _, ap := range st.Applied {
		fmt.Fprintf(&b, "instance %s: spec %s %s, %s, from %s", ap.Instance, cmpOr(ap.Spec, "-"), ap.Result, ap.Health, ap.Source)
		if bin := ap.Binary; bin != nil {
			d, _ := parseDigest(bin.Digest)
			fmt.Fprintf(&b, ", binary %s@%s pid %d", cmpOr(bin.Version, "?"), d.Short(), ap.PID)
		}
		if f := ap.Failure(); f != "" {
			fmt.Fprintf(&b, ": %s", f)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func describeSpec(s Spec) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(s.Modules)) {
		m := s.Modules[name]
		d, _ := parseDigest(m.Digest)
		fmt.Fprintf(&b, " %s=%s@%s", name, cmpOr(m.Version, "?"), d.Short())
		if m.B != nil {
			bd, _ := parseDigest(m.B.Digest)
			fmt.Fprintf(&b, " (B %s@%s at %g%%)", cmpOr(m.B.Version, "?"), bd.Short(), m.B.Weight)
		}
	}
	if bin := s.Binary; bin != nil {
		d, _ := parseDigest(bin.Digest)
		fmt.Fprintf(&b, " binary=%s@%s", cmpOr(bin.Version, "?"), d.Short())
	}
	return b.String()
}
