package host

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/upgrade"
)

// Steps of a change, as reported to the function given to WithProgress.
const (
	StepVerify   = "verify"    // check the artifact's digest, signature and policy
	StepStore    = "store"     // keep the verified artifact in the local store
	StepPrepare  = "prepare"   // compile, validate, pre-warm and migrate the version
	StepActivate = "activate"  // every check passed: new calls go to the version
	StepHandOver = "hand over" // start the new process, wait for ready, probation
)

type progressKey struct{}

// WithProgress returns a context whose changes (LoadArtifact, LoadFile,
// Rollback, Upgrade) call report as each step starts, with the step (one of
// the Step constants) and what it applies to. report is called from the
// goroutine making the change and must not block for long.
func WithProgress(ctx context.Context, report func(step, detail string)) context.Context {
	return context.WithValue(ctx, progressKey{}, report)
}

func progress(ctx context.Context, step, detail string) {
	if report, _ := ctx.Value(progressKey{}).(func(step, detail string)); report != nil {
		report(step, detail)
	}
}

// processState is what Process reports beyond the host's fixed fields.
type processState struct {
	// Set before the host is returned, read-only afterwards.
	generation int // 0 means 1: started fresh
	parentPID  int

	binaryOnce sync.Once
	binary     BinaryStatus // set once by binaryOnce; see Host.binary

	mu        sync.Mutex // protects upgrading, last and pending
	upgrading bool
	last      *upgrade.Result
	pending   *pendingUpgrade
}

// ProcessStatus describes the process a Host runs in.
type ProcessStatus struct {
	PID int
	// Generation counts the processes of this service: 1 for a process
	// started fresh, one more than its parent's for one started by an
	// upgrade.
	Generation int
	// ParentPID is the process this one replaced, 0 for one started fresh.
	ParentPID int
	Started   time.Time
	// Upgrades reports whether binary upgrades are enabled.
	Upgrades bool
	// Upgrading is set from the start of an upgrade attempt until its
	// outcome is known (after probation).
	Upgrading bool
	// UpgradePhase is where this process stands in binary upgrades (see
	// upgrade.Phase): the phase of a running attempt, or of this process
	// on either side of a hand-over. upgrade.PhaseIdle when upgrades are
	// off.
	UpgradePhase upgrade.Phase
	// UpgradePID is the new process of the running attempt, from
	// upgrade.PhaseWaitReady to upgrade.PhaseProbation; else 0.
	UpgradePID int
	// LastUpgrade is the outcome of this process's last upgrade attempt,
	// nil if there was none.
	LastUpgrade *upgrade.Result
	// TakingOver is set in a process started by an upgrade until its
	// parent committed the upgrade (after probation): until then the
	// parent may resume serving if this process dies.
	TakingOver bool
	// Binary names the running binary: its digest, and its version when a
	// signed manifest names it.
	Binary BinaryStatus
}

// Process describes the process the host runs in: its generation, the
// process it replaced, its binary and its upgrade state. The first call
// reads the running executable once, to hash it.
func (h *Host) Process() ProcessStatus {
	binary := h.binary()
	var phase upgrade.Phase
	var pid int
	if h.up != nil {
		phase, pid = h.up.Phase()
	}
	h.proc.mu.Lock()
	defer h.proc.mu.Unlock()
	var last *upgrade.Result
	if h.proc.last != nil {
		r := *h.proc.last
		last = &r
	}
	return ProcessStatus{
		PID:          os.Getpid(),
		Generation:   h.generation(),
		ParentPID:    h.proc.parentPID,
		Started:      h.started,
		Upgrades:     h.up != nil,
		Upgrading:    h.proc.upgrading,
		UpgradePhase: phase,
		UpgradePID:   pid,
		LastUpgrade:  last,
		TakingOver:   h.up != nil && h.up.TakingOver(),
		Binary:       binary,
	}
}

func (h *Host) generation() int { return max(h.proc.generation, 1) }

func (h *Host) setUpgrading(res *upgrade.Result) {
	h.proc.mu.Lock()
	defer h.proc.mu.Unlock()
	h.proc.upgrading = res == nil
	if res != nil {
		h.proc.last = res
	}
}

// AuditRefusal records that action on target was refused because of err,
// naming the actor of ctx (see WithActor). Use it for refusals made before
// the host is asked, e.g. a control connection from a peer not allowed.
func (h *Host) AuditRefusal(ctx context.Context, action audit.Action, target string, err error) error {
	return h.record(ctx, audit.Event{Action: action, Target: target, Result: audit.ResultRefused, Error: err.Error()})
}
