package host

import (
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// Results of a change as ChangeStats counts them: the audit results, plus
// the outcomes of binary upgrades.
const (
	ResultOK         = string(audit.ResultOK)       // the change took effect
	ResultRefused    = string(audit.ResultRefused)  // a check refused it; nothing changed
	ResultFailed     = string(audit.ResultFailed)   // allowed, it failed to take effect
	ResultCanceled   = string(audit.ResultCanceled) // the caller gave up
	ResultRolledBack = "rolled back"                // an upgrade's new process died in probation
)

// CheckNone is the check of a change that no check refused.
const CheckNone = "none"

// MaxStatsModules bounds the modules ChangeStats counts one by one; the
// changes of modules past it (typos, or names made up by whoever may load)
// are counted under OtherModules, so no caller can grow the counters
// without bound.
const MaxStatsModules = 256

// OtherModules is the module name ChangeStats counts past MaxStatsModules
// under.
const OtherModules = "_other"

// Outcome is a change's result and, for a refusal or failure, the check that
// said no (an artifact.Check or a module.LoadError check; "busy" or "other"
// for the rest; CheckNone for a change that took effect).
type Outcome struct {
	Result string
	Check  string
}

// ModuleChanges counts the changes of one module.
type ModuleChanges struct {
	// Loads counts loads (and canaries) by outcome; Rollbacks counts
	// rollbacks by outcome.
	Loads, Rollbacks map[Outcome]uint64
	// Swaps counts the times a version of the module became active: loads,
	// rollbacks and promoted canaries.
	Swaps uint64
	// SwapTime holds how long each activation took (migrate hook and
	// switch); LoadToServing how long from the request of a load or
	// rollback until the version served.
	SwapTime, LoadToServing module.Histogram
	// CanaryVerdicts counts the verdicts of the module's canaries by
	// decision.
	CanaryVerdicts map[string]uint64
}

// ChangeStats counts a host's changes since it started. It is a snapshot.
type ChangeStats struct {
	// Modules holds the changes of each module, by name (see
	// MaxStatsModules).
	Modules map[string]*ModuleChanges
	// Upgrades counts binary upgrades by result (ResultOK for a committed
	// one, ResultRefused, ResultFailed, ResultRolledBack).
	Upgrades map[string]uint64
	// UpgradeReady holds how long new processes took to say ready;
	// UpgradeProbation how long their probation lasted.
	UpgradeReady, UpgradeProbation module.Histogram
}

// stats are a host's change counters. Changes are rare (an operator's
// pace), so a mutex serves; the call path never touches them.
type stats struct {
	mu sync.Mutex // protects every field
	ChangeStats
}

// ChangeStats returns the host's change counters, for a metrics collector.
func (h *Host) ChangeStats() ChangeStats {
	s := &h.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	out := ChangeStats{Modules: make(map[string]*ModuleChanges, len(s.Modules)), Upgrades: maps.Clone(s.Upgrades),
		UpgradeReady: s.UpgradeReady, UpgradeProbation: s.UpgradeProbation}
	for name, mc := range s.Modules {
		c := *mc
		c.Loads, c.Rollbacks, c.CanaryVerdicts = maps.Clone(mc.Loads), maps.Clone(mc.Rollbacks), maps.Clone(mc.CanaryVerdicts)
		out.Modules[name] = &c
	}
	return out
}

// module returns the counters of module name, made on first use; s.mu is
// held.
func (s *stats) module(name string) *ModuleChanges {
	if s.Modules == nil {
		s.Modules = make(map[string]*ModuleChanges)
	}
	mc := s.Modules[name]
	if mc == nil {
		if len(s.Modules) >= MaxStatsModules {
			name = OtherModules
			if mc = s.Modules[name]; mc != nil {
				return mc
			}
		}
		mc = &ModuleChanges{Loads: map[Outcome]uint64{}, Rollbacks: map[Outcome]uint64{}, CanaryVerdicts: map[string]uint64{}}
		s.Modules[name] = mc
	}
	return mc
}

// countChange counts the end of a module change: result, and the error
// that refused it or made it fail.
func (s *stats) countChange(action audit.Action, name string, result audit.Result, err error) {
	o := Outcome{Result: string(result), Check: checkOf(err)}
	s.mu.Lock()
	defer s.mu.Unlock()
	mc := s.module(name)
	if action == audit.ActionRollback {
		mc.Rollbacks[o]++
	} else {
		mc.Loads[o]++
	}
}

// countSwap counts a version of module name becoming active; activate is
// how long the switch took and sinceRequest how long since the change was
// asked for (both 0 for a promoted canary, whose switch the canary timed
// and whose request was its start).
func (s *stats) countSwap(name string, activate, sinceRequest time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mc := s.module(name)
	mc.Swaps++
	if activate > 0 {
		mc.SwapTime.Observe(activate)
	}
	if sinceRequest > 0 {
		mc.LoadToServing.Observe(sinceRequest)
	}
}

func (s *stats) countVerdict(name, decision string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.module(name).CanaryVerdicts[decision]++
}

// countUpgrade counts the outcome of a binary upgrade attempt; refused
// says a check refused it before a new process started.
func (s *stats) countUpgrade(res upgrade.Result, refused bool) {
	result := ResultOK
	switch {
	case refused:
		result = ResultRefused
	case res.Outcome == upgrade.RolledBack:
		result = ResultRolledBack
	case res.Outcome != upgrade.Committed:
		result = ResultFailed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Upgrades == nil {
		s.Upgrades = make(map[string]uint64)
	}
	s.Upgrades[result]++
	if res.Ready > 0 {
		s.UpgradeReady.Observe(res.Ready)
	}
	if res.Probation > 0 {
		s.UpgradeProbation.Observe(res.Probation)
	}
}

// checkOf names the check that refused a change, from the typed errors
// that carry one.
func checkOf(err error) string {
	var ve *artifact.VerifyError
	var le *module.LoadError
	switch {
	case err == nil:
		return CheckNone
	case errors.As(err, &ve):
		return string(ve.Check)
	case errors.As(err, &le):
		return le.Check
	case errors.Is(err, module.ErrBusy):
		return "busy"
	}
	return "other"
}
