package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
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
}

func (h *Host) startUpgrader(opts upgrade.Options) error {
	appSnapshot, onResult := opts.Snapshot, opts.OnResult
	opts.PrepareBinary = h.prepareBinary
	opts.Snapshot = func(ctx context.Context) ([]byte, error) {
		ho := handover{Modules: make(map[string]map[string][]byte), Generation: h.generation()}
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
		if res.Err != nil && !errors.As(res.Err, new(auditedError)) {
			h.record(WithActor(context.Background(), "upgrade "+res.Trigger), audit.Event{Action: audit.ActionUpgrade, Target: "process", To: res.Binary,
				Result: audit.ResultFailed, Error: res.Err.Error()})
		}
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
	}
	if up.HasParent() {
		h.proc.parentPID = os.Getppid()
	}
	h.up = up
	return nil
}

// prepareBinary verifies the binary at path, copies it into the store and
// audits the upgrade before the upgrader executes the copy.
func (h *Host) prepareBinary(ctx context.Context, path string) (string, error) {
	h.setUpgrading(nil)
	progress(ctx, StepVerify, path)
	entry, err := h.verifier.VerifyToStore(ctx, h.store, path, artifact.Expect{Kind: artifact.KindBinary})
	if err != nil {
		return "", auditedError{h.refuse(ctx, audit.ActionUpgrade, "process", "", path, err)}
	}
	to := versionRef(entry.Manifest.Version, entry.Manifest.Digest.Hex())
	if err := h.record(ctx, audit.Event{Action: audit.ActionUpgrade, Target: "process", To: to, Result: audit.ResultOK}); err != nil {
		return "", fmt.Errorf("upgrade refused: audit log: %w", err)
	}
	progress(ctx, StepHandOver, entry.Path)
	return entry.Path, nil
}

// auditedError is a refusal prepareBinary already recorded in the audit
// log, so that OnResult does not record the same attempt again as failed.
type auditedError struct{ error }

func (e auditedError) Unwrap() error { return e.error }
