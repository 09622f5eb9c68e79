package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
)

// The whole trust path: make a key, sign an artifact, trust the key, verify.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "artifact-example")
	defer os.RemoveAll(dir)

	// Once, on the build machine.
	priv, _ := artifact.GenerateKey(nil)
	signer, _ := artifact.NewSigner(priv)
	wasm := filepath.Join(dir, "pricing.wasm")
	os.WriteFile(wasm, []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	if _, err := signer.SignFile(ctx, wasm, artifact.Manifest{Version: "1.4.2", ABI: "1"}); err != nil {
		fmt.Println(err)
		return
	}

	// In the service: trust the public key, verify, load vd.Payload.
	trust, _ := artifact.NewTrustStore(signer.PublicKey())
	v, _ := artifact.NewVerifier(trust, artifact.VerifierOptions{})
	vd, err := v.Verify(ctx, wasm, artifact.Expect{Name: "pricing", Kind: artifact.KindWasm, ABI: "1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("trust=%s: %s %s (%s, %d bytes) signed=%v\n", v.Mode(), vd.Manifest.Name, vd.Manifest.Version,
		vd.Manifest.Kind, len(vd.Payload), vd.Signed)

	// Someone changes the file afterwards: the next verification refuses it.
	os.WriteFile(wasm, []byte("\x00asm\x01\x00\x00\x01"), 0o644)
	_, err = v.Verify(ctx, wasm, artifact.Expect{Name: "pricing"})
	fmt.Println(errors.Is(err, artifact.ErrDigestMismatch))
	// Output:
	// trust=enforce: pricing 1.4.2 (wasm, 8 bytes) signed=true
	// true
}

func ExampleManifest_CanonicalBytes() {
	m := artifact.Manifest{
		Name:    "pricing",
		Version: "1.4.2",
		Kind:    artifact.KindWasm,
		Digest:  artifact.DigestOf([]byte("payload")),
		Size:    7,
		ABI:     "1",
		KeyID:   "0123456789abcdef",
		Created: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC),
	}
	b, _ := m.CanonicalBytes()
	fmt.Print(string(b))
	// Output:
	// hotswap-manifest/v1
	// name=pricing
	// version=1.4.2
	// kind=wasm
	// sha256=239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5
	// size=7
	// abi=1
	// key_id=0123456789abcdef
	// created=2026-01-02T15:04:05Z
}

func ExampleKeyID() {
	priv, _ := artifact.GenerateKey(bytes.NewReader(make([]byte, 32))) // a fixed seed, for the example only
	signer, _ := artifact.NewSigner(priv)
	fmt.Println(artifact.KeyID(signer.PublicKey()) == signer.KeyID(), len(signer.KeyID()))
	// Output: true 16
}

// A refusal names the artifact and the failed check.
func ExampleVerifyError() {
	dir, _ := os.MkdirTemp("", "artifact-example")
	defer os.RemoveAll(dir)
	wasm := filepath.Join(dir, "pricing.wasm")
	os.WriteFile(wasm, []byte("\x00asm\x01\x00\x00\x00"), 0o644)

	v, _ := artifact.NewVerifier(nil, artifact.VerifierOptions{}) // enforce, trusts no key
	_, err := v.Verify(context.Background(), wasm, artifact.Expect{})
	var ve *artifact.VerifyError
	if errors.As(err, &ve) {
		fmt.Println(ve.Check, errors.Is(err, artifact.ErrUnsigned))
	}
	// Output: policy true
}

// Keep verified versions, and find the last known good one after a restart.
func ExampleStore() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "artifact-example")
	defer os.RemoveAll(dir)
	priv, _ := artifact.GenerateKey(nil)
	signer, _ := artifact.NewSigner(priv)
	trust, _ := artifact.NewTrustStore(signer.PublicKey())
	v, _ := artifact.NewVerifier(trust, artifact.VerifierOptions{})
	wasm := filepath.Join(dir, "pricing.wasm")
	os.WriteFile(wasm, []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	signer.SignFile(ctx, wasm, artifact.Manifest{Version: "1"})

	st, _ := artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{})
	vd, _ := v.Verify(ctx, wasm, artifact.Expect{Name: "pricing"})
	e, _ := st.Put(ctx, vd)
	st.SetCurrent(ctx, "pricing", e.Manifest.Digest)
	st.SetLastKnownGood(ctx, "pricing", e.Manifest.Digest)

	// After a restart.
	st, _ = artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{})
	lkg, _ := st.LastKnownGood("pricing")
	again, err := v.VerifyEntry(ctx, lkg) // re-checked against today's trust store
	fmt.Println(again.Manifest.Name, again.Manifest.Version, err)
	// Output: pricing 1 <nil>
}

// A binary is copied into the store while it is verified; exec the store's
// read-only copy, which cannot change between verification and exec.
func ExampleVerifier_VerifyToStore() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "artifact-example")
	defer os.RemoveAll(dir)
	priv, _ := artifact.GenerateKey(nil)
	signer, _ := artifact.NewSigner(priv)
	trust, _ := artifact.NewTrustStore(signer.PublicKey())
	v, _ := artifact.NewVerifier(trust, artifact.VerifierOptions{})
	st, _ := artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{})

	bin := filepath.Join(dir, "server")
	os.WriteFile(bin, []byte("#!/bin/sh\necho v2\n"), 0o755)
	signer.SignFile(ctx, bin, artifact.Manifest{Version: "2"})

	e, err := v.VerifyToStore(ctx, st, bin, artifact.Expect{Kind: artifact.KindBinary})
	if err != nil {
		fmt.Println(err)
		return
	}
	fi, _ := os.Stat(e.Path)
	fmt.Println(e.Manifest.Name, e.Manifest.Version, fi.Mode().Perm(), filepath.Base(e.Path) == e.Manifest.Digest.Hex())
	// Output: server 2 -r-xr-xr-x true
}
