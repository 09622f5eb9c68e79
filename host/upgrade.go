package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/upgrade"
)

// handover is the state blob one process hands to the next.
type handover struct {
	// Modules holds each module's host-kept state.
	Modules map[string]map[string][]byte `json:"modules"`
	// App is the service's own blob (Options.Upgrade.Snapshot).
	App []byte `json:"app,omitempty"`
	// Generation is the generation of the process handing over.
	Generation int `json:"generation,omitempty"`
	// StateFile says the process handing over keeps the modules' state in
	// the state file, which it hands over by closing it: the new process
	// then replays its own changes onto the file's contents. Without it
	// (DurabilityMemory, or a version before the state file), Modules is
	// the whole state.
	StateFile bool `json:"state_file,omitempty"`
	// Trace is the trace context (W3C traceparent) of the upgrade that
	// started the new process, which records its start in that trace.
	Trace map[string]string `json:"trace,omitempty"`
}

func (h *Host) startUpgrader(opts upgrade.Options) error {
	appSnapshot, onResult := opts.Snapshot, opts.OnResult
	opts.PrepareBinary = h.prepareBinary
	opts.Snapshot = func(ctx context.Context) ([]byte, error) {
		keepsFile, err := h.state.handover(ctx)
		if err != nil {
			return nil, err
		}
		ho := handover{Modules: make(map[string]map[string][]byte), Generation: h.generation(), StateFile: keepsFile,
			Trace: h.traceCarrier()}
		for _, st := range h.reg.Status() {
			ho.Modules[st.Name] = h.reg.Module(st.Name).State().Snapshot()
		}
		if appSnapshot != nil {
			app, err := appSnapshot(ctx)
			if err != nil {
				return nil, err
			}
			ho.App = app
		}
		return json.Marshal(ho)
	}
	opts.OnResult = func(res upgrade.Result) {
		h.setUpgrading(&res)
		h.upgradeResult(res)
		if onResult != nil {
			onResult(res)
		}
	}
	if opts.Logger == nil {
		opts.Logger = h.log
	}
	up, err := upgrade.New(opts)
	if err != nil {
		return fmt.Errorf("host: %w", err)
	}
	if blob := up.State(); blob != nil {
		var ho handover
		if err := json.Unmarshal(blob, &ho); err != nil {
			up.Close()
			return fmt.Errorf("host: decode the state handed over by the previous process: %w", err)
		}
		for name, kv := range ho.Modules {
			h.reg.Module(name).State().Restore(kv)
		}
		h.appState = ho.App
		h.proc.generation = ho.Generation + 1
		h.childSpan = h.startChildSpan(ho.Trace, h.proc.generation)
		h.state.parentKeepsFile = ho.StateFile
	}
	if up.HasParent() {
		h.proc.parentPID = os.Getppid()
	}
	h.up = up
	return nil
}

// prepareBinary verifies the binary at path as a binary of this service,
// copies it into the store and audits the upgrade before the upgrader
// executes the copy.
func (h *Host) prepareBinary(ctx context.Context, path string) (string, error) {
	h.setUpgrading(nil)
	c, err := h.begin(ctx, audit.ActionUpgrade, "process", path)
	if err != nil {
		return "", auditedError{err}
	}
	if err := h.canaries.holdUpgrade(); err != nil {
		return "", auditedError{c.refuse(err)}
	}
	refuse := func(err error) (string, error) { h.canaries.releaseUpgrade(); return "", auditedError{c.refuse(err)} }
	c.step(ctx, StepVerify, path)
	service, err := h.serviceName()
	if err != nil {
		return refuse(&artifact.VerifyError{Artifact: path, Check: artifact.CheckName, Err: err})
	}
	entry, err := h.verifier.VerifyToStore(ctx, h.store, path, artifact.Expect{Kind: artifact.KindBinary, Name: service})
	if err != nil {
		return refuse(err)
	}
	c.ev.To = versionRef(entry.Manifest.Version, entry.Manifest.Digest.Hex())
	if err := c.allow(); err != nil {
		h.canaries.releaseUpgrade()
		h.forgetBinary(entry)
		return "", auditedError{err}
	}
	h.proc.mu.Lock()
	h.proc.pending = &pendingUpgrade{change: c, entry: entry}
	h.proc.mu.Unlock()
	c.step(ctx, StepHandOver, entry.Path)
	return entry.Path, nil
}

// pendingUpgrade is the binary upgrade that prepareBinary allowed and whose
// outcome the upgrader will report.
type pendingUpgrade struct {
	change *change
	entry  artifact.Entry
}

// upgradeResult records the outcome of an upgrade attempt. A binary that
// did not take over leaves the store, so it takes no place in its retention
// bound; one that did becomes the service's current binary there.
func (h *Host) upgradeResult(res upgrade.Result) {
	h.proc.mu.Lock()
	p := h.proc.pending
	h.proc.pending = nil
	h.proc.mu.Unlock()
	h.stats.countUpgrade(res, p == nil)
	if p == nil {
		if res.Err != nil && !errors.As(res.Err, new(auditedError)) {
			// Failed before prepareBinary allowed it (e.g. another upgrade
			// was running).
			h.record(WithActor(context.Background(), "upgrade "+res.Trigger), audit.Event{Action: audit.ActionUpgrade, Target: "process",
				To: res.Binary, Result: audit.ResultRefused, Error: res.Err.Error()})
		}
		return
	}
	h.canaries.releaseUpgrade() // prepareBinary held it
	upgradeSpanResult(p.change, res.PID, res.Outcome.String(), res.Err)
	if res.Err != nil {
		p.change.fail(res.Err)
		h.forgetBinary(p.entry)
		return
	}
	m := p.entry.Manifest
	ctx := context.Background()
	if prev, err := h.store.Current(m.Name); err == nil && prev.Manifest.Digest != m.Digest {
		if err := h.store.SetLastKnownGood(ctx, m.Name, prev.Manifest.Digest); err != nil {
			h.log.Error("record last-known-good binary", logkey.Err, err)
		}
	}
	if err := h.store.SetCurrent(ctx, m.Name, m.Digest); err != nil {
		h.log.Error("record current binary", logkey.Err, err)
	}
}

// forgetBinary removes a binary that did not take over from the store
// (unless it is the current or the last-known-good one there).
func (h *Host) forgetBinary(e artifact.Entry) {
	if err := h.store.Remove(context.Background(), e.Manifest.Name, e.Manifest.Digest); err != nil {
		h.log.Error("remove a binary that did not take over from the store", logkey.Err, err)
	}
}

// serviceName returns the name this service's binaries are signed with:
// Options.Service, else the name in the running binary's manifest, beside
// it or, for a binary started from the store, in the store.
func (h *Host) serviceName() (string, error) {
	if h.service != "" {
		return h.service, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("%w: %v", errUnknownService, err)
	}
	if data, err := os.ReadFile(artifact.ManifestPath(exe)); err == nil {
		if sm, err := artifact.ParseManifest(data); err == nil && sm.Manifest.Kind == artifact.KindBinary {
			return sm.Manifest.Name, nil
		}
	}
	if d, err := artifact.ParseDigest(filepath.Base(exe)); err == nil && filepath.Dir(exe) == filepath.Join(h.store.Dir(), "blobs") {
		entries, err := h.store.Lookup(d)
		if err != nil {
			return "", fmt.Errorf("%w: %v", errUnknownService, err)
		}
		for _, e := range entries {
			if e.Manifest.Kind == artifact.KindBinary {
				return e.Manifest.Name, nil
			}
		}
	}
	return "", fmt.Errorf("%w: no signed manifest for %s", errUnknownService, exe)
}

var errUnknownService = errors.New("the service's name is unknown, so no binary can be checked as an upgrade of it " +
	"(set host.Options.Service to the name its binaries are signed with, or keep the running binary's signed manifest beside it)")

// auditedError is a refusal prepareBinary already recorded in the audit
// log, so that OnResult does not record the same attempt again as failed.
type auditedError struct{ error }

func (e auditedError) Unwrap() error { return e.error }
