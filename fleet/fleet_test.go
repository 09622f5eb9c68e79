package fleet_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hotswapgo/hotswap/fleet"
)

// TestRolloutAcksAndLeaseExpiry rolls v1 out to three instances in waves,
// checks every instance's applied state, and that an instance whose lease
// ends (it stopped, or it died) leaves the group.
func TestRolloutAcksAndLeaseExpiry(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	var ins []*instance
	for _, id := range []string{"a", "b", "c"} {
		ins = append(ins, e.startInstance(id, nil, nil, nil))
	}
	e.until("three instances registered", func(st fleet.Status) bool { return len(st.Applied) == 3 })
	e.controller("c1", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1), Waves: []string{"1", "100%"}, Writer: "alice"})
	st := e.until("rollout done", phase(rev, fleet.Done))
	if got := st.Rollout.Sizes; len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Errorf("rollout sizes = %v; want [1 3]", got)
	}
	if !st.Converged(spec(v1)) {
		t.Fatalf("status after done:\n%s\nwant every instance on v1", st)
	}
	for _, ap := range st.Applied {
		if m := ap.Modules["pricing"]; m.Version != "v1" || m.Digest != hexOf(v1) || ap.Source != "etcd" || ap.Health != "serving" {
			t.Errorf("applied %s = %+v (pricing %+v); want v1 %s from etcd, serving", ap.Instance, ap, m, hexOf(v1))
		}
	}
	if st.Stable == nil || st.Stable.Spec.ID() != spec(v1).ID() || len(st.Targets) != 0 {
		t.Errorf("stable = %+v, targets %v; want v1 stable and no target", st.Stable, st.Targets)
	}
	for _, in := range ins {
		if v := in.quote(t); v != "v1" {
			t.Errorf("instance %s answers %s; want v1", in.id, v)
		}
	}

	// A stopped agent revokes its lease: it leaves at once.
	ins[0].stop(t)
	e.until("a stopped instance leaves", func(st fleet.Status) bool { return len(st.Applied) == 2 })

	// A dead one (its client gone, nothing revoked) leaves when its lease
	// expires.
	cli := e.client(e.etcd.Endpoints()...)
	d := e.startInstance("d", nil, cli, nil)
	e.until("d acks", func(st fleet.Status) bool { return len(st.Applied) == 3 && st.Converged(spec(v1)) })
	cli.Close() // keep-alives stop
	gone := time.Now()
	e.until("a dead instance leaves", func(st fleet.Status) bool { return len(st.Applied) == 2 })
	if took := time.Since(gone); took > 10*ttl {
		t.Errorf("a dead instance left after %v; want about its lease, %v", took, ttl)
	}
	d.stop(t)
}

// TestBadWaveHaltsAndReverts rolls out an artifact that fails the host's
// checks on every instance: the rollout halts at its first wave of one
// instance, no other instance is touched, and every instance serves v1.
func TestBadWaveHaltsAndReverts(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	bad := e.artifact(gBad, "bad", false)
	var ins []*instance
	for _, id := range []string{"a", "b", "c", "d"} {
		ins = append(ins, e.startInstance(id, nil, nil, nil))
	}
	e.until("four instances registered", func(st fleet.Status) bool { return len(st.Applied) == 4 })
	e.controller("c1", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1), Writer: "alice"})
	e.until("v1 done", phase(rev, fleet.Done))

	rev = e.set(fleet.Desired{Spec: spec(bad), Waves: fleet.DefaultWaves(), Writer: "mallory"})
	st := e.until("bad rollout halted", phase(rev, fleet.Halted))
	r := st.Rollout
	if got := len(r.Touched()); got != 1 {
		t.Errorf("instances touched by the bad rollout = %d (%v); want 1, the first wave", got, r.Touched())
	}
	if !strings.Contains(r.Reason, "wave 1") || !strings.Contains(r.Reason, "check init") {
		t.Errorf("halt reason = %q; want wave 1 and the failed check (init)", r.Reason)
	}
	// Reverted: no target left; everyone reports v1 again.
	st = e.until("reverted to v1", func(st fleet.Status) bool { return st.Converged(spec(v1)) && len(st.Targets) == 0 })
	for _, in := range ins {
		if got := in.serves(); got != hexOf(v1) {
			t.Errorf("instance %s serves %s; want v1 %s", in.id, got, hexOf(v1))
		}
		if v := in.quote(t); v != "v1" {
			t.Errorf("instance %s answers %s; want v1", in.id, v)
		}
	}
	if st.Stable.Spec.ID() != spec(v1).ID() {
		t.Errorf("stable after the halt = %s; want v1's %s", st.Stable.Spec.ID(), spec(v1).ID())
	}
}

// TestUntrustedArtifactsRefused pins digests whose artifacts cannot be
// verified: unsigned, and a payload that is not the one pinned. Each is
// refused, reported with its failed check in the applied state, and never
// loaded.
func TestUntrustedArtifactsRefused(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	unsigned := e.artifact(gV2, "v2", true)
	mismatched := v1
	mismatched.Digest = unsigned.Digest // pin v2's digest, serve v1's bytes
	mismatched.Version = "v2-pin"
	in := e.startInstance("a", nil, nil, nil)
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1)})
	e.until("v1 done", phase(rev, fleet.Done))

	for _, tc := range []struct {
		name  string
		m     fleet.ModuleSpec
		check string
	}{
		{"unsigned", unsigned, "policy"},
		{"digest mismatch", mismatched, "digest"},
	} {
		rev := e.set(fleet.Desired{Spec: spec(tc.m)})
		st := e.until("halted", phase(rev, fleet.Halted))
		if !strings.Contains(st.Rollout.Reason, "check "+tc.check) {
			t.Errorf("%s: halt reason = %q; want check %s", tc.name, st.Rollout.Reason, tc.check)
		}
		ap, ch := in.agent.Applied()
		for ap.Spec != spec(v1).ID() { // the revert
			select {
			case <-ch:
			case <-time.After(wait):
				t.Fatalf("%s: agent did not report v1 again after the halt; last %+v", tc.name, ap)
			}
			ap, ch = in.agent.Applied()
		}
		if got := in.serves(); got != hexOf(v1) {
			t.Errorf("%s: instance serves %s; want v1 %s", tc.name, got, hexOf(v1))
		}
		for _, s := range in.host.Status() {
			for _, v := range s.Versions() {
				if v.Digest == hexOf(unsigned) {
					t.Errorf("%s: version %s %s was loaded; want it refused before", tc.name, v.Version, v.Digest)
				}
			}
		}
	}
}

// TestControllerFailover kills the leading controller in the middle of a
// rollout; the other one takes over and finishes it.
func TestControllerFailover(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	v2 := e.artifact(gV2, "v2", false)
	// v2 is served over HTTP, held until the leader died, so the rollout
	// is in its first wave when it dies.
	v2, openV2 := e.gated(v2)
	for _, id := range []string{"a", "b", "c"} {
		e.startInstance(id, nil, nil, nil)
	}
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 3 })
	leaderCli := e.client(e.etcd.Endpoints()...)
	first, _ := e.controller("first", leaderCli)
	select {
	case <-first.Leading():
	case <-time.After(wait):
		t.Fatal("the first controller did not lead")
	}
	e.controller("second", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1)})
	e.until("v1 done", phase(rev, fleet.Done))

	rev = e.set(fleet.Desired{Spec: spec(v2), Waves: []string{"1", "100%"}, Writer: "alice"})
	st := e.until("v2 in its first wave", func(st fleet.Status) bool {
		return st.Rollout != nil && st.Rollout.Revision == rev && st.Rollout.Phase == fleet.Running
	})
	if st.Rollout.Leader != "first" || st.Rollout.Wave != 0 {
		t.Fatalf("rollout leader = %s, wave %d; want first, in wave 1 (its instance fetches v2 until the gate opens)", st.Rollout.Leader, st.Rollout.Wave+1)
	}
	leaderCli.Close() // the leader dies: its lease runs out
	openV2()
	st = e.until("v2 done", phase(rev, fleet.Done))
	if st.Rollout.Leader != "second" {
		t.Errorf("rollout finished by %s; want second", st.Rollout.Leader)
	}
	e.until("every instance on v2", func(st fleet.Status) bool { return st.Converged(spec(v2)) })
}

// TestEtcdDown stops etcd: the instance keeps serving; restarted, it
// cold-starts from its last-known-good version while etcd is still down;
// and when etcd is back it reconciles to the desired state set meanwhile.
func TestEtcdDown(t *testing.T) {
	e := newEnv(t, 1)
	v1 := e.artifact(gV1, "v1", false)
	v2 := e.artifact(gV2, "v2", false)
	// The agent and the controller before the outage use a client of
	// their own, closed before etcd stops: a member stopping under a
	// client's open streams (keep-alives, watches) waits etcd's request
	// timeout (10 s) for them.
	before := e.client(e.etcd.Endpoints()...)
	in := e.startInstance("a", nil, before, nil)
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	_, stopController := e.controller("c1", before)
	rev := e.set(fleet.Desired{Spec: spec(v1)})
	e.until("v1 done", phase(rev, fleet.Done))
	if v := in.quote(t); v != "v1" {
		t.Fatalf("answer = %s; want v1", v)
	}

	// The instance goes down; the group moves on to v2 without it.
	in.stop(t)
	e.until("instance gone", func(st fleet.Status) bool { return len(st.Applied) == 0 })
	rev = e.set(fleet.Desired{Spec: spec(v2)})
	e.until("v2 stable", phase(rev, fleet.Done))
	stopController()
	before.Close()

	// etcd goes down: the instance restarts from its last-known-good v1.
	e.etcd.Stop(0)
	again := e.startInstance("a", in.fix, nil, nil)
	if v := again.quote(t); v != "v1" {
		t.Fatalf("cold start with etcd down answers %s; want v1 (last-known-good)", v)
	}
	ap, _ := again.agent.Applied()
	if ap.Source != "last-known-good" || ap.Modules["pricing"].Digest != hexOf(v1) {
		t.Errorf("applied with etcd down = %+v; want v1 from last-known-good", ap)
	}
	// It keeps serving while the agent cannot reach etcd.
	for range 3 {
		if v := again.quote(t); v != "v1" {
			t.Fatalf("answer with etcd down = %s; want v1", v)
		}
	}

	// etcd is back: the instance reconciles to v2.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := e.etcd.Restart(ctx, 0); err != nil {
		t.Fatalf("Restart() = %v", err)
	}
	e.until("reconciled to v2", func(st fleet.Status) bool { return st.Converged(spec(v2)) })
	if v := again.quote(t); v != "v2" {
		t.Errorf("answer after reconcile = %s; want v2", v)
	}
}

// TestWatchCompactionResync cuts an agent off etcd while the group moves
// on and the history it would watch is compacted: the agent resyncs from a
// fresh read, under the same lease, and acks.
func TestWatchCompactionResync(t *testing.T) {
	e := newEnv(t, 0)
	v1 := e.artifact(gV1, "v1", false)
	v2 := e.artifact(gV2, "v2", false)
	l := newLink(t, e.etcd.Endpoints()[0])
	// A long lease: it outlives the cut, so only the watch can bring the
	// news.
	in := e.startInstance("a", nil, e.client(l.endpoint()), func(o *fleet.AgentOptions) { o.LeaseTTL = 60 * time.Second })
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)
	rev := e.set(fleet.Desired{Spec: spec(v1)})
	e.until("v1 done", phase(rev, fleet.Done))
	lease := appliedLease(t, e.cli, e.name)
	// The agent reports again on the events of the rollout's end; cut it
	// once it went quiet (500 ms without a report), in its watch, so the
	// news reach it only through a watch that resumes into compacted
	// history.
	for quiet, deadline := false, time.Now().Add(wait); !quiet; {
		_, next := in.agent.Applied()
		select {
		case <-next:
		case <-time.After(500 * time.Millisecond):
			quiet = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent kept reporting for %v", wait)
		}
	}

	l.setCut(true)
	rev = e.set(fleet.Desired{Spec: spec(v2)})
	e.until("v2 in its wave", func(st fleet.Status) bool { return len(st.Targets) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := e.cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatalf("Compact() = %v", err)
	}
	if got := in.serves(); got != hexOf(v1) {
		t.Fatalf("instance serves %s while cut off; want v1", got)
	}
	l.setCut(false)
	e.until("v2 done", phase(rev, fleet.Done))
	if got := in.serves(); got != hexOf(v2) {
		t.Errorf("instance serves %s; want v2", got)
	}
	if got := appliedLease(t, e.cli, e.name); got != lease {
		t.Errorf("applied lease = %x; want the same lease %x (a resync, not a new session)", got, lease)
	}
}

// appliedLease returns the lease of instance a's applied state.
func appliedLease(t *testing.T, cli *clientv3.Client, group string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, fleet.DefaultPrefix+"/"+group+"/applied/a")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get(applied/a) = %v, %v; want one key", resp, err)
	}
	return resp.Kvs[0].Lease
}
