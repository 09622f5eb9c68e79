// Package artifact decides whether a piece of code may run: it signs and
// verifies artifacts (WASM modules, Go plugins, binaries, eBPF objects) and
// keeps verified ones in a local content-addressed store.
//
// An artifact is a payload file plus a manifest beside it, at the payload's
// path with ".manifest" appended (pricing.wasm, pricing.wasm.manifest). The
// manifest states the name, version, kind, SHA-256, size and ABI version of
// the payload, the id of the signing key and when it was made, and carries an
// ed25519 signature over its canonical bytes (see Manifest.CanonicalBytes).
//
// The flow:
//
//	priv, _ := artifact.GenerateKey(nil)               // once; WriteKeyPair saves it
//	signer, _ := artifact.NewSigner(priv)
//	signer.SignFile(ctx, "pricing.wasm", artifact.Manifest{Version: "1.4.2", ABI: "1"})
//
//	trust, _ := artifact.LoadTrustStore(dir)           // a directory of *.pub files
//	v, _ := artifact.NewVerifier(trust, artifact.VerifierOptions{})
//	vd, err := v.Verify(ctx, "pricing.wasm", artifact.Expect{Name: "pricing", Kind: artifact.KindWasm})
//	// load vd.Payload — the bytes that were checked — never the file again.
//
// For a binary, Verifier.VerifyToStore copies the payload into a Store while
// it hashes it and returns the read-only store path to exec.
//
// Verification reads the payload once and checks, in order: the manifest
// (size bound, strict decoding), the policy (a signature is required unless
// the verifier is in ModeDevelopment), the signer's key (in the trust store),
// the signature, what the caller expects (Expect), and finally the payload's
// size and digest. The first failure is returned as a *VerifyError naming the
// artifact and the check; errors.Is matches it against ErrUnsigned,
// ErrUnknownKey, ErrBadSignature, ErrDigestMismatch and the other sentinels.
//
// Key files are PEM: "PRIVATE KEY" (PKCS #8, mode 0600) and "PUBLIC KEY"
// (PKIX), named by key id (see KeyID), so openssl can read them.
package artifact
