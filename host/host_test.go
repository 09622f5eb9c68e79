package host_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// sentinels lists every verification sentinel, to check that a refusal
// matches exactly the one it should.
var sentinels = []error{
	artifact.ErrDigestMismatch, artifact.ErrBadSignature, artifact.ErrUnknownKey,
	artifact.ErrUnsigned, artifact.ErrMalformedManifest, artifact.ErrManifestTooLarge,
	artifact.ErrPayloadTooLarge, artifact.ErrKindMismatch, artifact.ErrNameMismatch,
	artifact.ErrABIMismatch,
}

// TestLoadRefusedWhileServing offers pricing artifacts that must not run
// while v1 (signed) serves calls from 2 goroutines: each is refused with
// the error of its check, naming the artifact, and audited as refused; v1
// serves every call made meanwhile and stays the only version.
func TestLoadRefusedWhileServing(t *testing.T) {
	f := newFixture(t)
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	stranger := signer(t, testKey(t, strangerSeed))
	unknown := signer(t, testKey(t, 4))
	// A trust file named for the stranger's key id holds another key: ids
	// come from keys, not file names, so the stranger stays untrusted.
	other := testKey(t, otherSeed)
	pem, err := artifact.MarshalPublicKey(other.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.state, "trust", stranger.KeyID()+artifact.PublicKeySuffix), pem, 0o644); err != nil {
		t.Fatal(err)
	}

	h := f.open(t, hostOptions{})
	v1Path := f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"})
	want := mustLoad(t, h, "deploy", v1Path)
	if got := servedBy(t, h); got != "v1" {
		t.Fatalf("served by %q after loading v1; want v1", got)
	}

	tests := []struct {
		name      string
		artifact  func(t *testing.T) string // returns the path to load
		wantErr   error
		wantCheck artifact.Check
	}{
		{
			name: "tampered payload",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "tampered-payload.wasm", v2, artifact.Manifest{Version: "2.0.0"})
				flipByte(t, p)
				return p
			},
			wantErr: artifact.ErrDigestMismatch, wantCheck: artifact.CheckDigest,
		},
		{
			name: "digest mismatch: another payload under a signed manifest",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "swapped-payload.wasm", v1, artifact.Manifest{Version: "1.0.1"})
				f.write(t, "swapped-payload.wasm", v2)
				return p
			},
			wantErr: artifact.ErrDigestMismatch, wantCheck: artifact.CheckDigest,
		},
		{
			name: "tampered manifest: version changed after signing",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "tampered-manifest.wasm", v2, artifact.Manifest{Version: "2.0.0"})
				editManifest(t, p, `"version": "2.0.0"`, `"version": "2.0.1"`)
				return p
			},
			wantErr: artifact.ErrBadSignature, wantCheck: artifact.CheckSignature,
		},
		{
			name: "wrong key: signed by another key under the trusted key's id",
			artifact: func(t *testing.T) string {
				p := f.write(t, "wrong-key.wasm", v2)
				m := artifact.Manifest{Name: "pricing", Version: "2.0.0", Kind: artifact.KindWasm, Digest: artifact.DigestOf(v2),
					Size: int64(len(v2)), KeyID: f.trusted.KeyID(), Created: time.Now().UTC().Truncate(time.Second)}
				msg, err := m.CanonicalBytes()
				if err != nil {
					t.Fatal(err)
				}
				writeManifest(t, p, &artifact.SignedManifest{Manifest: m, Signature: ed25519.Sign(testKey(t, strangerSeed), msg)})
				return p
			},
			wantErr: artifact.ErrBadSignature, wantCheck: artifact.CheckSignature,
		},
		{
			name: "unknown key",
			artifact: func(t *testing.T) string {
				return f.signed(t, unknown, "unknown-key.wasm", v2, artifact.Manifest{Version: "2.0.0"})
			},
			wantErr: artifact.ErrUnknownKey, wantCheck: artifact.CheckKey,
		},
		{
			name: "signed by a key whose id names a trust file holding another key",
			artifact: func(t *testing.T) string {
				return f.signed(t, stranger, "misfiled-key.wasm", v2, artifact.Manifest{Version: "2.0.0"})
			},
			wantErr: artifact.ErrUnknownKey, wantCheck: artifact.CheckKey,
		},
		{
			name: "trusted manifest edited and re-signed by an untrusted key",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "resigned.wasm", v1, artifact.Manifest{Version: "1.0.0"})
				f.write(t, "resigned.wasm", v2)
				if _, err := stranger.SignFile(context.Background(), p, artifact.Manifest{Name: "pricing", Version: "1.0.0", Kind: artifact.KindWasm}); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantErr: artifact.ErrUnknownKey, wantCheck: artifact.CheckKey,
		},
		{
			name: "malformed manifest: not JSON",
			artifact: func(t *testing.T) string {
				p := f.write(t, "malformed.wasm", v2)
				if err := os.WriteFile(artifact.ManifestPath(p), []byte("name=pricing\nversion=2\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantErr: artifact.ErrMalformedManifest, wantCheck: artifact.CheckManifest,
		},
		{
			name: "malformed manifest: a field repeated",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "repeated-field.wasm", v2, artifact.Manifest{Version: "2.0.0"})
				editManifest(t, p, `"version": "2.0.0",`, `"version": "2.0.0", "version": "9.9.9",`)
				return p
			},
			wantErr: artifact.ErrMalformedManifest, wantCheck: artifact.CheckManifest,
		},
		{
			name: "oversized manifest",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "oversized.wasm", v2, artifact.Manifest{Version: "2.0.0"})
				data, err := os.ReadFile(artifact.ManifestPath(p))
				if err != nil {
					t.Fatal(err)
				}
				pad := bytes.Repeat([]byte(" "), artifact.MaxManifestSize+1-len(data))
				if err := os.WriteFile(artifact.ManifestPath(p), append(pad, data...), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantErr: artifact.ErrManifestTooLarge, wantCheck: artifact.CheckManifest,
		},
		{
			name: "no manifest",
			artifact: func(t *testing.T) string {
				return f.write(t, "unsigned.wasm", v2)
			},
			wantErr: artifact.ErrUnsigned, wantCheck: artifact.CheckPolicy,
		},
		{
			name: "manifest without a signature",
			artifact: func(t *testing.T) string {
				p := f.write(t, "no-signature.wasm", v2)
				writeManifest(t, p, &artifact.SignedManifest{Manifest: artifact.Manifest{Name: "pricing", Version: "2.0.0",
					Kind: artifact.KindWasm, Digest: artifact.DigestOf(v2), Size: int64(len(v2)), Created: time.Now().UTC().Truncate(time.Second)}})
				return p
			},
			wantErr: artifact.ErrUnsigned, wantCheck: artifact.CheckPolicy,
		},
		{
			name: "name mismatch: signed as another module",
			artifact: func(t *testing.T) string {
				return f.signed(t, f.trusted, "inventory.wasm", v2, artifact.Manifest{Name: "inventory", Version: "2.0.0"})
			},
			wantErr: artifact.ErrNameMismatch, wantCheck: artifact.CheckName,
		},
		{
			name: "kind mismatch: signed as a binary",
			artifact: func(t *testing.T) string {
				return f.signed(t, f.trusted, "as-binary.wasm", v2, artifact.Manifest{Version: "2.0.0", Kind: artifact.KindBinary})
			},
			wantErr: artifact.ErrKindMismatch, wantCheck: artifact.CheckKind,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.artifact(t)
			var err error
			calls, failures := serveDuring(t, h, "v1", func() {
				_, err = h.LoadFile(ctxFor(t, "mallory"), "pricing", path)
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("LoadFile() = %v; want %v", err, tt.wantErr)
			}
			for _, s := range sentinels {
				if s != tt.wantErr && errors.Is(err, s) {
					t.Errorf("LoadFile() = %v; matches %v too", err, s)
				}
			}
			var ve *artifact.VerifyError
			if !errors.As(err, &ve) || ve.Check != tt.wantCheck {
				t.Fatalf("LoadFile() = %v (%T); want a *artifact.VerifyError with check %q", err, err, tt.wantCheck)
			}
			if base := filepath.Base(path); !strings.Contains(ve.Artifact, base) || !strings.Contains(err.Error(), base) {
				t.Errorf("LoadFile() = %q; want it to name the artifact %s", err, base)
			}
			if len(failures) > 0 || calls == 0 {
				t.Fatalf("while refusing: %d calls, %d failed (first: %v); want >0 calls, none failed", calls, len(failures), failures)
			}
			st := h.Module("pricing").Status()
			if st.Active == nil || st.Active.Digest != want.Digest || st.Previous != nil {
				t.Fatalf("Status() = %+v; want v1 (%s) active and no previous version", st, want.Digest)
			}
			got := event{Actor: "mallory", Action: "swap", Target: "pricing", Artifact: filepath.Base(path),
				From: want.Version + "@sha256:" + want.Digest, Result: "refused", Error: err.Error()}
			if ev := events([]audit.Event{newest(t, h)})[0]; ev != got {
				t.Errorf("newest audit event = %v; want %v", ev, got)
			}
		})
	}
	if got := servedBy(t, h); got != "v1" {
		t.Errorf("served by %q after every refusal; want v1", got)
	}
	// Nothing refused reached the store: v1 is its only pricing version.
	store, err := artifact.OpenStore(filepath.Join(f.state, "store"), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := store.Entries("pricing")
	if err != nil || len(entries) != 1 || entries[0].Manifest.Digest.Hex() != want.Digest {
		t.Errorf("store entries of pricing = %d, %v; want only v1", len(entries), err)
	}
}

// TestDevelopmentMode: a development host loads an unsigned artifact and
// says so; an enforcing host refuses the same artifact.
func TestDevelopmentMode(t *testing.T) {
	v2 := guest(t, "v2")
	tests := []struct {
		name     string
		dev      bool
		wantMode string
		wantErr  error
	}{
		{name: "development", dev: true, wantMode: "development"},
		{name: "enforce", dev: false, wantMode: "enforce", wantErr: artifact.ErrUnsigned},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			h := f.open(t, hostOptions{dev: tt.dev})
			if got := h.TrustMode(); got != tt.wantMode {
				t.Errorf("TrustMode() = %q; want %q", got, tt.wantMode)
			}
			path := f.write(t, "pricing.wasm", v2)
			st, err := h.LoadFile(ctxFor(t, "dev"), "pricing", path)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("LoadFile(unsigned) = %v; want %v", err, tt.wantErr)
			}
			ev := newest(t, h)
			if tt.wantErr != nil {
				if ev.Result != audit.ResultRefused || ev.Error != err.Error() {
					t.Errorf("newest audit event = %+v; want the refusal %q", ev, err)
				}
				if a := h.Module("pricing").Status().Active; a != nil {
					t.Errorf("active version after the refusal = %+v; want none", a)
				}
				return
			}
			wantVersion := "unsigned-" + artifact.DigestOf(v2).Short()
			if st.Version != wantVersion {
				t.Errorf("LoadFile() version = %q; want %q", st.Version, wantVersion)
			}
			if got := servedBy(t, h); got != "v2" {
				t.Errorf("served by %q; want v2", got)
			}
			want := event{Actor: "dev", Action: "swap", Target: "pricing", Artifact: "pricing.wasm", To: ref(wantVersion, v2), Result: "ok"}
			if got := events([]audit.Event{ev})[0]; got != want {
				t.Errorf("newest audit event = %v; want %v", got, want)
			}
		})
	}
}

// TestRollbackAfterRestart: host A loads v1 then v2 (both signed) and
// closes; host B over the same state directory restores v2 and rolls back
// to v1 from the store, verified again: a tampered last-known-good blob, or
// a signer no longer trusted, is refused and v2 keeps serving.
func TestRollbackAfterRestart(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	tests := []struct {
		name    string
		damage  func(t *testing.T, f *fixture) // between the two hosts
		wantErr error
	}{
		{name: "intact store", damage: func(*testing.T, *fixture) {}},
		{
			name: "last-known-good blob tampered",
			damage: func(t *testing.T, f *fixture) {
				flipByte(t, filepath.Join(f.state, "store", "blobs", artifact.DigestOf(v1).Hex()))
			},
			wantErr: artifact.ErrDigestMismatch,
		},
		{
			name: "signer no longer trusted",
			damage: func(t *testing.T, f *fixture) {
				// v2 is signed by a second key that stays trusted.
				if err := os.Remove(filepath.Join(f.state, "trust", f.trusted.KeyID()+artifact.PublicKeySuffix)); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: artifact.ErrUnknownKey,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			second := signer(t, testKey(t, otherSeed))
			if _, err := artifact.WritePublicKey(filepath.Join(f.state, "trust"), second.PublicKey()); err != nil {
				t.Fatal(err)
			}
			a := f.open(t, hostOptions{noClose: true})
			mustLoad(t, a, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
			mustLoad(t, a, "deploy", f.signed(t, second, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"}))
			if got := servedBy(t, a); got != "v2" {
				t.Fatalf("host A served by %q; want v2", got)
			}
			closeHost(t, a)
			tt.damage(t, f)

			b := f.open(t, hostOptions{})
			if st := b.Module("pricing").Status(); st.Active != nil {
				t.Fatalf("host B before RestoreModules: active %+v; want none", st.Active)
			}
			if err := b.RestoreModules(ctxFor(t, "boot")); err != nil {
				t.Fatalf("RestoreModules() = %v; want nil", err)
			}
			if got := servedBy(t, b); got != "v2" {
				t.Fatalf("host B after RestoreModules served by %q; want v2", got)
			}
			st, err := b.Rollback(ctxFor(t, "oncall"), "pricing")
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Rollback() = %v; want %v", err, tt.wantErr)
			}
			wantServed, wantVersion := "v1", "1.0.0"
			if tt.wantErr != nil {
				wantServed, wantVersion = "v2", "2.0.0"
				var ve *artifact.VerifyError
				if !errors.As(err, &ve) || !strings.Contains(err.Error(), artifact.DigestOf(v1).Hex()) {
					t.Errorf("Rollback() = %v; want a *artifact.VerifyError naming v1's stored blob", err)
				}
			} else if st.Version != wantVersion {
				t.Errorf("Rollback() version = %q; want %q", st.Version, wantVersion)
			}
			if got := servedBy(t, b); got != wantServed {
				t.Errorf("after Rollback() served by %q; want %s", got, wantServed)
			}
			if a := b.Module("pricing").Status().Active; a == nil || a.Version != wantVersion {
				t.Errorf("active version after Rollback() = %+v; want %s", a, wantVersion)
			}
			// The version rolled back from is not known to be good: a
			// later restart must not fall back to it.
			store, serr := artifact.OpenStore(filepath.Join(f.state, "store"), artifact.StoreOptions{})
			if serr != nil {
				t.Fatal(serr)
			}
			if lkg, err := store.LastKnownGood("pricing"); err != nil || lkg.Manifest.Version != "1.0.0" {
				t.Errorf("store's last-known-good after Rollback() = %q, %v; want 1.0.0", lkg.Manifest.Version, err)
			}
			wantEv := event{Actor: "oncall", Action: "rollback", Target: "pricing", From: ref("2.0.0", v2), To: ref("1.0.0", v1), Result: "ok"}
			if tt.wantErr != nil {
				wantEv.Result, wantEv.Error = "refused", err.Error()
			}
			if got := events([]audit.Event{newest(t, b)})[0]; got != wantEv {
				t.Errorf("newest audit event = %v; want %v", got, wantEv)
			}
		})
	}
}

// TestRestoreFallsBackToLastKnownGood: when the current version's blob in
// the store was tampered with, RestoreModules refuses it, audits the
// refusal, loads the last-known-good version instead and reports the error.
func TestRestoreFallsBackToLastKnownGood(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	f := newFixture(t)
	a := f.open(t, hostOptions{noClose: true})
	mustLoad(t, a, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
	mustLoad(t, a, "deploy", f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"}))
	closeHost(t, a)
	blob := filepath.Join(f.state, "store", "blobs", artifact.DigestOf(v2).Hex())
	fi, err := os.Stat(blob)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("store blob mode = %v; want read-only", fi.Mode())
	}
	flipByte(t, blob)

	b := f.open(t, hostOptions{})
	err = b.RestoreModules(ctxFor(t, "boot"))
	var ve *artifact.VerifyError
	if !errors.Is(err, artifact.ErrDigestMismatch) || !errors.As(err, &ve) || !strings.Contains(err.Error(), artifact.DigestOf(v2).Hex()) {
		t.Fatalf("RestoreModules() = %v; want ErrDigestMismatch naming v2's blob", err)
	}
	if got := servedBy(t, b); got != "v1" {
		t.Errorf("after RestoreModules served by %q; want v1 (last-known-good)", got)
	}
	if a := b.Module("pricing").Status().Active; a == nil || a.Version != "1.0.0" {
		t.Errorf("active version = %+v; want 1.0.0", a)
	}
	got := events(history(t, b))
	got = got[len(got)-2:]
	want := []event{
		{Actor: "restore", Action: "swap", Target: "pricing", To: ref("2.0.0", v2), Result: "refused", Error: ve.Error()},
		{Actor: "restore", Action: "swap", Target: "pricing", To: ref("1.0.0", v1), Result: "ok"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("last audit events = %v; want %v", got, want)
	}
}

// script writes an executable shell script to dir that creates marker when
// run, so a test can tell whether it was ever executed.
func script(t *testing.T, dir, file, marker string) string {
	t.Helper()
	p := filepath.Join(dir, file)
	if err := os.WriteFile(p, []byte("#!/bin/sh\ntouch '"+marker+"'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAuditTrail: every load, swap, rollback, upgrade and refusal is in the
// audit log, in order, with the actor the change was asked with.
func TestAuditTrail(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	f := newFixture(t)
	h := f.open(t, hostOptions{upgrade: &upgrade.Options{NoSignals: true}})
	marker := filepath.Join(f.dir, "executed")
	r1, r2 := ref("1.0.0", v1), ref("2.0.0", v2)

	mustLoad(t, h, "alice", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
	mustLoad(t, h, "alice", f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"}))
	_, errUnsigned := h.LoadFile(ctxFor(t, "mallory"), "pricing", f.write(t, "unsigned.wasm", v1))
	if _, err := h.Rollback(ctxFor(t, "bob"), "pricing"); err != nil {
		t.Fatalf("Rollback() = %v; want nil", err)
	}
	_, errNoPrevious := h.Rollback(ctxFor(t, "bob"), "pricing")
	_, errUpgrade := h.Upgrade(ctxFor(t, "carol"), script(t, f.dir, "unsigned-binary", marker))
	for _, err := range []error{errUnsigned, errNoPrevious, errUpgrade} {
		if err == nil {
			t.Fatalf("a change that must be refused returned nil")
		}
	}
	var ve *artifact.VerifyError
	if !errors.Is(errUpgrade, artifact.ErrUnsigned) || !errors.As(errUpgrade, &ve) {
		t.Fatalf("Upgrade(unsigned) = %v; want ErrUnsigned from a *artifact.VerifyError", errUpgrade)
	}
	want := []event{
		{Actor: "alice", Action: "swap", Target: "pricing", Artifact: "pricing-v1.wasm", To: r1, Result: "ok"},
		{Actor: "alice", Action: "swap", Target: "pricing", Artifact: "pricing-v2.wasm", From: r1, To: r2, Result: "ok"},
		{Actor: "mallory", Action: "swap", Target: "pricing", Artifact: "unsigned.wasm", From: r2, Result: "refused", Error: errUnsigned.Error()},
		{Actor: "bob", Action: "rollback", Target: "pricing", From: r2, To: r1, Result: "ok"},
		{Actor: "bob", Action: "rollback", Target: "pricing", From: r1, Result: "refused", Error: errNoPrevious.Error()},
		{Actor: "carol", Action: "upgrade", Target: "process", Artifact: filepath.Join(f.dir, "unsigned-binary"), Result: "refused", Error: ve.Error()},
	}
	got := events(history(t, h))
	if !slices.Equal(got, want) {
		t.Errorf("audit log:\n%s\nwant:\n%s", lines(got), lines(want))
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused binary was executed (marker: %v)", err)
	}
}

func lines(evs []event) string {
	var b strings.Builder
	for _, ev := range evs {
		b.WriteString("\t" + ev.String() + "\n")
	}
	return b.String()
}

// TestUpgradeRefusesUnverifiedBinary: an upgrade to a binary that fails
// verification is refused with the error of its check, audited once with
// the actor, and the binary is never executed.
func TestUpgradeRefusesUnverifiedBinary(t *testing.T) {
	tests := []struct {
		name    string
		binary  func(t *testing.T, f *fixture, marker string) string
		wantErr error
	}{
		{
			name:    "unsigned",
			binary:  func(t *testing.T, f *fixture, marker string) string { return script(t, f.dir, "svc", marker) },
			wantErr: artifact.ErrUnsigned,
		},
		{
			name: "tampered after signing",
			binary: func(t *testing.T, f *fixture, marker string) string {
				p := script(t, f.dir, "svc", marker)
				if _, err := f.trusted.SignFile(context.Background(), p, artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindBinary}); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("#!/bin/sh\ntouch '"+marker+"' # evil\n"), 0o755); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantErr: artifact.ErrDigestMismatch,
		},
		{
			name: "signed by an unknown key",
			binary: func(t *testing.T, f *fixture, marker string) string {
				p := script(t, f.dir, "svc", marker)
				if _, err := signer(t, testKey(t, strangerSeed)).SignFile(context.Background(), p, artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindBinary}); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantErr: artifact.ErrUnknownKey,
		},
		{
			name: "signed as a wasm module",
			binary: func(t *testing.T, f *fixture, marker string) string {
				p := script(t, f.dir, "svc", marker)
				if _, err := f.trusted.SignFile(context.Background(), p, artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindWasm}); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantErr: artifact.ErrKindMismatch,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			h := f.open(t, hostOptions{upgrade: &upgrade.Options{NoSignals: true}})
			marker := filepath.Join(f.dir, "executed")
			path := tt.binary(t, f, marker)
			res, err := h.Upgrade(ctxFor(t, "carol"), path)
			var ve *artifact.VerifyError
			if !errors.Is(err, tt.wantErr) || !errors.As(err, &ve) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Upgrade() = %v; want %v from a *artifact.VerifyError naming %s", err, tt.wantErr, path)
			}
			var ce *upgrade.ChildError
			if !errors.As(err, &ce) || ce.Stage != "prepare" {
				t.Errorf("Upgrade() = %v; want a *upgrade.ChildError at stage prepare", err)
			}
			if res.PID != 0 || res.Outcome != upgrade.Failed {
				t.Errorf("Upgrade() result = %+v; want Failed, no process started", res)
			}
			if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused binary was executed (marker: %v)", err)
			}
			p := h.Process()
			if p.Upgrading || p.UpgradePhase != upgrade.PhaseIdle || p.LastUpgrade == nil || p.LastUpgrade.Err == nil {
				t.Errorf("Process() = %+v; want not upgrading (phase idle), last upgrade failed", p)
			}
			want := []event{{Actor: "carol", Action: "upgrade", Target: "process", Artifact: path, Result: "refused", Error: ve.Error()}}
			if got := events(history(t, h)); !slices.Equal(got, want) {
				t.Errorf("audit log:\n%s\nwant:\n%s", lines(got), lines(want))
			}
		})
	}
}

// TestUpgradeCommitted runs a real upgrade to a signed copy of this test
// binary: the binary is verified, copied into the store and audited before
// it runs; the new process gets the modules' host-kept state and the
// service's blob; pricing serves every call meanwhile.
func TestUpgradeCommitted(t *testing.T) {
	v1 := guest(t, "v1")
	f := newFixture(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	binPath := filepath.Join(f.dir, "hosttest-next")
	if err := os.WriteFile(binPath, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	sm, err := f.trusted.SignFile(context.Background(), binPath, artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindBinary})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(f.dir, "child.json")
	h := f.open(t, hostOptions{upgrade: &upgrade.Options{
		NoSignals: true,
		Probation: 200 * time.Millisecond,
		Env:       []string{envHelper + "=child", envOut + "=" + out, envState + "=" + f.state},
		Snapshot:  func(context.Context) ([]byte, error) { return []byte("app-state"), nil },
	}})
	mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
	for range 3 {
		servedBy(t, h)
	}
	kv := h.Module("pricing").State().Snapshot()
	if string(kv["quotes"]) != "3" {
		t.Fatalf("pricing state after 3 calls = %q; want quotes=3", kv)
	}

	var res upgrade.Result
	calls, failures := serveDuring(t, h, "v1", func() {
		res, err = h.Upgrade(ctxFor(t, "carol"), binPath)
	})
	if res.PID != 0 {
		t.Cleanup(func() { stopProcess(t, res.PID) })
	}
	if err != nil || res.Outcome != upgrade.Committed {
		t.Fatalf("Upgrade() = %+v, %v; want Committed", res, err)
	}
	if len(failures) > 0 || calls == 0 {
		t.Errorf("during the upgrade: %d calls, %d failed (first: %v); want >0 calls, none failed", calls, len(failures), failures)
	}
	stored := filepath.Join(f.state, "store", "blobs", sm.Manifest.Digest.Hex())
	if res.Binary != stored {
		t.Errorf("executed %s; want the store's copy %s", res.Binary, stored)
	}
	if p := h.Process(); p.Upgrading || p.UpgradePhase != upgrade.PhaseHandedOver || p.LastUpgrade == nil ||
		p.LastUpgrade.Outcome != upgrade.Committed || p.LastUpgrade.PID != res.PID {
		t.Errorf("Process() = %+v; want handed over, the last upgrade committed to pid %d", p, res.PID)
	}
	select {
	case <-h.Upgrader().Exit():
	case <-time.After(10 * time.Second):
		t.Errorf("Upgrader().Exit() not closed 10s after the commit")
	}

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the new process wrote no report: %v", err)
	}
	var rep childReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Process.Generation != 2 || rep.Process.ParentPID != os.Getpid() || rep.Process.PID != res.PID {
		t.Errorf("new process status = %+v; want pid %d, generation 2, parent %d", rep.Process, res.PID, os.Getpid())
	}
	if rep.AppState != "app-state" || rep.Trust != "enforce" {
		t.Errorf("new process got app state %q, trust %q; want app-state, enforce", rep.AppState, rep.Trust)
	}
	// The snapshot is taken while calls go on, so the counter the new
	// process got lies between the one before the upgrade and the final one.
	before, _ := strconv.Atoi(string(kv["quotes"]))
	after, _ := strconv.Atoi(string(h.Module("pricing").State().Snapshot()["quotes"]))
	if got, err := strconv.Atoi(string(rep.Pricing["quotes"])); err != nil || got < before || got > after || len(rep.Pricing) != len(kv) {
		t.Errorf("new process got pricing state %q; want the quote counter between %d and %d", rep.Pricing, before, after)
	}
	want := event{Actor: "carol", Action: "upgrade", Target: "process", Artifact: binPath, To: ref("2", bin), Result: "ok"}
	if got := events([]audit.Event{newest(t, h)})[0]; got != want {
		t.Errorf("newest audit event = %v; want %v", got, want)
	}
}

// stopProcess asks pid to exit and waits (bounded) until it is gone, not
// even a zombie.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("process %d still exists 15s after SIGTERM; killed it", pid)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUnwritableAuditLogRefusesChange: while the audit log cannot be
// written, a load of a good version, a rollback and an upgrade are each
// refused with an error naming the audit log; v1 keeps serving every call
// and nothing switches. Once the log is writable again, the same change
// goes through.
func TestUnwritableAuditLogRefusesChange(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	breaks := []struct {
		name  string
		errno syscall.Errno
		// replace puts something unwritable at the log's path (the log
		// reopens its path when the file there changed, as after a
		// rotation by another process).
		replace func(t *testing.T, path string)
	}{
		{
			name:  "disk full",
			errno: syscall.ENOSPC,
			replace: func(t *testing.T, path string) {
				if _, err := os.Stat("/dev/full"); err != nil {
					t.Skipf("no /dev/full: %v", err)
				}
				if err := os.Symlink("/dev/full", path); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "path is a directory",
			errno: syscall.EISDIR,
			replace: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	changes := []struct {
		name   string
		change func(t *testing.T, f *fixture, h *host.Host) (restored string, err error) // restored: who serves after a success
	}{
		{
			name: "load v2",
			change: func(t *testing.T, f *fixture, h *host.Host) (string, error) {
				_, err := h.LoadFile(ctxFor(t, "alice"), "pricing", filepath.Join(f.dir, "pricing-v2.wasm"))
				return "v2", err
			},
		},
		{
			name: "rollback to v2",
			change: func(t *testing.T, f *fixture, h *host.Host) (string, error) {
				_, err := h.Rollback(ctxFor(t, "alice"), "pricing")
				return "v2", err
			},
		},
		{
			name: "upgrade to a signed binary",
			change: func(t *testing.T, f *fixture, h *host.Host) (string, error) {
				p := script(t, f.dir, "svc", filepath.Join(f.dir, "executed"))
				if _, err := f.trusted.SignFile(context.Background(), p, artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindBinary}); err != nil {
					t.Fatal(err)
				}
				_, err := h.Upgrade(ctxFor(t, "alice"), p)
				return "", err
			},
		},
	}
	for _, br := range breaks {
		for _, ch := range changes {
			t.Run(br.name+"/"+ch.name, func(t *testing.T) {
				f := newFixture(t)
				h := f.open(t, hostOptions{upgrade: &upgrade.Options{NoSignals: true, UpgradeTimeout: 5 * time.Second}})
				// v1 serves, v2 is warm as the previous version.
				prev := mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"}))
				cur := mustLoad(t, h, "deploy", f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"}))
				logPath := filepath.Join(f.state, "audit.log")
				before := history(t, h)

				saved := logPath + ".saved"
				if err := os.Rename(logPath, saved); err != nil {
					t.Fatal(err)
				}
				br.replace(t, logPath)
				var err error
				calls, failures := serveDuring(t, h, "v1", func() { _, err = ch.change(t, f, h) })
				if err == nil || !strings.Contains(err.Error(), "audit") || !errors.Is(err, br.errno) {
					t.Fatalf("change with the audit log broken = %v; want a refusal naming the audit log, matching %v", err, br.errno)
				}
				if len(failures) > 0 || calls == 0 {
					t.Fatalf("while refusing: %d calls, %d failed (first: %v); want >0 calls, none failed", calls, len(failures), failures)
				}
				st := h.Module("pricing").Status()
				if st.Active == nil || st.Active.Digest != cur.Digest || st.Previous == nil || st.Previous.Digest != prev.Digest {
					t.Fatalf("Status() = %+v; want v1 active and v2 previous, as before", st)
				}
				if _, err := os.Stat(filepath.Join(f.dir, "executed")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the binary was executed without an audit record (marker: %v)", err)
				}
				if err := os.Remove(logPath); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(saved, logPath); err != nil {
					t.Fatal(err)
				}
				if got := history(t, h); !slices.Equal(events(got), events(before)) {
					t.Errorf("audit log after the outage:\n%s\nwant it unchanged:\n%s", lines(events(got)), lines(events(before)))
				}

				restored, err := ch.change(t, f, h)
				if restored == "" {
					return // an upgrade would now run the script
				}
				if err != nil {
					t.Fatalf("the same change with the audit log writable again = %v; want nil", err)
				}
				if got := servedBy(t, h); got != restored {
					t.Errorf("served by %q after the change; want %s", got, restored)
				}
				if ev := newest(t, h); ev.Result != audit.ResultOK || ev.Actor != "alice" {
					t.Errorf("newest audit event = %+v; want alice's change, ok", ev)
				}
			})
		}
	}
}

// TestCloseLeaksNothing: after a host loaded, swapped, rolled back,
// refused and closed, the goroutines and file descriptors it used are gone.
func TestCloseLeaksNothing(t *testing.T) {
	v1, v2 := guest(t, "v1"), guest(t, "v2")
	f := newFixture(t)
	p1 := f.signed(t, f.trusted, "pricing-v1.wasm", v1, artifact.Manifest{Version: "1.0.0"})
	p2 := f.signed(t, f.trusted, "pricing-v2.wasm", v2, artifact.Manifest{Version: "2.0.0"})
	goroutines, fds := runtime.NumGoroutine(), countFDs(t)

	h := f.open(t, hostOptions{upgrade: &upgrade.Options{NoSignals: true}, noClose: true})
	mustLoad(t, h, "deploy", p1)
	serveDuring(t, h, "v1", func() { mustLoad(t, h, "deploy", p2) })
	if _, err := h.Rollback(ctxFor(t, "deploy"), "pricing"); err != nil {
		t.Fatalf("Rollback() = %v", err)
	}
	if _, err := h.LoadFile(ctxFor(t, "deploy"), "pricing", f.write(t, "unsigned.wasm", v2)); err == nil {
		t.Fatal("LoadFile(unsigned) = nil; want a refusal")
	}
	if got := servedBy(t, h); got != "v1" {
		t.Fatalf("served by %q; want v1", got)
	}
	history(t, h)
	closeHost(t, h)
	if _, err := h.LoadFile(ctxFor(t, "deploy"), "pricing", p2); !errors.Is(err, module.ErrClosed) {
		t.Errorf("LoadFile() after Close = %v; want %v", err, module.ErrClosed)
	}

	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines || countFDs(t) > fds {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("after Close: %d goroutines (before: %d), %d fds (before: %d)\n%s",
				runtime.NumGoroutine(), goroutines, countFDs(t), fds, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// TestLoadFileReadsOnlyWhatVerificationNeeds: LoadFile reads a manifest up
// to its size limit and a payload up to the size its manifest states, so a
// huge file dropped beside a service costs it no memory.
func TestLoadFileReadsOnlyWhatVerificationNeeds(t *testing.T) {
	const huge = 256 << 20 // sparse: costs no disk
	v1 := guest(t, "v1")
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	grow := func(t *testing.T, path string) {
		if err := os.Truncate(path, huge); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		artifact func(t *testing.T) string
		wantErr  error
	}{
		{
			name: "payload larger than its manifest says",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "grown.wasm", v1, artifact.Manifest{Version: "1.0.0"})
				grow(t, p)
				return p
			},
			wantErr: artifact.ErrDigestMismatch,
		},
		{
			name: "huge manifest",
			artifact: func(t *testing.T) string {
				p := f.signed(t, f.trusted, "huge-manifest.wasm", v1, artifact.Manifest{Version: "1.0.0"})
				grow(t, artifact.ManifestPath(p))
				return p
			},
			wantErr: artifact.ErrManifestTooLarge,
		},
		{
			name: "huge payload without a manifest",
			artifact: func(t *testing.T) string {
				p := f.write(t, "huge.wasm", nil)
				grow(t, p)
				return p
			},
			wantErr: artifact.ErrUnsigned,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.artifact(t)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := h.LoadFile(ctxFor(t, "watch"), "pricing", path)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("LoadFile() = %v; want %v", err, tt.wantErr)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > huge/8 {
				t.Errorf("LoadFile() allocated %d MiB for a %d MiB file; want it to read no more than verification needs", n>>20, huge>>20)
			}
		})
	}
}
