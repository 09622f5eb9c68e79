package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/statedir"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// Service is what an Agent needs of the service it keeps on its group's
// assignment: its state, and the changes it can ask for. Two implement
// it: HostService, the host in the agent's own process (an embedded
// agent), and SocketService, a service's control socket (an agent run
// beside the service, a sidecar). Either way the service verifies what it
// is handed (signature, policy, name, kind): trust stays in the service,
// the agent only fetches by digest. Only this package implements Service.
type Service interface {
	// Status describes the service's modules and process.
	Status(ctx context.Context) (ServiceStatus, error)
	// Load verifies f as a version of module name and activates it.
	Load(ctx context.Context, name, label string, f Fetched) (module.VersionStatus, error)
	// Rollback makes module name's warm previous version serve again.
	Rollback(ctx context.Context, name string) (module.VersionStatus, error)
	// Canary verifies f and runs it as a canary of module name under p,
	// calls serving once it serves, and returns when it ended. The error
	// is the start's refusal, one matching canary.ErrAborted if it was
	// aborted, or one matching errCanaryCut if ctx ended first (the
	// canary is then aborted).
	Canary(ctx context.Context, name, label string, f Fetched, p canary.Policy, serving func(state string)) (CanaryEnd, error)
	// Split verifies f and runs it as B of module name beside the active
	// version (A), with share w (0 to 1) of the calls, keys hashed with
	// salt (host.SplitReader). A service without splits refuses with
	// ErrNoSplits.
	Split(ctx context.Context, name, label string, f Fetched, salt string, w float64) error
	// SetSplitWeight moves the weight of module name's split to w.
	SetSplitWeight(ctx context.Context, name string, w float64) error
	// EndSplit ends module name's split: A serves every call.
	EndSplit(ctx context.Context, name string) error
	// Upgrade verifies f as a binary of the service and replaces the
	// service's process with it; it returns once the upgrade is decided
	// (the new process passed probation, or this one serves again).
	Upgrade(ctx context.Context, label string, f Fetched) (Upgraded, error)

	isService()
}

// ServiceStatus is a service as an agent sees it.
type ServiceStatus struct {
	// Modules describe each module, sorted by name; only the active and
	// previous versions' Version and Digest are used.
	Modules []module.Status
	// PID is the service's process.
	PID int
	// Binary is the binary the process runs.
	Binary host.BinaryStatus
	// Upgrades reports whether binary upgrades are enabled.
	Upgrades bool
	// TakingOver is set while the process, started by an upgrade, waits
	// for its parent to commit it.
	TakingOver bool
	// Splits holds the running A/B splits by module name.
	Splits map[string]host.SplitStatus
}

// module returns the status of module name (empty if unknown).
func (st ServiceStatus) module(name string) module.Status {
	for _, m := range st.Modules {
		if m.Name == name {
			return m
		}
	}
	return module.Status{Name: name}
}

// CanaryEnd is how a canary ended: its version and a note of its state
// and last verdict.
type CanaryEnd struct {
	Version, Digest string
	Note            string
}

// Upgraded is a binary upgrade that took over.
type Upgraded struct {
	// PID is the new process.
	PID int
	// Replaced is set when the agent's own process handed over (an
	// embedded agent): it must stop, the new process's agent reports from
	// now on.
	Replaced bool
}

// ErrNoSplits: the service cannot run a fleet-wide A/B split (a sidecar's
// control socket has no split operations); the module's change is refused
// with check "split", and A keeps serving.
var ErrNoSplits = errors.New("the service runs no A/B splits")

// errCanaryCut: a canary was followed until the change's deadline.
var errCanaryCut = errors.New("canary did not end in time")

// HostService returns the Service of h, in the agent's own process. A
// fetched binary is written under h's state directory (fleet/, private)
// before h.Upgrade verifies it and executes its copy in the store.
func HostService(h *host.Host) Service { return &hostService{h: h} }

type hostService struct{ h *host.Host }

func (*hostService) isService() {}

func (s *hostService) Status(context.Context) (ServiceStatus, error) {
	p := s.h.Process()
	st := ServiceStatus{Modules: s.h.Status(), PID: p.PID, Binary: p.Binary, Upgrades: p.Upgrades, TakingOver: p.TakingOver}
	for _, m := range st.Modules {
		if sp, ok := s.h.Split(m.Name); ok {
			if st.Splits == nil {
				st.Splits = map[string]host.SplitStatus{}
			}
			st.Splits[m.Name] = sp
		}
	}
	return st, nil
}

func (s *hostService) Split(ctx context.Context, name, label string, f Fetched, salt string, w float64) error {
	_, err := s.h.SplitReader(ctx, name, label, f.Manifest, bytes.NewReader(f.Payload), salt, w)
	return err
}

func (s *hostService) SetSplitWeight(ctx context.Context, name string, w float64) error {
	_, err := s.h.SetSplitWeight(ctx, name, w)
	return err
}

func (s *hostService) EndSplit(ctx context.Context, name string) error {
	if err := s.h.EndSplit(ctx, name); err != nil && !errors.Is(err, host.ErrNoSplit) {
		return err
	}
	return nil
}

func (s *hostService) Load(ctx context.Context, name, label string, f Fetched) (module.VersionStatus, error) {
	return s.h.LoadArtifact(ctx, name, label, f.Payload, f.Manifest)
}

func (s *hostService) Rollback(ctx context.Context, name string) (module.VersionStatus, error) {
	return s.h.Rollback(ctx, name)
}

func (s *hostService) Canary(ctx context.Context, name, label string, f Fetched, p canary.Policy, serving func(string)) (CanaryEnd, error) {
	cs, err := s.h.CanaryReader(ctx, name, label, f.Manifest, bytes.NewReader(f.Payload), p)
	if err != nil {
		return CanaryEnd{}, err
	}
	serving(string(cs.State))
	seq := 0
	for cs.State != canary.Promoted && cs.State != canary.Aborted {
		var vs []canary.Verdict
		vs, cs, err = s.h.WatchCanary(ctx, name, cs.ID, seq)
		if err != nil {
			// The canary must not outlive the change.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			s.h.CanaryCommand(host.WithActor(actx, "fleet"), name, canary.Abort)
			cancel()
			return CanaryEnd{}, fmt.Errorf("canary of %s: %w: %w", label, errCanaryCut, err)
		}
		seq += len(vs)
	}
	end := CanaryEnd{Version: cs.Version, Digest: cs.Digest, Note: string(cs.State)}
	if cs.Last != nil {
		end.Note = fmt.Sprintf("%s: %s", cs.State, cs.Last)
	}
	return end, host.CanaryResult(cs)
}

func (s *hostService) Upgrade(ctx context.Context, label string, f Fetched) (Upgraded, error) {
	dir := filepath.Join(s.h.StateDir(), "fleet")
	if err := statedir.Ensure(dir); err != nil {
		return Upgraded{}, fmt.Errorf("upgrade to %s: %w", label, err)
	}
	path, remove, err := writeBinary(dir, label, f)
	if err != nil {
		return Upgraded{}, err
	}
	defer remove()
	res, err := s.h.Upgrade(ctx, path)
	if err != nil {
		return Upgraded{}, err
	}
	return Upgraded{PID: res.PID, Replaced: res.Outcome == upgrade.Committed}, nil
}

// writeBinary writes a fetched binary and its manifest into dir for the
// service to verify, and returns its path and how to remove both. It is
// not made executable: the service executes only the copy it verified
// into its store.
func writeBinary(dir, label string, f Fetched) (string, func(), error) {
	tmp, err := os.CreateTemp(dir, "binary-*")
	if err != nil {
		return "", nil, fmt.Errorf("write binary %s: %w", label, err)
	}
	path := tmp.Name()
	remove := func() { os.Remove(path); os.Remove(path + ".manifest") }
	_, err = tmp.Write(f.Payload)
	err = errors.Join(err, tmp.Chmod(0o644), tmp.Close())
	if err == nil && f.Manifest != nil {
		err = os.WriteFile(path+".manifest", f.Manifest, 0o644)
	}
	if err != nil {
		remove()
		return "", nil, fmt.Errorf("write binary %s: %w", label, err)
	}
	return path, remove, nil
}

// SocketService returns the Service of the service that answers on c's
// control socket, for an agent run beside it. A fetched binary is written
// into binaryDir, which the service must be able to read (e.g. the volume
// that holds the socket), and the service verifies it from there.
func SocketService(c *control.Client, binaryDir string) Service {
	return &socketService{c: c, binaryDir: binaryDir}
}

type socketService struct {
	c         *control.Client
	binaryDir string
}

func (*socketService) isService() {}

func (s *socketService) Status(ctx context.Context) (ServiceStatus, error) {
	st, err := s.c.Status(ctx)
	if err != nil {
		return ServiceStatus{}, err
	}
	p := st.Process
	out := ServiceStatus{PID: p.PID, Upgrades: p.Upgrade.State != control.UpgradeDisabled, TakingOver: p.TakingOver,
		Binary: host.BinaryStatus{Digest: p.Binary.Digest, Version: p.Binary.Version, Error: p.Binary.Error}}
	for _, m := range st.Modules {
		out.Modules = append(out.Modules, module.Status{Name: m.Name, Active: socketVersion(m.Active), Previous: socketVersion(m.Previous)})
	}
	return out, nil
}

func socketVersion(v *control.VersionStatus) *module.VersionStatus {
	if v == nil {
		return nil
	}
	return &module.VersionStatus{Version: v.Version, Digest: v.Digest}
}

func (s *socketService) Load(ctx context.Context, name, label string, f Fetched) (module.VersionStatus, error) {
	res, err := s.c.Load(ctx, name, control.LoadRequest{Label: label, Payload: f.Payload, Manifest: f.Manifest}, nil)
	if err != nil {
		return module.VersionStatus{}, err
	}
	return moduleResult(res.Serving), nil
}

func (s *socketService) Rollback(ctx context.Context, name string) (module.VersionStatus, error) {
	res, err := s.c.Rollback(ctx, name, nil)
	if err != nil {
		return module.VersionStatus{}, err
	}
	return moduleResult(res.Serving), nil
}

func moduleResult(v *control.VersionStatus) module.VersionStatus {
	if v == nil {
		return module.VersionStatus{}
	}
	return module.VersionStatus{Version: v.Version, Digest: v.Digest}
}

func (s *socketService) Canary(ctx context.Context, name, label string, f Fetched, p canary.Policy, serving func(string)) (CanaryEnd, error) {
	wp := control.CanaryPolicy{Steps: p.Steps, IntervalMS: p.Interval.Milliseconds(), MinCalls: p.MinCalls, MaxEmptyWindows: p.MaxEmptyWindows}
	res, err := s.c.Canary(ctx, name, control.LoadRequest{Label: label, Payload: f.Payload, Manifest: f.Manifest}, wp, false, nil)
	if err != nil {
		return CanaryEnd{}, err
	}
	if res.Canary != nil {
		serving(res.Canary.State)
	}
	res, err = s.c.CanaryStatus(ctx, name, true, nil)
	end := CanaryEnd{}
	if c := res.Canary; c != nil {
		end.Note = c.State
		if c.Version != nil {
			end.Version, end.Digest = c.Version.Version, c.Version.Digest
		}
		if c.LastVerdict != nil {
			end.Note = fmt.Sprintf("%s: %s", c.State, c.LastVerdict.Text)
		}
	}
	switch {
	case err == nil:
		return end, nil
	case errors.Is(err, control.ErrAborted):
		return end, fmt.Errorf("%w: %w", canary.ErrAborted, err)
	}
	// Out of time, or the service went away: the canary must not outlive
	// the change.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	s.c.CanaryCommand(actx, name, "abort")
	cancel()
	return end, fmt.Errorf("canary of %s: %w: %w", label, errCanaryCut, err)
}

func (*socketService) Split(context.Context, string, string, Fetched, string, float64) error {
	return fmt.Errorf("%w: the control socket has no split operations (run the agent embedded for an A/B split)", ErrNoSplits)
}

func (*socketService) SetSplitWeight(context.Context, string, float64) error {
	return fmt.Errorf("%w: the control socket has no split operations", ErrNoSplits)
}

// EndSplit has nothing to end: a service reached over its socket reports
// no splits.
func (*socketService) EndSplit(context.Context, string) error { return nil }

func (s *socketService) Upgrade(ctx context.Context, label string, f Fetched) (Upgraded, error) {
	if s.binaryDir == "" {
		return Upgraded{}, fmt.Errorf("upgrade to %s: no directory shared with the service to hand it the binary in", label)
	}
	if err := os.MkdirAll(s.binaryDir, 0o700); err != nil {
		return Upgraded{}, fmt.Errorf("upgrade to %s: %w", label, err)
	}
	path, remove, err := writeBinary(s.binaryDir, label, f)
	if err != nil {
		return Upgraded{}, err
	}
	defer remove()
	res, err := s.c.Upgrade(ctx, path, nil)
	if err != nil {
		return Upgraded{}, err
	}
	return Upgraded{PID: res.ServingPID}, nil
}
