package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
)

// putVersion signs, verifies and puts version ver of name into st.
func putVersion(t *testing.T, st *artifact.Store, v *artifact.Verifier, s *artifact.Signer, dir, name, ver string) artifact.Entry {
	t.Helper()
	p := writeSigned(t, s, dir, name+"-"+ver+".wasm", []byte(name+" version "+ver), artifact.Manifest{Name: name, Version: ver})
	vd, err := v.Verify(context.Background(), p, artifact.Expect{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Put(context.Background(), vd)
	if err != nil {
		t.Fatalf("Put(%s %s) = %v; want nil", name, ver, err)
	}
	return e
}

func TestStoreLastKnownGoodSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	dir, src := t.TempDir(), t.TempDir()

	st, err := artifact.OpenStore(dir, artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v1 := putVersion(t, st, v, s, src, "pricing", "1")
	v2 := putVersion(t, st, v, s, src, "pricing", "2")
	if err := st.SetLastKnownGood(ctx, "pricing", v1.Manifest.Digest); err != nil {
		t.Fatalf("SetLastKnownGood() = %v; want nil", err)
	}
	if err := st.SetCurrent(ctx, "pricing", v2.Manifest.Digest); err != nil {
		t.Fatalf("SetCurrent() = %v; want nil", err)
	}
	// The source files go away, as after a deploy; the store must not need them.
	os.RemoveAll(src)

	// A restart: a new Store over the same directory.
	st2, err := artifact.OpenStore(dir, artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lkg, err := st2.LastKnownGood("pricing")
	if err != nil {
		t.Fatalf("LastKnownGood() = %v; want nil", err)
	}
	if lkg.Manifest.Version != "1" || lkg.Manifest.Digest != v1.Manifest.Digest {
		t.Errorf("LastKnownGood() = %s %s; want version 1 %s", lkg.Manifest.Version, lkg.Manifest.Digest, v1.Manifest.Digest)
	}
	cur, err := st2.Current("pricing")
	if err != nil || cur.Manifest.Version != "2" {
		t.Errorf("Current() = %v, %v; want version 2", cur.Manifest.Version, err)
	}
	vd, err := v.VerifyEntry(ctx, lkg)
	if err != nil {
		t.Fatalf("VerifyEntry(last known good) = %v; want nil", err)
	}
	if want := "pricing version 1"; string(vd.Payload) != want {
		t.Errorf("VerifyEntry().Payload = %q; want %q", vd.Payload, want)
	}
	fi, err := os.Stat(lkg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o444 {
		t.Errorf("mode of stored wasm = %04o; want 0444", got)
	}
	if filepath.Base(lkg.Path) != v1.Manifest.Digest.Hex() {
		t.Errorf("stored payload %s; want it named by digest %s", lkg.Path, v1.Manifest.Digest.Hex())
	}

	if _, err := st2.LastKnownGood("billing"); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("LastKnownGood(unknown name) = %v; want %v", err, artifact.ErrNotFound)
	}
	if err := st2.SetCurrent(ctx, "pricing", artifact.DigestOf([]byte("never put"))); !errors.Is(err, artifact.ErrNotFound) {
		t.Errorf("SetCurrent(unknown digest) = %v; want %v", err, artifact.ErrNotFound)
	}
}

func TestStoreVerifyEntryRefusesTamperedStore(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	st, err := artifact.OpenStore(t.TempDir(), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := putVersion(t, st, v, s, t.TempDir(), "pricing", "1")
	os.Chmod(e.Path, 0o644)
	mustWrite(t, e.Path, []byte("pricing version X"))
	_, err = v.VerifyEntry(context.Background(), e)
	if !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("VerifyEntry(tampered blob) = %v; want %v", err, artifact.ErrDigestMismatch)
	}
	// A key removed from the trust store since: the entry no longer loads.
	v2 := testVerifier(t, artifact.ModeEnforce, testSigner(t, 2))
	os.Chmod(e.Path, 0o644)
	mustWrite(t, e.Path, []byte("pricing version 1"))
	if _, err := v2.VerifyEntry(context.Background(), e); !errors.Is(err, artifact.ErrUnknownKey) {
		t.Errorf("VerifyEntry(key no longer trusted) = %v; want %v", err, artifact.ErrUnknownKey)
	}
}

func TestStoreRetention(t *testing.T) {
	ctx := context.Background()
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	dir, src := t.TempDir(), t.TempDir()
	st, err := artifact.OpenStore(dir, artifact.StoreOptions{Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	var all []artifact.Entry
	for i := 1; i <= 6; i++ {
		e := putVersion(t, st, v, s, src, "pricing", fmt.Sprint(i))
		all = append(all, e)
		switch i {
		case 1:
			st.SetLastKnownGood(ctx, "pricing", e.Manifest.Digest)
		case 2:
			st.SetCurrent(ctx, "pricing", e.Manifest.Digest)
		}
	}
	putVersion(t, st, v, s, src, "other", "1")

	got, err := st.Entries("pricing")
	if err != nil {
		t.Fatal(err)
	}
	var versions []string
	for _, e := range got {
		versions = append(versions, e.Manifest.Version)
	}
	// The 2 newest, then the older current (2) and last-known-good (1).
	if want := "[6 5 2 1]"; fmt.Sprint(versions) != want {
		t.Errorf("Entries() versions = %v; want %s", versions, want)
	}
	for i, e := range all {
		_, err := os.Stat(e.Path)
		kept := i == 0 || i == 1 || i >= 4
		if kept && err != nil {
			t.Errorf("version %d payload: %v; want kept", i+1, err)
		}
		if !kept && err == nil {
			t.Errorf("version %d payload still in the store; want pruned", i+1)
		}
	}
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if len(blobs) != 5 {
		t.Errorf("blobs = %d; want 5 (4 pricing + 1 other)", len(blobs))
	}
	if names, _ := st.Names(); fmt.Sprint(names) != "[other pricing]" {
		t.Errorf("Names() = %v; want [other pricing]", names)
	}
}

func TestVerifyToStore(t *testing.T) {
	ctx := context.Background()
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	bin := []byte("\x7fELF pretend binary")

	t.Run("verified binary is copied read-only and executable", func(t *testing.T) {
		st, err := artifact.OpenStore(t.TempDir(), artifact.StoreOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := writeSigned(t, s, t.TempDir(), "server", bin, artifact.Manifest{Version: "2"})
		e, err := v.VerifyToStore(ctx, st, p, artifact.Expect{Kind: artifact.KindBinary})
		if err != nil {
			t.Fatalf("VerifyToStore() = %v; want nil", err)
		}
		got, err := os.ReadFile(e.Path)
		if err != nil || !bytes.Equal(got, bin) {
			t.Errorf("stored payload = %q, %v; want %q", got, err, bin)
		}
		fi, _ := os.Stat(e.Path)
		if fi.Mode().Perm() != 0o555 {
			t.Errorf("mode of stored binary = %04o; want 0555", fi.Mode().Perm())
		}
		if _, err := v.VerifyEntry(ctx, e); err != nil {
			t.Errorf("VerifyEntry() = %v; want nil", err)
		}
	})
	for _, tt := range []struct {
		name   string
		tamper func(t *testing.T, p string)
		want   error
	}{
		{"tampered payload", func(t *testing.T, p string) { mustWrite(t, p, []byte("\x7fELF evil  binary   ")) }, artifact.ErrDigestMismatch},
		{"grown payload", func(t *testing.T, p string) { mustWrite(t, p, append(bytes.Clone(bin), 0)) }, artifact.ErrDigestMismatch},
		{"tampered manifest", func(t *testing.T, p string) { editManifest(t, p, `"version": "2"`, `"version": "3"`) }, artifact.ErrBadSignature},
		{"no manifest", func(t *testing.T, p string) { os.Remove(artifact.ManifestPath(p)) }, artifact.ErrUnsigned},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := artifact.OpenStore(dir, artifact.StoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p := writeSigned(t, s, t.TempDir(), "server", bin, artifact.Manifest{Version: "2"})
			tt.tamper(t, p)
			_, err = v.VerifyToStore(ctx, st, p, artifact.Expect{})
			checkVerifyErr(t, p, err, tt.want, checkOf(err))
			for _, sub := range []string{"blobs", "names", "tmp"} {
				if ents, _ := os.ReadDir(filepath.Join(dir, sub)); len(ents) != 0 {
					t.Errorf("store %s/ holds %d files after a refusal; want none", sub, len(ents))
				}
			}
		})
	}
}

func checkOf(err error) artifact.Check {
	var ve *artifact.VerifyError
	if errors.As(err, &ve) {
		return ve.Check
	}
	return ""
}

func TestStoreConcurrentPuts(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	dir, src := t.TempDir(), t.TempDir()
	// Two Store values over one directory stand for two processes.
	st1, _ := artifact.OpenStore(dir, artifact.StoreOptions{Keep: 3})
	st2, _ := artifact.OpenStore(dir, artifact.StoreOptions{Keep: 3})
	var vds []*artifact.Verified
	for i := range 12 {
		p := writeSigned(t, s, src, fmt.Sprintf("m%d.wasm", i), []byte(fmt.Sprint("payload ", i)), artifact.Manifest{Name: "m", Version: fmt.Sprint(i)})
		vd, err := v.Verify(context.Background(), p, artifact.Expect{})
		if err != nil {
			t.Fatal(err)
		}
		vds = append(vds, vd)
	}
	var wg sync.WaitGroup
	for i, vd := range vds {
		st := st1
		if i%2 == 1 {
			st = st2
		}
		wg.Go(func() {
			if _, err := st.Put(context.Background(), vd); err != nil {
				t.Errorf("Put(%s) = %v; want nil", vd.Manifest.Version, err)
			}
		})
	}
	wg.Wait()
	es, err := st1.Entries("m")
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 3 {
		t.Errorf("len(Entries()) = %d; want 3", len(es))
	}
	for _, e := range es {
		if _, err := v.VerifyEntry(context.Background(), e); err != nil {
			t.Errorf("VerifyEntry(%s) = %v; want nil", e.Manifest.Version, err)
		}
	}
	if blobs, _ := os.ReadDir(filepath.Join(dir, "blobs")); len(blobs) != 3 {
		t.Errorf("blobs = %d; want 3", len(blobs))
	}
}

func TestStorePutRefusesChangedPayload(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	dir := t.TempDir()
	st, _ := artifact.OpenStore(dir, artifact.StoreOptions{})
	p := writeSigned(t, s, t.TempDir(), "m.wasm", []byte("payload"), artifact.Manifest{Version: "1"})
	vd, err := v.Verify(context.Background(), p, artifact.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	vd.Payload[0] = 'P' // changed after verification
	if _, err := st.Put(context.Background(), vd); !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("Put(changed payload) = %v; want %v", err, artifact.ErrDigestMismatch)
	}
	if blobs, _ := os.ReadDir(filepath.Join(dir, "blobs")); len(blobs) != 0 {
		t.Errorf("blobs = %d after a refused Put; want 0", len(blobs))
	}
	if _, err := st.Put(context.Background(), &artifact.Verified{Manifest: vd.Manifest, Payload: vd.Payload}); err == nil {
		t.Errorf("Put(Verified not from a Verifier) = nil; want an error")
	}
}

// TestNoFDLeak runs every path that opens files, refusals included, and
// checks that no descriptor stays open.
func TestNoFDLeak(t *testing.T) {
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Skip("no /proc/self/fd to count descriptors:", err)
	}
	ctx := context.Background()
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	st, _ := artifact.OpenStore(t.TempDir(), artifact.StoreOptions{Keep: 1})
	src := t.TempDir()
	good := writeSigned(t, s, src, "good", []byte("binary"), artifact.Manifest{Version: "1"})
	bad := writeSigned(t, s, src, "bad", []byte("binary"), artifact.Manifest{Version: "1"})
	mustWrite(t, bad, []byte("BINARY"))
	before := countFDs(t)
	for range 20 {
		vd, _ := v.Verify(ctx, good, artifact.Expect{})
		e, _ := st.Put(ctx, vd)
		st.SetCurrent(ctx, "good", e.Manifest.Digest)
		st.Current("good")
		st.Entries("good")
		v.VerifyEntry(ctx, e)
		v.VerifyToStore(ctx, st, good, artifact.Expect{})
		v.Verify(ctx, bad, artifact.Expect{})
		v.VerifyToStore(ctx, st, bad, artifact.Expect{})
	}
	if after := countFDs(t); after != before {
		t.Errorf("open descriptors = %d after; want %d as before", after, before)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestStoreVersionLabels: a version label names one payload per name, for
// good: other bytes under a used label are refused, even after the first
// entry was pruned or removed; the same bytes may come back.
func TestStoreVersionLabels(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	dir := t.TempDir()
	st, err := artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{Keep: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	put := func(file, version string, payload []byte) error {
		p := writeSigned(t, s, dir, file, payload, artifact.Manifest{Name: "m", Version: version})
		vd, err := v.Verify(ctx, p, artifact.Expect{})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CheckVersion(vd.Manifest); err != nil {
			return err
		}
		_, err = st.Put(ctx, vd)
		return err
	}
	if err := put("a", "1", []byte("one")); err != nil {
		t.Fatalf("Put(1) = %v", err)
	}
	if err := put("b", "1", []byte("other")); !errors.Is(err, artifact.ErrVersionReused) {
		t.Fatalf("Put(other bytes as 1) = %v; want ErrVersionReused", err)
	}
	if err := put("c", "2", []byte("two")); err != nil { // prunes 1 (Keep: 1)
		t.Fatalf("Put(2) = %v", err)
	}
	if err := put("d", "1", []byte("other")); !errors.Is(err, artifact.ErrVersionReused) {
		t.Fatalf("Put(other bytes as 1) after 1 was pruned = %v; want ErrVersionReused", err)
	}
	if err := put("e", "1", []byte("one")); err != nil {
		t.Fatalf("Put(the same bytes as 1 again) = %v; want nil", err)
	}
	// Reopening keeps the labels.
	st, err = artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{Keep: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := put("f", "2", []byte("not two")); !errors.Is(err, artifact.ErrVersionReused) {
		t.Fatalf("Put(other bytes as 2) after reopening = %v; want ErrVersionReused", err)
	}
}

// TestStoreRemove: Remove drops an entry and its blob, but never the
// current or the last-known-good one.
func TestStoreRemove(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	dir := t.TempDir()
	st, err := artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e1 := putVersion(t, st, v, s, dir, "m", "1")
	e2 := putVersion(t, st, v, s, dir, "m", "2")
	e3 := putVersion(t, st, v, s, dir, "m", "3")
	if err := st.SetCurrent(ctx, "m", e2.Manifest.Digest); err != nil {
		t.Fatal(err)
	}
	if err := st.SetLastKnownGood(ctx, "m", e1.Manifest.Digest); err != nil {
		t.Fatal(err)
	}
	for _, e := range []artifact.Entry{e1, e2, e3} {
		if err := st.Remove(ctx, "m", e.Manifest.Digest); err != nil {
			t.Fatalf("Remove(%s) = %v", e.Manifest.Version, err)
		}
	}
	entries, err := st.Entries("m")
	if err != nil || len(entries) != 2 {
		t.Fatalf("Entries() after removing all = %d, %v; want current and last-known-good kept", len(entries), err)
	}
	if _, err := os.Stat(e3.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("blob of a removed entry: %v; want it gone", err)
	}
	got, err := st.Lookup(e2.Manifest.Digest)
	if err != nil || len(got) != 1 || got[0].Manifest.Version != "2" {
		t.Errorf("Lookup(2) = %+v, %v; want the entry of m 2", got, err)
	}
	if got, err := st.Lookup(e3.Manifest.Digest); err != nil || len(got) != 0 {
		t.Errorf("Lookup(removed) = %+v, %v; want none", got, err)
	}
}
