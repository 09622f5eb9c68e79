package control

import (
	"time"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// The wire format. Requests and plain answers are JSON objects; the answers
// of load, rollback and upgrade are NDJSON streams (see Line). Every answer
// embeds Outcome. docs/cli.md documents the Status document field by field;
// its field set is pinned by a test, so change it only by adding fields.

// Paths of the control API, all under APIPrefix.
const (
	APIPrefix    = "/v1"
	pathStatus   = APIPrefix + "/status"
	pathLoad     = APIPrefix + "/modules/{module}/load"
	pathRollback = APIPrefix + "/modules/{module}/rollback"
	pathHistory  = APIPrefix + "/history"
	pathUpgrade  = APIPrefix + "/upgrade"
)

// ContentTypeNDJSON marks a streamed answer: Progress lines, then one
// result line.
const ContentTypeNDJSON = "application/x-ndjson"

// Outcome is the part of every answer a caller acts on.
type Outcome struct {
	// OK is true if and only if the operation succeeded.
	OK bool `json:"ok"`
	// Error says why not; nil when OK.
	Error *Error `json:"error,omitempty"`
}

func (o *Outcome) outcome() *Outcome { return o }

// Status describes the service: the `hotswap status -o json` document.
type Status struct {
	Outcome
	Process ProcessStatus `json:"process"`
	// TrustMode is "enforce" (signatures required) or "development"
	// (unsigned artifacts accepted).
	TrustMode string `json:"trust_mode"`
	// DevTrustDir is the development trust root whose keys the service
	// trusts beside its own (see host.Options.DevTrustDir): set only in a
	// service started for development.
	DevTrustDir string `json:"dev_trust_dir,omitempty"`
	// Modules lists every module, sorted by name.
	Modules []ModuleStatus `json:"modules"`
	// State describes where the modules' host-kept state is kept.
	State StateStatus `json:"state"`
	// Plugins lists the Go plugins the process holds (they never unload;
	// see docs/goplugin.md); nil when the service runs no plugins.
	Plugins *module.Retained `json:"plugins,omitempty"`
}

// StateStatus describes the modules' host-kept state file (see
// docs/state.md).
type StateStatus struct {
	// Durability is "window" (on disk within CommitWindowMS), "sync" (a
	// write returns once on disk) or "memory" (lost with the process).
	Durability     string `json:"durability"`
	CommitWindowMS int64  `json:"commit_window_ms"`
	// Path is the state file; "" under memory durability.
	Path string `json:"path"`
	// TakingOver is set in a process started by an upgrade whose parent
	// still keeps the file: its writes are in memory only until then.
	TakingOver bool   `json:"taking_over"`
	Commits    uint64 `json:"commits"`
	Failures   uint64 `json:"failures"`
	// LastError is the last failed commit's error, "" once one succeeded.
	LastError string `json:"last_error"`
}

func stateStatus(s host.StateStatus) StateStatus {
	return StateStatus{Durability: s.Durability.String(), CommitWindowMS: s.CommitWindow.Milliseconds(), Path: s.Path,
		TakingOver: s.TakingOver, Commits: s.Commits, Failures: s.Failures, LastError: s.LastError}
}

// ProcessStatus describes the serving process.
type ProcessStatus struct {
	PID int `json:"pid"`
	// Generation is 1 for a process started fresh and one more than its
	// parent's for a process started by a binary upgrade.
	Generation int `json:"generation"`
	// ParentPID is the process this one replaced; 0 if started fresh.
	ParentPID int           `json:"parent_pid"`
	StartedAt time.Time     `json:"started_at"`
	Upgrade   UpgradeStatus `json:"upgrade"`
	// TakingOver is set in a process started by a binary upgrade until
	// its parent committed it: the parent may still resume serving.
	TakingOver bool `json:"taking_over"`
	// Binary names the running binary.
	Binary BinaryStatus `json:"binary"`
}

// BinaryStatus names the binary a process runs.
type BinaryStatus struct {
	// Digest is the hex SHA-256 of the running executable; empty if it
	// could not be read (Error says why).
	Digest string `json:"digest"`
	// Version is the version label of the signed manifest with that
	// digest, in the service's store or beside the executable; empty if
	// none names it.
	Version string `json:"version"`
	Error   string `json:"error,omitempty"`
}

// Upgrade states.
const (
	UpgradeDisabled  = "disabled"  // the service was built without binary upgrades
	UpgradeIdle      = "idle"      // none running
	UpgradeUpgrading = "upgrading" // an attempt runs (verify, start, ready, probation)
)

// UpgradeStatus is the process's binary upgrade state.
type UpgradeStatus struct {
	// State is UpgradeDisabled, UpgradeIdle or UpgradeUpgrading.
	State string `json:"state"`
	// Phase is where the process stands, as upgrade.Upgrader.Phase names
	// it ("idle", "waiting for ready", "parent probation", ...); empty when
	// upgrades are disabled.
	Phase string `json:"phase"`
	// PhasePID is the new process of the attempt running; 0 if none.
	PhasePID int `json:"phase_pid"`
	// Last is this process's last attempt; nil if none.
	Last *UpgradeAttempt `json:"last"`
}

// UpgradeAttempt is the outcome of one binary upgrade attempt.
type UpgradeAttempt struct {
	// Outcome is "committed", "rolled back" or "failed".
	Outcome string `json:"outcome"`
	// PID of the new process; 0 if it never started.
	PID int `json:"pid"`
	// Binary is the path executed (the copy in the artifact store).
	Binary string `json:"binary"`
	// Trigger is "call" (the control API) or a signal name.
	Trigger   string    `json:"trigger"`
	StartedAt time.Time `json:"started_at"`
	// ReadyMS is how long the new process took to say ready; 0 if it never
	// did.
	ReadyMS int64 `json:"ready_ms"`
	// Error says why it did not commit; empty if it did.
	Error string `json:"error,omitempty"`
}

// ModuleStatus describes one module.
type ModuleStatus struct {
	Name string `json:"name"`
	// Active serves every new call; nil before the first load.
	Active *VersionStatus `json:"active"`
	// Previous is kept warm for an instant rollback; nil if none.
	Previous *VersionStatus `json:"previous"`
	// Draining lists retired versions still finishing calls.
	Draining []VersionStatus `json:"draining"`
	// StateKeys is the number of keys in the module's host-kept state.
	StateKeys int `json:"state_keys"`
	// Canary is the canary running beside Active; nil if none.
	Canary *CanaryStatus `json:"canary"`
}

// VersionStatus describes one version of a module.
type VersionStatus struct {
	Version string `json:"version"`
	// Digest is the hex SHA-256 of the artifact.
	Digest   string    `json:"digest"`
	LoadedAt time.Time `json:"loaded_at"`
	// InFlight is the number of calls running in this version now.
	InFlight int64 `json:"in_flight"`
	// Instances is the number of live guest instances, busy or idle.
	Instances     int `json:"instances"`
	IdleInstances int `json:"idle_instances"`
	// MemoryBytes is the guest linear memory over all instances.
	MemoryBytes uint64 `json:"memory_bytes"`
	// Calls counts calls completed, successfully or not; Failures those
	// that returned an error.
	Calls    uint64 `json:"calls"`
	Failures uint64 `json:"failures"`
	// Discarded counts instances thrown away after a trap, timeout or
	// memory blow-up.
	Discarded uint64 `json:"discarded_instances"`
}

// LoadRequest is a load: the artifact's bytes and its manifest, read by the
// client, verified by the service. On the wire the payload is the request
// body (application/octet-stream, with its Content-Length) and the label and
// manifest travel in the LabelHeader and ManifestHeader headers, so the
// service checks the manifest (signature, name, kind, size) before it reads
// a byte of the payload, and reads no more than the manifest states.
type LoadRequest struct {
	// Label names the artifact in messages and the audit log, e.g. its file
	// name.
	Label   string
	Payload []byte
	// Manifest is the encoded signed manifest; nil if there is none (only a
	// service in development mode accepts that).
	Manifest []byte
}

// Headers of a load request.
const (
	// LabelHeader carries LoadRequest.Label.
	LabelHeader = "Hotswap-Label"
	// ManifestHeader carries LoadRequest.Manifest, base64-encoded (standard
	// encoding, with padding); absent when there is none.
	ManifestHeader = "Hotswap-Manifest"
)

// ModuleResult answers a load or a rollback.
type ModuleResult struct {
	Outcome
	Module string `json:"module"`
	// Serving is the version serving the module now: the new one after a
	// success, the one that kept serving after a refusal; nil if none.
	Serving *VersionStatus `json:"serving"`
	// Previous is the version kept warm for rollback; nil if none.
	Previous *VersionStatus `json:"previous"`
	// TookMS is how long the operation took.
	TookMS int64 `json:"took_ms"`
}

// History answers a history request.
type History struct {
	Outcome
	// Events are audit records, newest first (see package audit).
	Events []audit.Event `json:"events"`
}

// UpgradeRequest is the body of an upgrade.
type UpgradeRequest struct {
	// Binary is the path of the new binary on the service's machine; empty
	// means the service's configured binary.
	Binary string `json:"binary,omitempty"`
}

// UpgradeResult answers an upgrade.
type UpgradeResult struct {
	Outcome
	// Attempt is the outcome of the attempt; nil if none was started
	// (upgrades disabled, or another upgrade running).
	Attempt *UpgradeAttempt `json:"attempt"`
	// PID is the process that answered: the one being replaced.
	PID int `json:"pid"`
	// ServingPID is the process serving now: the new one after a success,
	// the one that answered otherwise.
	ServingPID int `json:"serving_pid"`
}

// Progress reports that a step of a long operation started.
type Progress struct {
	// Step is one of "verify", "store", "prepare" (compile, validate,
	// pre-warm, migrate), "activate", "hand over" (start the new process,
	// wait until it is ready, probation) and "canary" (a canary serves, or
	// one of its verdicts).
	Step string `json:"step"`
	// Detail names what the step applies to: an artifact, a version, a
	// binary.
	Detail string `json:"detail,omitempty"`
	// ElapsedMS is the time since the request arrived.
	ElapsedMS int64 `json:"elapsed_ms"`
	// Verdict is a canary's verdict, on lines of step "canary" while a
	// canary is followed.
	Verdict *CanaryVerdict `json:"verdict,omitempty"`
}

// Line is one line of a streamed answer: Progress lines, then exactly one
// line with Result (a ModuleResult or an UpgradeResult).
type Line struct {
	Progress *Progress `json:"progress,omitempty"`
	Result   any       `json:"result,omitempty"`
}

func versionStatus(v *module.VersionStatus) *VersionStatus {
	if v == nil {
		return nil
	}
	return &VersionStatus{
		Version:       v.Version,
		Digest:        v.Digest,
		LoadedAt:      v.LoadedAt,
		InFlight:      v.InFlight,
		Instances:     v.Instances,
		IdleInstances: v.IdleInstances,
		MemoryBytes:   v.MemoryBytes,
		Calls:         v.Calls,
		Failures:      v.Failures,
		Discarded:     v.Discarded,
	}
}

func moduleStatus(s module.Status) ModuleStatus {
	ms := ModuleStatus{
		Name:      s.Name,
		Active:    versionStatus(s.Active),
		Previous:  versionStatus(s.Previous),
		Draining:  make([]VersionStatus, 0, len(s.Draining)),
		StateKeys: s.StateKeys,
	}
	for i := range s.Draining {
		ms.Draining = append(ms.Draining, *versionStatus(&s.Draining[i]))
	}
	return ms
}

func upgradeAttempt(r *upgrade.Result) *UpgradeAttempt {
	if r == nil {
		return nil
	}
	a := &UpgradeAttempt{
		Outcome:   r.Outcome.String(),
		PID:       r.PID,
		Binary:    r.Binary,
		Trigger:   r.Trigger,
		StartedAt: r.Started,
		ReadyMS:   r.Ready.Milliseconds(),
	}
	if r.Err != nil {
		a.Error = r.Err.Error()
	}
	return a
}

func processStatus(p host.ProcessStatus) ProcessStatus {
	ps := ProcessStatus{
		PID:        p.PID,
		Generation: p.Generation,
		ParentPID:  p.ParentPID,
		StartedAt:  p.Started,
		Upgrade:    UpgradeStatus{State: UpgradeDisabled, Last: upgradeAttempt(p.LastUpgrade)},
		TakingOver: p.TakingOver,
		Binary:     BinaryStatus{Digest: p.Binary.Digest, Version: p.Binary.Version, Error: p.Binary.Error},
	}
	switch {
	case p.Upgrading:
		ps.Upgrade.State = UpgradeUpgrading
	case p.Upgrades:
		ps.Upgrade.State = UpgradeIdle
	}
	if p.Upgrades {
		ps.Upgrade.Phase, ps.Upgrade.PhasePID = p.UpgradePhase.String(), p.UpgradePID
	}
	return ps
}
