// Package host is what a service embeds to hot-swap its code safely: it
// puts one trust path in front of the module registry and the binary
// upgrade, keeps verified artifacts in a local store, and records every
// change and every refusal in the audit log.
//
// A change takes this path:
//
//	artifact bytes → verify (digest, signature, policy) → store → registry
//	(compile, validate, pre-warm, migrate) → audit → activate
//
// Anything that fails before activation is refused with an error naming the
// artifact and the failed check, and the version that was serving keeps
// serving. The audit record of a change is written (and fsync'd) before the
// change takes effect; if it cannot be written, the change is refused.
package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// StateDirEnv names the environment variable that overrides the default
// state directory.
const StateDirEnv = "HOTSWAP_STATE_DIR"

// DefaultStateDir returns $HOTSWAP_STATE_DIR, or hotswap under the user's
// configuration directory. The CLI's keygen, sign and verify use the same.
func DefaultStateDir() string {
	if d := os.Getenv(StateDirEnv); d != "" {
		return d
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "hotswap")
}

// Options configures a Host. The zero value of each field means its
// default; Backend is required.
type Options struct {
	// Backend prepares module versions, e.g. a *wasm.Backend. Required; the
	// host owns it from now on.
	Backend module.Backend
	// StateDir holds trust/ (trusted public keys), store/ (verified
	// artifacts) and audit.log. Defaults to DefaultStateDir().
	StateDir string
	// Development accepts unsigned artifacts (digests are still checked).
	// Status reports it, so no one mistakes a development host for a
	// production one. Defaults to false: signatures required.
	Development bool
	// Upgrade, if set, enables binary upgrades: the host creates the
	// process's one upgrader with these options (see Upgrader). It sets
	// PrepareBinary, so every new binary, whatever triggered the upgrade, is
	// verified, copied into the store and audited before it is executed;
	// and it wraps Snapshot and OnResult, so the modules' host-kept state
	// travels to the new process with the service's own blob (AppState).
	// Defaults to nil: no upgrades.
	Upgrade *upgrade.Options
	// Logger defaults to discarding.
	Logger *slog.Logger
	// DrainTimeout is the registry's drain bound. Defaults to
	// module.DefaultDrainTimeout.
	DrainTimeout time.Duration
}

// Host is a service's hot-swap machinery. It is safe for concurrent use.
type Host struct {
	reg      *module.Registry
	verifier *artifact.Verifier
	store    *artifact.Store
	audit    *audit.Log
	up       *upgrade.Upgrader
	appState []byte // the service's part of the state blob handed over
	log      *slog.Logger
	dev      bool
	started  time.Time
	proc     processState // generation, parent and upgrade state; see Process
}

// New opens the state directory and returns a Host. Call RestoreModules to
// load the versions that were current before a restart.
func New(opts Options) (*Host, error) {
	if opts.Backend == nil {
		return nil, errors.New("host: Options.Backend is required")
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	trustDir := filepath.Join(opts.StateDir, "trust")
	if err := os.MkdirAll(trustDir, 0o700); err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	trust, err := artifact.LoadTrustStore(trustDir)
	if err != nil {
		return nil, fmt.Errorf("host: load trust store: %w", err)
	}
	mode := artifact.ModeEnforce
	if opts.Development {
		mode = artifact.ModeDevelopment
	}
	verifier, err := artifact.NewVerifier(trust, artifact.VerifierOptions{Mode: mode, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	store, err := artifact.OpenStore(filepath.Join(opts.StateDir, "store"), artifact.StoreOptions{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("host: open store: %w", err)
	}
	al, err := audit.Open(filepath.Join(opts.StateDir, "audit.log"), audit.Options{})
	if err != nil {
		return nil, fmt.Errorf("host: open audit log: %w", err)
	}
	h := &Host{verifier: verifier, store: store, audit: al, log: log, dev: opts.Development, started: time.Now()}
	h.reg, err = module.New(module.Options{Backend: opts.Backend, Logger: log, DrainTimeout: opts.DrainTimeout, Audit: h.auditModule})
	if err != nil {
		al.Close()
		return nil, fmt.Errorf("host: %w", err)
	}
	if opts.Upgrade != nil {
		if err := h.startUpgrader(*opts.Upgrade); err != nil {
			h.reg.Close(context.Background())
			al.Close()
			return nil, err
		}
	}
	if h.dev {
		log.Warn("development mode: unsigned artifacts are accepted")
	}
	return h, nil
}

// Registry returns the module registry; call modules through it (or through
// Module handles), never load through it: loads belong to the Host.
func (h *Host) Registry() *module.Registry { return h.reg }

// Module returns the handle of the named module.
func (h *Host) Module(name string) *module.Module { return h.reg.Module(name) }

// TrustMode returns "enforce" or "development".
func (h *Host) TrustMode() string { return h.verifier.Mode().String() }

type actorKey struct{}

// WithActor returns a context naming who asked for the changes made with
// it, for the audit log (e.g. audit.PeerActor(uid, pid), "watch", "cli").
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actor(ctx context.Context) string {
	a, _ := ctx.Value(actorKey{}).(string)
	return a
}

// LoadFile verifies the artifact at path (with its manifest at
// path+".manifest") as a version of module name and loads it. It reads the
// manifest up to artifact.MaxManifestSize and, only once the manifest
// passed, the payload up to the size the manifest states, so a huge file
// costs nothing. See LoadArtifact.
func (h *Host) LoadFile(ctx context.Context, name, path string) (module.VersionStatus, error) {
	progress(ctx, StepVerify, filepath.Base(path))
	if _, err := os.Stat(path); err != nil {
		return module.VersionStatus{}, h.refuse(ctx, audit.ActionSwap, name, "", "", fmt.Errorf("load %s from %s: %w", name, path, err))
	}
	vd, err := h.verifier.Verify(ctx, path, artifact.Expect{Name: name, Kind: artifact.KindWasm})
	if err != nil {
		return module.VersionStatus{}, h.refuse(ctx, audit.ActionSwap, name, "", "", err)
	}
	return h.storeAndLoad(ctx, name, vd)
}

// LoadArtifact verifies payload against manifest (nil: none) as a WASM
// version of module name, keeps it in the store, and loads it: when every
// check passes it serves all new calls and the version it replaces stays
// warm for rollback. A refusal is audited and returned as an error that
// names the artifact and the failed check (an *artifact.VerifyError or a
// *module.LoadError); the active version keeps serving.
func (h *Host) LoadArtifact(ctx context.Context, name, label string, payload, manifest []byte) (module.VersionStatus, error) {
	progress(ctx, StepVerify, label)
	vd, err := h.verifier.VerifyBytes(ctx, label, manifest, payload, artifact.Expect{Name: name, Kind: artifact.KindWasm})
	if err != nil {
		return module.VersionStatus{}, h.refuse(ctx, audit.ActionSwap, name, "", "", err)
	}
	return h.storeAndLoad(ctx, name, vd)
}

// storeAndLoad keeps a verified artifact in the store and loads it.
func (h *Host) storeAndLoad(ctx context.Context, name string, vd *artifact.Verified) (module.VersionStatus, error) {
	to := versionRef(vd.Manifest.Version, vd.Manifest.Digest.Hex())
	progress(ctx, StepStore, to)
	if _, err := h.store.Put(ctx, vd); err != nil {
		return module.VersionStatus{}, h.refuse(ctx, audit.ActionSwap, name, "", to, fmt.Errorf("store %s: %w", to, err))
	}
	progress(ctx, StepPrepare, to)
	return h.loadVerified(ctx, name, vd)
}

// remember records in the store which version is current and which served
// before it: the last-known-good, for a rollback after a restart.
func (h *Host) remember(ctx context.Context, name string, prev *module.VersionStatus, cur artifact.Digest) {
	if err := h.store.SetCurrent(ctx, name, cur); err != nil {
		h.log.Error("record current version", "module", name, "err", err)
	}
	if prev == nil {
		return
	}
	if d, err := artifact.ParseDigest(prev.Digest); err == nil && d != cur {
		if err := h.store.SetLastKnownGood(ctx, name, d); err != nil {
			h.log.Error("record last-known-good version", "module", name, "err", err)
		}
	}
}

// Rollback makes the previous version of module name serve again. It is
// instant when the previous version is still warm; after a restart it
// loads the last-known-good version from the store, verified again. Either
// way the audit log records one rollback, done or refused.
func (h *Host) Rollback(ctx context.Context, name string) (module.VersionStatus, error) {
	ctx = context.WithValue(ctx, rollbackKey{}, true)
	st, err := h.reg.Rollback(ctx, name)
	if err == nil {
		if d, perr := artifact.ParseDigest(st.Digest); perr == nil {
			if err := h.store.SetCurrent(ctx, name, d); err != nil {
				h.log.Error("record current version", "module", name, "err", err)
			}
		}
		return st, nil
	}
	if !noWarmPrevious(err) {
		return st, err
	}
	// The registry left this refusal to us (see auditModule): record it
	// below unless the last-known-good version serves instead.
	cur := h.reg.Module(name).Status().Active
	var from string
	if cur != nil {
		from = versionRef(cur.Version, cur.Digest)
	}
	entry, lerr := h.store.LastKnownGood(name)
	if lerr != nil {
		return st, h.refuse(ctx, audit.ActionRollback, name, from, "", fmt.Errorf("%w; no last-known-good version in the store either", err))
	}
	to := versionRef(entry.Manifest.Version, entry.Manifest.Digest.Hex())
	if cur != nil && cur.Digest == entry.Manifest.Digest.Hex() {
		return st, h.refuse(ctx, audit.ActionRollback, name, from, "", fmt.Errorf("%w; the last-known-good version %s is the one serving", err, entry.Manifest.Version))
	}
	vd, verr := h.verifier.VerifyEntry(ctx, entry)
	if verr != nil {
		return st, h.refuse(ctx, audit.ActionRollback, name, from, to, verr)
	}
	return h.loadVerified(ctx, name, vd)
}

// rollbackKey marks the context of a Host.Rollback, so that auditModule
// records its load of the last-known-good version as a rollback.
type rollbackKey struct{}

func inRollback(ctx context.Context) bool { return ctx.Value(rollbackKey{}) != nil }

// noWarmPrevious reports whether the registry refused a rollback only
// because it keeps no previous version, which the store may still have.
func noWarmPrevious(err error) bool {
	return errors.Is(err, module.ErrNoPrevious) || errors.Is(err, module.ErrNotFound)
}

func (h *Host) loadVerified(ctx context.Context, name string, vd *artifact.Verified) (module.VersionStatus, error) {
	prev := h.reg.Module(name).Status().Active
	st, err := h.reg.Load(ctx, name, module.Source{Version: vd.Manifest.Version, Artifact: vd.Payload, Digest: vd.Manifest.Digest.Hex()})
	if err != nil {
		return st, err
	}
	if inRollback(ctx) {
		prev = nil // the version rolled back from is not known to be good
	}
	h.remember(ctx, name, prev, vd.Manifest.Digest)
	return st, nil
}

// RestoreModules loads, for every module in the store, the version that was
// current, verified again; if that fails, the last-known-good one. Every
// version it could not restore is audited as refused and its error
// returned, also when the last-known-good version serves in its place: a
// stored version that no longer verifies means the store was tampered with
// or the trusted keys changed.
func (h *Host) RestoreModules(ctx context.Context) error {
	names, err := h.store.Names()
	if err != nil {
		return fmt.Errorf("restore modules: %w", err)
	}
	var errs []error
	ctx = WithActor(ctx, "restore")
	for _, name := range names {
		var tried []artifact.Digest
		for _, get := range []func(string) (artifact.Entry, error){h.store.Current, h.store.LastKnownGood} {
			entry, err := get(name)
			if err != nil || slices.Contains(tried, entry.Manifest.Digest) {
				continue
			}
			if entry.Manifest.Kind != artifact.KindWasm {
				break
			}
			tried = append(tried, entry.Manifest.Digest)
			vd, err := h.verifier.VerifyEntry(ctx, entry)
			if err != nil {
				to := versionRef(entry.Manifest.Version, entry.Manifest.Digest.Hex())
				err = h.refuse(ctx, audit.ActionSwap, name, "", to, err)
			} else {
				_, err = h.loadVerified(ctx, name, vd) // the registry audits a refusal
			}
			if err == nil {
				break
			}
			errs = append(errs, fmt.Errorf("restore %s %s: %w", name, entry.Manifest.Version, err))
		}
	}
	return errors.Join(errs...)
}

// History returns audit events, newest first.
func (h *Host) History(ctx context.Context, f audit.Filter) ([]audit.Event, error) {
	return h.audit.Read(ctx, f)
}

// Upgrader returns the process's upgrader, or nil when Options.Upgrade was
// not set. Take listeners from it and call its Ready once serving.
func (h *Host) Upgrader() *upgrade.Upgrader { return h.up }

// AppState returns the service's own state blob handed over by the process
// this one replaced (see Options.Upgrade.Snapshot), or nil.
func (h *Host) AppState() []byte { return h.appState }

// Upgrade replaces the process's binary with the one at path (the
// upgrader's default binary when empty), verified and executed from the
// store. It returns the new process's PID, or why it failed; this process
// keeps serving in that case.
func (h *Host) Upgrade(ctx context.Context, path string) (upgrade.Result, error) {
	if h.up == nil {
		return upgrade.Result{}, errors.New("upgrade: this host was created without Options.Upgrade")
	}
	return h.up.UpgradeBinary(WithActor(ctx, actor(ctx)), path)
}

// Close drains and closes every module version, then the audit log.
func (h *Host) Close(ctx context.Context) error {
	err := h.reg.Close(ctx)
	if h.up != nil {
		err = errors.Join(err, h.up.Close())
	}
	return errors.Join(err, h.audit.Close())
}

// auditModule records the registry's changes: the record of a switch is
// written before it happens, and a failure to write it refuses the switch.
func (h *Host) auditModule(ctx context.Context, ev module.Event) error {
	rec := audit.Event{
		Action: audit.ActionSwap,
		Target: ev.Module,
		From:   versionRef(ev.FromVersion, ev.FromDigest),
		To:     versionRef(ev.ToVersion, ev.ToDigest),
	}
	if ev.Action == module.ActionRollback || inRollback(ctx) {
		rec.Action = audit.ActionRollback
	}
	if ev.Action == module.ActionRollback && ev.Result == module.ResultRefused && inRollback(ctx) && noWarmPrevious(ev.Err) {
		return nil // Host.Rollback tries the store and records the outcome
	}
	switch ev.Result {
	case module.ResultPending:
		rec.Result = audit.ResultOK
		progress(ctx, StepActivate, rec.To)
	case module.ResultRefused:
		rec.Result = audit.ResultRefused
		if ev.Err != nil {
			rec.Error = ev.Err.Error()
		}
	default:
		return nil // the pending record already says it
	}
	return h.record(ctx, rec)
}

func (h *Host) refuse(ctx context.Context, action audit.Action, target, from, to string, err error) error {
	if aerr := h.record(ctx, audit.Event{Action: action, Target: target, From: from, To: to, Result: audit.ResultRefused, Error: err.Error()}); aerr != nil {
		h.log.Error("audit a refusal", "err", aerr)
	}
	h.log.Warn("change refused", "action", action, "target", target, "err", err)
	return err
}

func (h *Host) record(ctx context.Context, ev audit.Event) error {
	ev.Actor = actor(ctx)
	return h.audit.Record(ctx, ev)
}

func versionRef(version, digest string) string {
	switch {
	case version == "" && digest == "":
		return ""
	case digest == "":
		return version
	}
	return version + "@sha256:" + digest
}
