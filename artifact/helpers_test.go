package artifact_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
)

// testKey returns a deterministic private key for seed.
func testKey(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	priv, err := artifact.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func testSigner(t testing.TB, seed byte) *artifact.Signer {
	t.Helper()
	s, err := artifact.NewSigner(testKey(t, seed))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testVerifier(t testing.TB, mode artifact.Mode, trusted ...*artifact.Signer) *artifact.Verifier {
	t.Helper()
	var keys []ed25519.PublicKey
	for _, s := range trusted {
		keys = append(keys, s.PublicKey())
	}
	ts, err := artifact.NewTrustStore(keys...)
	if err != nil {
		t.Fatal(err)
	}
	v, err := artifact.NewVerifier(ts, artifact.VerifierOptions{Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var testCreated = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)

// writeSigned writes payload to dir/file and signs it with s.
func writeSigned(t testing.TB, s *artifact.Signer, dir, file string, payload []byte, m artifact.Manifest) string {
	t.Helper()
	p := filepath.Join(dir, file)
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if m.Created.IsZero() {
		m.Created = testCreated
	}
	if _, err := s.SignFile(context.Background(), p, m); err != nil {
		t.Fatal(err)
	}
	return p
}

// sentinels lists every verification sentinel, to check that an error
// matches exactly the one it should.
var sentinels = []error{
	artifact.ErrDigestMismatch, artifact.ErrBadSignature, artifact.ErrUnknownKey,
	artifact.ErrUnsigned, artifact.ErrMalformedManifest, artifact.ErrManifestTooLarge,
	artifact.ErrPayloadTooLarge, artifact.ErrKindMismatch, artifact.ErrNameMismatch,
	artifact.ErrABIMismatch, artifact.ErrVersionReused,
}
