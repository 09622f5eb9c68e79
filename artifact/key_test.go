package artifact_test

import (
	"crypto/ed25519"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
)

func TestWriteKeyPair(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	priv := testKey(t, 1)
	pub := priv.Public().(ed25519.PublicKey)
	privPath, pubPath, err := artifact.WriteKeyPair(dir, priv)
	if err != nil {
		t.Fatalf("WriteKeyPair() = %v; want nil", err)
	}
	id := artifact.KeyID(pub)
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Errorf("KeyID() = %q; want 16 lower-case hex digits", id)
	}
	for _, f := range []struct {
		path string
		name string
		perm fs.FileMode
	}{
		{privPath, id + ".key", 0o600},
		{pubPath, id + ".pub", 0o644},
	} {
		if filepath.Base(f.path) != f.name {
			t.Errorf("WriteKeyPair() wrote %s; want %s", f.path, f.name)
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != f.perm {
			t.Errorf("mode of %s = %04o; want %04o", f.name, got, f.perm)
		}
	}
	gotPriv, err := artifact.LoadPrivateKey(privPath)
	if err != nil || !gotPriv.Equal(priv) {
		t.Errorf("LoadPrivateKey() = %v; want the key written", err)
	}
	gotPub, err := artifact.LoadPublicKey(pubPath)
	if err != nil || !gotPub.Equal(pub) {
		t.Errorf("LoadPublicKey() = %v; want the key written", err)
	}
	if _, _, err := artifact.WriteKeyPair(dir, priv); !errors.Is(err, fs.ErrExist) {
		t.Errorf("WriteKeyPair() again = %v; want %v", err, fs.ErrExist)
	}
}

func TestLoadPrivateKeyRefusesReadableFile(t *testing.T) {
	privPath, _, err := artifact.WriteKeyPair(t.TempDir(), testKey(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, perm := range []fs.FileMode{0o640, 0o604, 0o660} {
		if err := os.Chmod(privPath, perm); err != nil {
			t.Fatal(err)
		}
		if _, err := artifact.LoadPrivateKey(privPath); !errors.Is(err, artifact.ErrInsecureKeyFile) {
			t.Errorf("LoadPrivateKey(mode %04o) = %v; want %v", perm, err, artifact.ErrInsecureKeyFile)
		}
	}
	if err := os.Chmod(privPath, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.LoadPrivateKey(privPath); err != nil {
		t.Errorf("LoadPrivateKey(mode 0400) = %v; want nil", err)
	}
}

func TestParseKeysRefuse(t *testing.T) {
	privPEM, _ := artifact.MarshalPrivateKey(testKey(t, 1))
	pubPEM, _ := artifact.MarshalPublicKey(testKey(t, 1).Public().(ed25519.PublicKey))
	tests := []struct {
		name  string
		parse func([]byte) error
		in    []byte
	}{
		{"private: empty", parsePriv, nil},
		{"private: public block", parsePriv, pubPEM},
		{"private: garbage in block", parsePriv, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
		{"private: trailing data", parsePriv, append(append([]byte{}, privPEM...), "junk"...)},
		{"public: private block", parsePub, privPEM},
		{"public: not PEM", parsePub, []byte("ssh-ed25519 AAAA")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.parse(tt.in); !errors.Is(err, artifact.ErrMalformedKey) {
				t.Errorf("parse = %v; want %v", err, artifact.ErrMalformedKey)
			}
		})
	}
}

func parsePriv(b []byte) error { _, err := artifact.ParsePrivateKey(b); return err }
func parsePub(b []byte) error  { _, err := artifact.ParsePublicKey(b); return err }

func TestLoadTrustStore(t *testing.T) {
	dir := t.TempDir()
	a, b := testSigner(t, 1), testSigner(t, 2)
	for _, s := range []*artifact.Signer{a, b} {
		if _, err := artifact.WritePublicKey(dir, s.PublicKey()); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, filepath.Join(dir, "README"), []byte("not a key"))
	ts, err := artifact.LoadTrustStore(dir)
	if err != nil {
		t.Fatalf("LoadTrustStore() = %v; want nil", err)
	}
	if got := len(ts.KeyIDs()); got != 2 {
		t.Errorf("len(KeyIDs()) = %d; want 2", got)
	}
	if k, ok := ts.Lookup(b.KeyID()); !ok || !k.Equal(b.PublicKey()) {
		t.Errorf("Lookup(%s) = %v, %v; want the key", b.KeyID(), k, ok)
	}
	if _, ok := ts.Lookup(testSigner(t, 3).KeyID()); ok {
		t.Errorf("Lookup(untrusted) = _, true; want false")
	}

	mustWrite(t, filepath.Join(dir, "broken.pub"), []byte("nope"))
	if _, err := artifact.LoadTrustStore(dir); !errors.Is(err, artifact.ErrMalformedKey) {
		t.Errorf("LoadTrustStore(broken key) = %v; want %v", err, artifact.ErrMalformedKey)
	}
	if _, err := artifact.LoadTrustStore(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadTrustStore(missing dir) = %v; want %v", err, fs.ErrNotExist)
	}
}
