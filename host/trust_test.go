package host_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/hostile"
	"github.com/hotswapgo/hotswap/internal/statedir"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// TestVersionReuseRefused: a version label names one payload per module,
// forever; other bytes signed with a label already used are refused before
// any work, and the version serving keeps serving.
func TestVersionReuseRefused(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))

	reused := f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "1.0.0"})
	var err error
	calls, failures := serveDuring(t, h, "v1", func() { _, err = h.LoadFile(ctxFor(t, "mallory"), "pricing", reused) })
	var ve *artifact.VerifyError
	if !errors.Is(err, artifact.ErrVersionReused) || !errors.As(err, &ve) || ve.Check != artifact.CheckVersion {
		t.Fatalf("LoadFile(other bytes as 1.0.0) = %v; want ErrVersionReused at the version check", err)
	}
	if len(failures) > 0 || calls == 0 {
		t.Errorf("while refusing: %d calls, %d failed (first: %v)", calls, len(failures), failures)
	}
	if ev := newest(t, h); ev.Result != audit.ResultRefused || !strings.Contains(ev.Error, "version check failed") {
		t.Errorf("newest audit record = %+v; want the refusal at the version check", ev)
	}
	// The same bytes under the same label load again, and the label stays
	// claimed after its entry left the store.
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"}))
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "again-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
	if got := servedBy(t, h); got != "v1" {
		t.Errorf("served by %q after reloading 1.0.0; want v1", got)
	}
}

// TestCanceledLoadIsAuditedAsCanceled: a load whose caller gives up during
// preparation is reported as canceled (not as a failed check) and recorded
// as such, though the caller's context is gone.
func TestCanceledLoadIsAuditedAsCanceled(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
	p2 := f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"})

	ctx, cancel := context.WithCancel(ctxFor(t, "impatient"))
	ctx = host.WithProgress(ctx, func(step, _ string) {
		if step == host.StepPrepare {
			cancel() // the caller gives up as preparation starts
		}
	})
	_, err := h.LoadFile(ctx, "pricing", p2)
	if !errors.Is(err, context.Canceled) || errors.Is(err, module.ErrRejected) {
		t.Fatalf("LoadFile() canceled during prepare = %v; want context.Canceled, not a rejection", err)
	}
	if got := servedBy(t, h); got != "v1" {
		t.Errorf("served by %q after a canceled load; want v1", got)
	}
	ev := newest(t, h)
	if ev.Result != audit.ResultCanceled || ev.Actor != "impatient" || ev.Artifact != "pricing-v2.wasm" {
		t.Errorf("newest audit record = %+v; want a canceled load by impatient", ev)
	}
	// Nothing canceled reached the store, and the module is free again.
	mustLoad(t, h, "deploy", p2)
}

// TestCrashDuringLoadLeavesItsIntent kills a process in the middle of a load
// (its module initializes forever) and finds the record of the load's start
// in the audit log, with no outcome after it.
func TestCrashDuringLoadLeavesItsIntent(t *testing.T) {
	f := newFixture(t)
	loop := testhost.Guest(t, testhost.LoopInit)
	path := f.signed(t, f.trusted, "pricing-loopinit.wasm", loop, artifact.Manifest{Version: "loop"})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"=load", envState+"="+f.state, envOut+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	log := filepath.Join(f.state, "audit.log")
	waitFor(t, "the load to start in the child", func() bool {
		evs, _ := audit.Read(context.Background(), log, audit.Filter{Target: "pricing"})
		return len(evs) > 0
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	evs, err := audit.Read(context.Background(), log, audit.Filter{Target: "pricing"})
	if err != nil {
		t.Fatalf("read the audit log after the crash: %v", err)
	}
	if len(evs) != 1 || evs[0].Result != audit.ResultStarted || evs[0].Artifact != "pricing-loopinit.wasm" || evs[0].Actor != "crasher" {
		t.Fatalf("audit records of pricing after a crash mid-load = %+v; want only the start of loading pricing-loopinit.wasm (child stderr: %s)", evs, stderr.String())
	}
}

// runLoad is the helper process of TestCrashDuringLoadLeavesItsIntent: it
// loads the artifact at $envOut into a host over $envState, which never
// returns for a module that initializes forever.
func runLoad() int {
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(os.Getenv(envState), "cache"), Default: wasm.ModuleConfig{
		Grants: []wasm.Capability{wasm.CapKV}, InitTimeout: 10 * time.Minute}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h, err := host.New(host.Options{Backend: b, StateDir: os.Getenv(envState)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, err = h.LoadFile(host.WithActor(context.Background(), "crasher"), "pricing", os.Getenv(envOut))
	fmt.Fprintln(os.Stderr, "load returned:", err)
	return 1
}

// TestStateDirWritableByOthersRefused: a host does not start on a state
// directory, or a part of it, that another user could write.
func TestStateDirWritableByOthersRefused(t *testing.T) {
	for _, sub := range []string{"", "trust", "store"} {
		t.Run("mode 0770 "+cmpOr(sub, "state dir"), func(t *testing.T) {
			f := newFixture(t)
			dir := filepath.Join(f.state, sub)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o770); err != nil {
				t.Fatal(err)
			}
			b, err := wasm.New(wasm.Options{CacheDir: cacheDir(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close(context.Background())
			h, err := host.New(host.Options{Backend: b, StateDir: f.state})
			if !errors.Is(err, statedir.ErrInsecure) || !strings.Contains(err.Error(), dir) {
				if h != nil {
					h.Close(context.Background())
				}
				t.Fatalf("New() with %s mode 0770 = %v; want ErrInsecure naming it", dir, err)
			}
		})
	}
	t.Run("created private", func(t *testing.T) {
		f := newFixture(t)
		f.state = filepath.Join(f.state, "new")
		f.open(t, hostOptions{})
		for _, sub := range []string{"", "trust", "store"} {
			fi, err := os.Stat(filepath.Join(f.state, sub))
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("state directory %q = %v, %v; want mode 0700", sub, fi.Mode(), err)
			}
		}
	})
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestSymlinkedArtifactRefused: an artifact reached through a symbolic
// link is refused, so a link signed by mistake cannot bring the file it
// points to into the store.
func TestSymlinkedArtifactRefused(t *testing.T) {
	v1 := guest(t, "v1")
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	real := f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"})
	link := filepath.Join(f.dir, "link.wasm")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(artifact.ManifestPath(real), artifact.ManifestPath(link)); err != nil {
		t.Fatal(err)
	}
	_, err := h.LoadFile(ctxFor(t, "deploy"), "pricing", link)
	if !errors.Is(err, artifact.ErrSymlink) {
		t.Fatalf("LoadFile(symlink) = %v; want ErrSymlink", err)
	}
	if st := h.Module("pricing").Status(); st.Active != nil {
		t.Errorf("a refused symlink serves: %+v", st.Active)
	}
	followed := newFixture(t).open(t, hostOptions{followSymlinks: true})
	if _, err := followed.LoadFile(ctxFor(t, "deploy"), "pricing", link); err != nil {
		t.Errorf("LoadFile(symlink) with FollowSymlinks = %v; want it loaded", err)
	}
}

// TestLoadReaderChecksManifestFirst: an upload whose manifest states more
// than the module size limit is refused before a byte of its payload is
// read; one longer than its manifest says is refused without reading past
// that.
func TestLoadReaderChecksManifestFirst(t *testing.T) {
	v1 := guest(t, "v1")
	f := newFixture(t)
	h := f.open(t, hostOptions{maxModuleSize: int64(len(v1)) + 1})
	sign := func(m artifact.Manifest) []byte {
		m.Name, m.Kind = "pricing", artifact.KindWasm
		sm, err := f.trusted.Sign(m)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := sm.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	huge := int64(1) << 40
	r := &countingReader{r: io.LimitReader(zeros{}, huge)}
	_, err := h.LoadReader(ctxFor(t, "uploader"), "pricing", "huge.wasm",
		sign(artifact.Manifest{Version: "huge", Digest: artifact.DigestOf(nil), Size: huge}), r)
	if !errors.Is(err, artifact.ErrPayloadTooLarge) || r.n != 0 {
		t.Fatalf("LoadReader(1 TiB manifest) = %v after reading %d bytes; want ErrPayloadTooLarge before reading", err, r.n)
	}

	r = &countingReader{r: io.MultiReader(bytes.NewReader(v1), io.LimitReader(zeros{}, huge))}
	_, err = h.LoadReader(ctxFor(t, "uploader"), "pricing", "long.wasm",
		sign(artifact.Manifest{Version: "long", Digest: artifact.DigestOf(v1), Size: int64(len(v1))}), r)
	if !errors.Is(err, artifact.ErrDigestMismatch) || r.n > int64(len(v1))+32<<10 {
		t.Fatalf("LoadReader(payload longer than its manifest) = %v after reading %d bytes; want ErrDigestMismatch, at most the stated size read", err, r.n)
	}

	st, err := h.LoadReader(ctxFor(t, "uploader"), "pricing", "v1.wasm",
		sign(artifact.Manifest{Version: "1.0.0", Digest: artifact.DigestOf(v1), Size: int64(len(v1))}), bytes.NewReader(v1))
	if err != nil || st.Version != "1.0.0" {
		t.Fatalf("LoadReader(v1) = %+v, %v; want 1.0.0 loaded", st, err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestFailedUpgradeLeavesNothingInStore: a signed binary that fails to start
// is refused as an upgrade and does not stay in the store, where it would
// take the place of a version worth keeping.
func TestFailedUpgradeLeavesNothingInStore(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{upgrade: &upgrade.Options{NoSignals: true, UpgradeTimeout: 30 * time.Second}})
	bad := filepath.Join(f.dir, "svc-bad")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho 'no config' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := f.trusted.SignFile(context.Background(), bad, artifact.Manifest{Name: "svc", Version: "bad", Kind: artifact.KindBinary}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Upgrade(ctxFor(t, "carol"), bad); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Upgrade(bad) = %v; want the new process's exit status 3", err)
	}
	store, err := artifact.OpenStore(filepath.Join(f.state, "store"), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if entries, err := store.Entries("svc"); err != nil || len(entries) != 0 {
		t.Errorf("store entries of svc after a failed upgrade = %d, %v; want none", len(entries), err)
	}
	if ev := newest(t, h); ev.Action != audit.ActionUpgrade || ev.Result != audit.ResultFailed {
		t.Errorf("newest audit record = %+v; want the upgrade failed", ev)
	}
}

// TestHostileModulesRefusedAndAudited loads every hostile module that must
// be refused (internal/hostile), correctly signed, through the host while
// pricing serves: each is refused with its check, recorded as refused after
// its start, and pricing answers every call meanwhile.
func TestHostileModulesRefusedAndAudited(t *testing.T) {
	v1 := guest(t, "v1")
	f := newFixture(t)
	var cases []hostile.Case
	modules := map[string]wasm.ModuleConfig{}
	for _, c := range hostile.Cases() {
		if c.Want.Check == "" {
			continue // loads, then fails its calls: the wasm package's suite covers those
		}
		cases = append(cases, c)
		cfg := wasm.ModuleConfig{InitTimeout: time.Second, MaxStack: wasm.DefaultMaxStack / 4, MemoryLimit: 64 << 20}
		for _, g := range c.Grants {
			cfg.Grants = append(cfg.Grants, wasm.Capability(g))
		}
		modules[c.Name] = cfg
	}
	modules["pricing"] = wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"}, CallTimeout: 30 * time.Second}
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(t), Modules: modules})
	if err != nil {
		t.Fatal(err)
	}
	h, err := host.New(host.Options{Backend: b, StateDir: f.state, Service: "svc", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeHost(t, h) })
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))

	calls, failures := serveDuring(t, h, "v1", func() {
		for _, c := range cases {
			manifest := testhost.Manifest(t, f.trusted, c.Bytes, artifact.Manifest{Name: c.Name, Version: "hostile"})
			start := time.Now()
			_, err := h.LoadArtifact(ctxFor(t, "mallory"), c.Name, c.Name+".wasm", c.Bytes, manifest)
			if len(c.Bytes) > host.DefaultMaxModuleSize {
				// Larger than the host accepts: refused by its manifest,
				// before the backend sees it.
				if !errors.Is(err, artifact.ErrPayloadTooLarge) {
					t.Errorf("%s (%d bytes): LoadArtifact() = %v; want ErrPayloadTooLarge", c.Name, len(c.Bytes), err)
				}
				continue
			}
			if notWasm(c.Bytes) {
				// Not WebAssembly at all: refused by the manifest's kind,
				// before the backend sees it.
				var ve *artifact.VerifyError
				if !errors.As(err, &ve) || ve.Check != artifact.CheckKind {
					t.Errorf("%s (%s): LoadArtifact() = %v; want an *artifact.VerifyError of check kind", c.Name, c.What, err)
				}
				continue
			}
			var le *module.LoadError
			if !errors.As(err, &le) || le.Check != c.Want.Check || !errors.Is(err, c.Want.Err) {
				t.Errorf("%s (%s): LoadArtifact() = %v; want a *module.LoadError of check %q", c.Name, c.What, err, c.Want.Check)
				continue
			}
			if took := time.Since(start); took > 30*time.Second {
				t.Errorf("%s: refused after %v; want within seconds", c.Name, took)
			}
		}
	})
	if len(failures) > 0 || calls == 0 {
		t.Errorf("pricing while hostile modules were refused: %d calls, %d failed (first: %v)", calls, len(failures), failures)
	}
	refused := make(map[string]audit.Event)
	for _, ev := range history(t, h) { // checks that each outcome follows its start
		if ev.Actor == "mallory" {
			refused[ev.Target] = ev
		}
	}
	for _, c := range cases {
		// A migrate hook runs after the change was allowed ("ok"), when it
		// activates: its failure is recorded as failed.
		want := audit.ResultRefused
		if c.Want.Check == "migrate" {
			want = audit.ResultFailed
		}
		check := c.Want.Check
		switch {
		case len(c.Bytes) > host.DefaultMaxModuleSize:
			check = string(artifact.CheckPayload)
		case notWasm(c.Bytes):
			check = string(artifact.CheckKind)
		}
		ev, ok := refused[c.Name]
		if !ok || ev.Result != want || !strings.Contains(ev.Error, check+" check failed") {
			t.Errorf("%s: audit record %+v; want %s at the %s check", c.Name, ev, want, check)
		}
	}
	// Nothing refused stayed in the store.
	store, err := artifact.OpenStore(filepath.Join(f.state, "store"), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		if entries, err := store.Entries(c.Name); err != nil || len(entries) != 0 {
			t.Errorf("%s: %d store entries after its refusal, %v; want none", c.Name, len(entries), err)
		}
	}
	if st := h.Status(); len(st) != 1 || st[0].Name != "pricing" {
		t.Errorf("Status() after the refusals = %+v; want pricing only", st)
	}
}

// notWasm reports whether b does not even start like WebAssembly: the host
// refuses such an artifact by its manifest's kind (check "kind").
func notWasm(b []byte) bool { return !bytes.HasPrefix(b, []byte("\x00asm")) }
