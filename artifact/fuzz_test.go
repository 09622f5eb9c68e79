package artifact_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
)

// FuzzParseManifest checks that the decoder never panics, that whatever it
// accepts is valid and survives a round trip unchanged, and that every
// refusal is one of its two sentinels.
func FuzzParseManifest(f *testing.F) {
	s := testSigner(f, 1)
	sm, err := s.Sign(validManifest())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := sm.Marshal()
	unsigned, _ := (&artifact.SignedManifest{Manifest: validManifest()}).Marshal()
	f.Add(good)
	f.Add(unsigned)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"format":"hotswap-manifest/v1","name":"a","version":"1","kind":"bpf","sha256":"` +
		artifact.DigestOf(nil).Hex() + `","size":0,"abi":"","key_id":"","created":"1970-01-01T00:00:00Z","signature":""}`))
	f.Add(bytes.Replace(good, []byte(`"size": 7`), []byte(`"size": 7e3`), 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		sm, err := artifact.ParseManifest(data)
		if err != nil {
			if !errors.Is(err, artifact.ErrMalformedManifest) && !errors.Is(err, artifact.ErrManifestTooLarge) {
				t.Fatalf("ParseManifest() = %v; want a malformed or too-large error", err)
			}
			return
		}
		if err := sm.Manifest.Validate(); err != nil {
			t.Fatalf("ParseManifest() accepted an invalid manifest: %v", err)
		}
		canon, err := sm.Manifest.CanonicalBytes()
		if err != nil {
			t.Fatalf("CanonicalBytes() = %v; want nil", err)
		}
		out, err := sm.Marshal()
		if err != nil {
			t.Fatalf("Marshal() = %v; want nil", err)
		}
		again, err := artifact.ParseManifest(out)
		if err != nil {
			t.Fatalf("ParseManifest(Marshal()) = %v; want nil", err)
		}
		if again.Manifest != sm.Manifest || !bytes.Equal(again.Signature, sm.Signature) {
			t.Fatalf("round trip = %+v; want %+v", again, sm)
		}
		canon2, _ := again.Manifest.CanonicalBytes()
		if !bytes.Equal(canon, canon2) {
			t.Fatalf("canonical bytes changed in a round trip: %q, %q", canon, canon2)
		}
	})
}

// FuzzVerify feeds arbitrary manifests and payloads to a verifier that trusts
// one key. It must never panic, and it must accept only a payload whose
// digest the manifest states, under a manifest that key signed.
func FuzzVerify(f *testing.F) {
	s := testSigner(f, 1)
	ts, _ := artifact.NewTrustStore(s.PublicKey())
	v, err := artifact.NewVerifier(ts, artifact.VerifierOptions{MaxPayloadSize: 1 << 20})
	if err != nil {
		f.Fatal(err)
	}
	payload := []byte("payload")
	sm, _ := s.Sign(validManifest())
	good, _ := sm.Marshal()
	f.Add(good, payload)
	f.Add(good, []byte("Payload"))
	f.Add(bytes.Replace(good, []byte("1.4.2"), []byte("1.4.3"), 1), payload)
	f.Add([]byte("{}"), payload)
	f.Add([]byte(nil), payload)
	f.Fuzz(func(t *testing.T, manifest, payload []byte) {
		vd, err := v.VerifyBytes(context.Background(), "fuzz", manifest, payload, artifact.Expect{})
		// A stream is accepted exactly when the same bytes in memory are.
		if _, rerr := v.VerifyReader(context.Background(), "fuzz", manifest, bytes.NewReader(payload), artifact.Expect{}); (rerr == nil) != (err == nil) {
			t.Fatalf("VerifyReader() = %v but VerifyBytes() = %v", rerr, err)
		}
		if err != nil {
			var ve *artifact.VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("VerifyBytes() = %T %v; want *VerifyError", err, err)
			}
			return
		}
		m := vd.Manifest
		if m.Digest != artifact.DigestOf(payload) || m.Size != int64(len(payload)) || !vd.Signed {
			t.Fatalf("VerifyBytes() accepted %+v for a payload of %d bytes %v", m, len(payload), artifact.DigestOf(payload))
		}
		msg, err := m.CanonicalBytes()
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := artifact.ParseManifest(manifest)
		if err != nil {
			t.Fatalf("VerifyBytes() accepted a manifest ParseManifest refuses: %v", err)
		}
		if m.KeyID != s.KeyID() || !ed25519.Verify(s.PublicKey(), msg, parsed.Signature) {
			t.Fatalf("VerifyBytes() accepted a manifest the trusted key did not sign")
		}
	})
}
