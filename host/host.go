// Package host is what a service embeds to hot-swap its code safely: it
// puts one trust path in front of the module registry and the binary
// upgrade, keeps verified artifacts in a local store, and records every
// change and every refusal in the audit log.
//
// A module change takes this path:
//
//	audit "started" → verify (digest, signature, policy, name, kind, size)
//	→ version label check → prepare (compile, validate, pre-warm)
//	→ store → audit "ok" → activate (migrate, switch)
//
// Anything that fails before activation is refused with an error naming the
// artifact and the failed check, recorded in the audit log, and the version
// that was serving keeps serving. The "started" record is written before any
// work, so a change cut short by a crash leaves a trace; the "ok" record is
// written (and fsync'd) before the change takes effect, and if it cannot be
// written the change is refused. Records are written even when the caller
// gave up: a cancelled change is recorded as cancelled.
package host

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/internal/statedir"
	"github.com/hotswapgo/hotswap/kernel"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// StateDirEnv names the environment variable that sets the default state
// directory.
const StateDirEnv = statedir.Env

// DefaultMaxModuleSize bounds a module artifact unless
// Options.MaxModuleSize says otherwise. A Go guest is a few MB.
const DefaultMaxModuleSize = 32 << 20

// DefaultStateDir returns $HOTSWAP_STATE_DIR; else /var/lib/hotswap when
// running as root; else hotswap under the user's configuration directory.
// It fails, naming what to set, when none applies: it never falls back to
// the temporary directory, which other users can write. The CLI's keygen,
// sign and verify use the same.
func DefaultStateDir() (string, error) { return statedir.Default() }

// Options configures a Host. The zero value of each field means its
// default; Backend is required.
type Options struct {
	// Backend prepares module versions, e.g. a *wasm.Backend. Required; the
	// host owns it from now on.
	Backend module.Backend
	// Plugins prepares the versions whose artifact kind is goplugin, e.g.
	// a *goplugin.Backend (see docs/goplugin.md); the host owns it from now
	// on. Defaults to nil: Go plugin artifacts are refused.
	Plugins module.Backend
	// StateDir holds trust/ (trusted public keys), store/ (verified
	// artifacts), audit.log and state.db (the modules' host-kept state).
	// It is created mode 0700 if missing, and the host refuses to start
	// when it, or a directory above it, can be written by another user
	// (see docs/security.md). Defaults to DefaultStateDir().
	StateDir string
	// Development accepts unsigned artifacts (digests are still checked).
	// Status reports it, so no one mistakes a development host for a
	// production one. Defaults to false: signatures required.
	Development bool
	// DevTrustDir, if set, is a development trust root: the public keys in
	// it (*.pub, e.g. the key "hotswap watch" makes) are trusted beside
	// those of StateDir/trust. Signatures are still required; status
	// reports the host as started for development, naming the directory.
	// It must be private to this user like StateDir. A service sets it only
	// when started for development (the demo's --dev-trust flag). Defaults
	// to "": only StateDir/trust.
	DevTrustDir string
	// Service is the name this service's binaries are signed with. A binary
	// upgrade is refused unless the new binary's manifest names it, so a
	// signed binary of another program cannot replace this one. Defaults to
	// the name in the running binary's own manifest (beside it, or in the
	// store for a binary started from there); upgrades are refused when
	// there is none.
	Service string
	// MaxModuleSize bounds a module artifact, in bytes: a manifest stating
	// more is refused before any payload byte is read, and an unsigned
	// payload (development mode) longer than this is cut off and refused.
	// Defaults to DefaultMaxModuleSize (32 MiB, wasm.DefaultMaxModuleBytes).
	MaxModuleSize int64
	// FollowSymlinks lets LoadFile and Upgrade read artifacts through
	// symbolic links. Defaults to false: an artifact or manifest path that
	// is a symbolic link is refused.
	FollowSymlinks bool
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
	// TracerProvider receives a span per change (load, rollback, canary,
	// binary upgrade) with a child span per step; see
	// docs/observability.md. A process started by a traced upgrade records
	// its start in the upgrade's trace. Defaults to nil: no tracing.
	TracerProvider trace.TracerProvider
	// TimeCalls is the share of calls timed into their version's latency
	// histogram (module.Options.TimeCalls), e.g. for a metrics collector.
	// Defaults to 0: only a canary's calls are timed.
	TimeCalls float64
	// ProfileLabels sets the pprof labels module and version around each
	// call (module.Options.ProfileLabels), so a CPU profile splits host
	// time by module version. Defaults to false.
	ProfileLabels bool
	// TraceCalls is the share (0 to 1) of module calls without a parent
	// span that get a span of their own, SpanCall, carrying the module,
	// version and handler (with TracerProvider; see
	// docs/observability.md). Once it is above 0, a call whose context
	// carries a sampled span always gets one and a call whose span is not
	// sampled never does, as with OpenTelemetry's ParentBased sampler; the
	// provider's own sampler still applies. It costs every call an
	// interface call, a context lookup and a random draw, and a traced
	// call its span (see docs/observability.md). Defaults to 0: no call
	// spans, whatever the context, and calls pay nothing for them;
	// telemetry.DefaultTraceCalls is a share for a host that wants them.
	TraceCalls float64

	// Durability says when changes to the modules' host-kept state reach
	// StateDir/state.db (see state.go and docs/state.md). Defaults to
	// DurabilityWindow.
	Durability Durability
	// CommitWindow bounds how long a change waits for the commit that
	// writes it, under DurabilityWindow. Defaults to DefaultCommitWindow
	// (20ms).
	CommitWindow time.Duration
}

// Host is a service's hot-swap machinery. It is safe for concurrent use.
type Host struct {
	reg       *module.Registry
	verifier  *artifact.Verifier
	store     *artifact.Store
	audit     *audit.Log
	up        *upgrade.Upgrader
	appState  []byte // the service's part of the state blob handed over
	log       *slog.Logger
	dev       bool
	stateDir  string // Options.StateDir
	devTrust  string // Options.DevTrustDir
	service   string // Options.Service
	maxModule int64
	started   time.Time
	proc      processState   // generation, parent and upgrade state; see Process
	canaries  canaries       // the modules' canaries; see canary.go
	splits    splits         // the modules' A/B splits; see split.go
	closed    atomic.Bool    // set by Close: changes are refused from then on
	state     *kvState       // the modules' host-kept state and its file; see state.go
	slotsMu   sync.Mutex     // protects slots
	slots     []*kernel.Slot // the kernel-level slots; see kernel.go
	backends  *backends      // Options.Backend and Options.Plugins
	stats     stats          // change counters; see ChangeStats
	tracer    trace.Tracer   // Options.TracerProvider's, or a no-op one
	childSpan trace.Span     // this process's start in its upgrade's trace; ended by New
}

// New opens the state directory and returns a Host. Call RestoreModules to
// load the versions that were current before a restart.
func New(opts Options) (*Host, error) {
	if opts.Backend == nil {
		return nil, errors.New("host: Options.Backend is required")
	}
	if !(opts.TraceCalls >= 0 && opts.TraceCalls <= 1) {
		return nil, fmt.Errorf("host: TraceCalls %v is not a share between 0 and 1", opts.TraceCalls)
	}
	if opts.MaxModuleSize < 0 {
		return nil, fmt.Errorf("host: MaxModuleSize %d is negative", opts.MaxModuleSize)
	}
	if opts.StateDir == "" {
		dir, err := DefaultStateDir()
		if err != nil {
			return nil, fmt.Errorf("host: %w", err)
		}
		opts.StateDir = dir
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	trustDir := filepath.Join(opts.StateDir, "trust")
	storeDir := filepath.Join(opts.StateDir, "store")
	for _, dir := range []string{opts.StateDir, trustDir, storeDir} {
		if err := statedir.Ensure(dir); err != nil {
			return nil, fmt.Errorf("host: %w", err)
		}
	}
	trust, err := loadTrust(trustDir, opts.DevTrustDir)
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	mode := artifact.ModeEnforce
	if opts.Development {
		mode = artifact.ModeDevelopment
	}
	verifier, err := artifact.NewVerifier(trust, artifact.VerifierOptions{Mode: mode, Logger: log, FollowSymlinks: opts.FollowSymlinks})
	if err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	store, err := artifact.OpenStore(storeDir, artifact.StoreOptions{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("host: open store: %w", err)
	}
	al, err := audit.Open(filepath.Join(opts.StateDir, "audit.log"), audit.Options{})
	if err != nil {
		return nil, fmt.Errorf("host: open audit log: %w", err)
	}
	h := &Host{verifier: verifier, store: store, audit: al, log: log, dev: opts.Development, stateDir: opts.StateDir, devTrust: opts.DevTrustDir, service: opts.Service,
		maxModule: cmpOr(opts.MaxModuleSize, DefaultMaxModuleSize), started: time.Now(), tracer: tracerOf(opts.TracerProvider),
		backends: &backends{wasm: opts.Backend, plugins: opts.Plugins}}
	if h.state, err = newKVState(opts, log); err != nil {
		al.Close()
		return nil, err
	}
	h.reg, err = module.New(module.Options{Backend: h.backends, Logger: log, DrainTimeout: opts.DrainTimeout, State: h.state.newKV,
		TimeCalls: opts.TimeCalls, ProfileLabels: opts.ProfileLabels, CallTracer: newCallTracer(opts.TracerProvider, opts.TraceCalls)})
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
	if err := h.state.open(h.reg, h.up != nil && h.up.HasParent()); err != nil {
		h.reg.Close(context.Background())
		if h.up != nil {
			h.up.Close()
		}
		al.Close()
		return nil, err
	}
	if h.dev {
		log.Warn("development mode: unsigned artifacts are accepted")
	}
	if h.childSpan != nil {
		h.childSpan.End()
	}
	if h.up != nil && h.up.HasParent() {
		log.Info("process started by an upgrade", logkey.PID, os.Getpid(), logkey.Generation, h.generation(),
			"parent_pid", h.proc.parentPID)
	}
	if h.devTrust != "" {
		log.Warn("development trust root: keys in it are trusted", logkey.Path, h.devTrust)
	}
	return h, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Status describes every module, sorted by name: a read-only view of the
// registry. Changes go through LoadFile, LoadArtifact, LoadReader and
// Rollback, which verify and audit them.
func (h *Host) Status() []module.Status { return h.reg.Status() }

// active returns the active version of module name, nil if none; unlike
// Module it makes no entry for a name never loaded.
func (h *Host) active(name string) *module.VersionStatus {
	for _, st := range h.reg.Status() {
		if st.Name == name {
			return st.Active
		}
	}
	return nil
}

// Module returns the handle of the named module, to call it.
func (h *Host) Module(name string) *module.Module { return h.reg.Module(name) }

// TrustMode returns "enforce" or "development".
func (h *Host) TrustMode() string { return h.verifier.Mode().String() }

// StateDir returns the host's state directory (Options.StateDir), private
// to the service's user.
func (h *Host) StateDir() string { return h.stateDir }

// DevTrustDir returns Options.DevTrustDir: the development trust root, ""
// for a service not started for development.
func (h *Host) DevTrustDir() string { return h.devTrust }

// loadTrust reads the trusted keys of dir and, if devDir is set, of the
// development trust root devDir, which must be private like the state
// directory.
func loadTrust(dir, devDir string) (*artifact.TrustStore, error) {
	trust, err := artifact.LoadTrustStore(dir)
	if err != nil || devDir == "" {
		return trust, err
	}
	if err := statedir.Check(devDir); err != nil {
		return nil, fmt.Errorf("development trust root: %w", err)
	}
	dev, err := artifact.LoadTrustStore(devDir)
	if err != nil {
		return nil, fmt.Errorf("development trust root: %w", err)
	}
	var keys []ed25519.PublicKey
	for _, t := range []*artifact.TrustStore{trust, dev} {
		for _, id := range t.KeyIDs() {
			k, _ := t.Lookup(id)
			keys = append(keys, k)
		}
	}
	return artifact.NewTrustStore(keys...)
}

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
	return h.load(ctx, name, filepath.Base(path), func(ctx context.Context) (*artifact.Verified, error) {
		return h.verifier.Verify(ctx, path, h.expectModule(name))
	})
}

// LoadArtifact verifies payload against manifest (nil: none) as a WASM
// version of module name, prepares it, keeps it in the store, and activates
// it: when every check passes it serves all new calls and the version it
// replaces stays warm for rollback. A refusal is audited and returned as an
// error that names the artifact and the failed check (an
// *artifact.VerifyError or a *module.LoadError); the active version keeps
// serving. label is what messages call the artifact (its file name).
//
// Cancelling ctx aborts the change until the switch; the error then matches
// context.Canceled (or DeadlineExceeded) and the audit log records the
// change as canceled.
func (h *Host) LoadArtifact(ctx context.Context, name, label string, payload, manifest []byte) (module.VersionStatus, error) {
	return h.load(ctx, name, label, func(ctx context.Context) (*artifact.Verified, error) {
		return h.verifier.VerifyBytes(ctx, label, manifest, payload, h.expectModule(name))
	})
}

// LoadReader is LoadArtifact for a payload that arrives as a stream (an
// upload): every check that needs only the manifest runs before the first
// payload byte is read, and no more than the manifest states (or, unsigned
// in development mode, Options.MaxModuleSize) is read.
func (h *Host) LoadReader(ctx context.Context, name, label string, manifest []byte, payload io.Reader) (module.VersionStatus, error) {
	return h.load(ctx, name, label, func(ctx context.Context) (*artifact.Verified, error) {
		return h.verifier.VerifyReader(ctx, label, manifest, payload, h.expectModule(name))
	})
}

func (h *Host) expectModule(name string) artifact.Expect {
	return artifact.Expect{Name: name, Kind: h.backends.kind(), MaxSize: h.maxModule}
}

// load runs a module load: audit its start, verify, check the version label,
// prepare, then store, audit and activate.
func (h *Host) load(ctx context.Context, name, label string, verify func(context.Context) (*artifact.Verified, error)) (module.VersionStatus, error) {
	c, err := h.begin(ctx, audit.ActionSwap, name, label)
	if err != nil {
		return module.VersionStatus{}, err
	}
	c.step(ctx, StepVerify, label)
	vd, err := verify(ctx)
	if err != nil {
		return module.VersionStatus{}, c.refuse(err)
	}
	return h.prepare(ctx, c, vd, false)
}

// prepare checks a verified artifact's version label and prepares it, then
// stores, audits and activates it. rollback marks a load of the
// last-known-good version done for a rollback.
func (h *Host) prepare(ctx context.Context, c *change, vd *artifact.Verified, rollback bool) (module.VersionStatus, error) {
	m := vd.Manifest
	c.ev.To = versionRef(m.Version, m.Digest.Hex())
	if err := h.store.CheckVersion(m); err != nil {
		return module.VersionStatus{}, c.refuse(err)
	}
	c.step(ctx, StepPrepare, c.ev.To)
	p, err := h.prepareModule(ctx, c.ev.Target, vd)
	if err != nil {
		return module.VersionStatus{}, c.refuse(err)
	}
	return h.activate(ctx, c, p, vd, rollback)
}

// activate keeps put (nil: it is in the store already) in the store, records
// the change and makes p serve.
func (h *Host) activate(ctx context.Context, c *change, p *module.Prepared, put *artifact.Verified, rollback bool) (module.VersionStatus, error) {
	from, fromDigest, hasFrom := p.From()
	if hasFrom {
		c.ev.From = versionRef(from, fromDigest)
	}
	c.ev.To = versionRef(p.Version(), p.Digest())
	if put != nil {
		c.step(ctx, StepStore, c.ev.To)
		if _, err := h.store.Put(ctx, put); err != nil {
			p.Discard()
			return module.VersionStatus{}, c.refuse(fmt.Errorf("store %s: %w", c.ev.To, err))
		}
	}
	if err := c.allow(); err != nil {
		p.Discard()
		return module.VersionStatus{}, err
	}
	c.step(ctx, StepActivate, c.ev.To)
	switchStart := time.Now()
	st, err := p.Activate(ctx)
	if err != nil {
		if put != nil {
			// It never served: it takes no place in the store.
			if d, derr := artifact.ParseDigest(p.Digest()); derr == nil {
				if rerr := h.store.Remove(context.WithoutCancel(ctx), c.ev.Target, d); rerr != nil {
					h.log.Error("remove a version that failed to activate from the store", logkey.Module, c.ev.Target, logkey.Err, rerr)
				}
			}
		}
		return st, c.fail(err)
	}
	h.stats.countSwap(c.ev.Target, time.Since(switchStart), time.Since(c.start))
	c.count(audit.ResultOK, nil)
	c.endSpan(ResultOK, nil)
	h.rememberActive(context.WithoutCancel(ctx), c.ev.Target, p.Digest(), fromDigest, rollback || p.Rollback())
	return st, nil
}

// rememberActive records in the store that the version of digest serves
// module name, replacing the version of fromDigest ("" if none), which
// becomes the last-known-good one unless this was a rollback: the version
// rolled back from is not known to be good.
func (h *Host) rememberActive(ctx context.Context, name, digest, fromDigest string, rollback bool) {
	cur, err := artifact.ParseDigest(digest)
	if err != nil {
		return // not from the store (registry used directly): nothing to remember
	}
	if err := h.store.SetCurrent(ctx, name, cur); err != nil {
		h.log.Error("record current version", logkey.Module, name, logkey.Err, err)
	}
	if d, err := artifact.ParseDigest(fromDigest); !rollback && err == nil && d != cur {
		if err := h.store.SetLastKnownGood(ctx, name, d); err != nil {
			h.log.Error("record last-known-good version", logkey.Module, name, logkey.Err, err)
		}
	}
}

// Rollback makes the previous version of module name serve again. It is
// instant when the previous version is still warm; after a restart it
// loads the last-known-good version from the store, verified again. Either
// way the audit log records one rollback, done or refused.
func (h *Host) Rollback(ctx context.Context, name string) (module.VersionStatus, error) {
	c, err := h.begin(ctx, audit.ActionRollback, name, "")
	if err != nil {
		return module.VersionStatus{}, err
	}
	p, err := h.reg.PrepareRollback(ctx, name)
	if err == nil {
		return h.activate(ctx, c, p, nil, true)
	}
	if !errors.Is(err, module.ErrNoPrevious) && !errors.Is(err, module.ErrNotFound) {
		return module.VersionStatus{}, c.refuse(err)
	}
	// No warm previous version: the last-known-good one from the store.
	cur := h.active(name)
	entry, lerr := h.store.LastKnownGood(name)
	if lerr != nil {
		return module.VersionStatus{}, c.refuse(fmt.Errorf("%w; no last-known-good version in the store either", err))
	}
	if cur != nil && cur.Digest == entry.Manifest.Digest.Hex() {
		return module.VersionStatus{}, c.refuse(fmt.Errorf("%w; the last-known-good version %s is the one serving", err, entry.Manifest.Version))
	}
	c.ev.To = versionRef(entry.Manifest.Version, entry.Manifest.Digest.Hex())
	c.step(ctx, StepVerify, c.ev.To)
	vd, err := h.verifier.VerifyEntry(ctx, entry)
	if err != nil {
		return module.VersionStatus{}, c.refuse(err)
	}
	return h.prepare(ctx, c, vd, true)
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
			if k := entry.Manifest.Kind; k != artifact.KindWasm && (k != artifact.KindGoPlugin || h.backends.plugins == nil) {
				break
			}
			tried = append(tried, entry.Manifest.Digest)
			if err = h.restore(ctx, name, entry); err == nil {
				break
			}
			errs = append(errs, fmt.Errorf("restore %s %s: %w", name, entry.Manifest.Version, err))
		}
	}
	return errors.Join(errs...)
}

// restore loads a version kept in the store, verified again.
func (h *Host) restore(ctx context.Context, name string, entry artifact.Entry) error {
	to := versionRef(entry.Manifest.Version, entry.Manifest.Digest.Hex())
	c, err := h.begin(ctx, audit.ActionSwap, name, "")
	if err != nil {
		return err
	}
	c.ev.To = to
	vd, err := h.verifier.VerifyEntry(ctx, entry)
	if err != nil {
		return c.refuse(err)
	}
	c.step(ctx, StepPrepare, to)
	p, err := h.prepareModule(ctx, name, vd)
	if err != nil {
		return c.refuse(err)
	}
	_, err = h.activate(ctx, c, p, nil, false)
	return err
}

// History returns audit events, newest first.
func (h *Host) History(ctx context.Context, f audit.Filter) ([]audit.Event, error) {
	return h.audit.Read(ctx, f)
}

// AuditPath returns the path of the host's audit log, StateDir/audit.log.
func (h *Host) AuditPath() string { return h.audit.Path() }

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

// Close aborts the running canaries, drains and closes every module
// version, commits the modules' state and closes its file, then the
// audit log.
func (h *Host) Close(ctx context.Context) error {
	h.closed.Store(true)
	h.closeCanaries(ctx)
	err := errors.Join(h.closeSlots(), h.reg.Close(ctx))
	err = errors.Join(err, h.state.close())
	if h.up != nil {
		err = errors.Join(err, h.up.Close())
	}
	return errors.Join(err, h.audit.Close())
}

// change is one audited change: its records share an ID, an actor and what
// it applies to, and are written with a context that outlives the request,
// so a change whose caller gave up is still recorded.
type change struct {
	h      *Host
	ctx    context.Context // outlives the request; carries the change's span
	ev     audit.Event
	start  time.Time // when the change was asked for
	tracer trace.Tracer

	mu       sync.Mutex // protects span and stepSpan (a canary's verdicts come from its own goroutine)
	span     trace.Span // the change's span; nil once ended
	stepSpan trace.Span // the span of the step under way, nil if none
}

// begin records that a change starts, before any of its work. If the record
// cannot be written, the change is refused.
func (h *Host) begin(ctx context.Context, action audit.Action, target, artifact string) (*change, error) {
	if h.closed.Load() {
		return nil, fmt.Errorf("%s %s: %w", action, target, module.ErrClosed)
	}
	var id [8]byte
	rand.Read(id[:])
	c := &change{h: h, ctx: context.WithoutCancel(ctx), start: time.Now(), ev: audit.Event{
		ID: hex.EncodeToString(id[:]), Actor: actor(ctx), Action: action, Target: target, Artifact: artifact,
	}}
	if action != audit.ActionUpgrade {
		if cur := h.active(target); cur != nil {
			c.ev.From = versionRef(cur.Version, cur.Digest)
		}
	}
	c.ctx = c.startSpan(c.ctx, h.tracer)
	if err := c.record(audit.ResultStarted, nil); err != nil {
		err = fmt.Errorf("%s %s refused: audit log: %w", action, target, err)
		c.count(audit.ResultRefused, err)
		c.endSpan(ResultRefused, err)
		h.log.Error("change refused: audit log", c.logAttrs(err)...)
		return nil, err
	}
	return c, nil
}

// refuse records that the change was refused because of err (or canceled,
// when err says so) and returns err.
func (c *change) refuse(err error) error {
	result := audit.ResultRefused
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		result = audit.ResultCanceled
	}
	if aerr := c.record(result, err); aerr != nil {
		c.h.log.Error("audit a refusal", logkey.Err, aerr)
	}
	c.count(result, err)
	c.endSpan(string(result), err)
	c.h.log.Warn("change "+string(result), c.logAttrs(err)...)
	return err
}

// allow records that the change passed every check and takes effect now.
// If the record cannot be written the change is refused: the error says so.
func (c *change) allow() error {
	if err := c.record(audit.ResultOK, nil); err != nil {
		err = fmt.Errorf("%s %s refused: audit log: %w", c.ev.Action, c.ev.Target, err)
		c.h.log.Error("change refused: audit log", c.logAttrs(err)...)
		c.count(audit.ResultRefused, err)
		c.endSpan(ResultRefused, err)
		return err
	}
	return nil
}

// fail records that the change, allowed, failed to take effect.
func (c *change) fail(err error) error {
	if aerr := c.record(audit.ResultFailed, err); aerr != nil {
		c.h.log.Error("audit a failure", logkey.Err, aerr)
	}
	c.count(audit.ResultFailed, err)
	c.endSpan(ResultFailed, err)
	c.h.log.Warn("change failed", c.logAttrs(err)...)
	return err
}

// logAttrs are the slog attributes of a log line about the change, in the
// shared vocabulary (package logkey).
func (c *change) logAttrs(err error) []any {
	attrs := []any{"action", c.ev.Action}
	if c.ev.Action == audit.ActionUpgrade {
		attrs = append(attrs, "binary", c.ev.Artifact)
	} else {
		attrs = append(attrs, logkey.Module, c.ev.Target)
	}
	if version, digest, ok := strings.Cut(c.ev.To, "@sha256:"); c.ev.To != "" {
		attrs = append(attrs, logkey.Version, version)
		if ok {
			attrs = append(attrs, logkey.Digest, digest)
		}
	}
	if err != nil {
		attrs = append(attrs, logkey.Check, checkOf(err), logkey.Err, err)
	}
	return attrs
}

// count counts the end of a module change in the host's ChangeStats;
// binary upgrades are counted from their result (see upgradeResult).
func (c *change) count(result audit.Result, err error) {
	if c.ev.Action != audit.ActionUpgrade {
		c.h.stats.countChange(c.ev.Action, c.ev.Target, result, err)
	}
}

func (c *change) record(result audit.Result, err error) error {
	ev := c.ev
	ev.Time, ev.Result = time.Time{}, result
	if err != nil {
		ev.Error = err.Error()
	}
	return c.h.audit.Record(c.ctx, ev)
}

func (h *Host) record(ctx context.Context, ev audit.Event) error {
	ev.Actor = actor(ctx)
	return h.audit.Record(context.WithoutCancel(ctx), ev)
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
