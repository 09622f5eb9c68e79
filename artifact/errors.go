package artifact

import (
	"errors"
	"fmt"
)

// Sentinel errors. A *VerifyError matches the one for its Check with
// errors.Is.
var (
	// ErrDigestMismatch: the payload is not the one the manifest describes
	// (its SHA-256 or size differs): the payload was changed or replaced.
	ErrDigestMismatch = errors.New("payload digest does not match the manifest")
	// ErrBadSignature: the signature does not verify with the key the
	// manifest names: the manifest was changed or signed with another key.
	ErrBadSignature = errors.New("manifest signature does not verify")
	// ErrUnknownKey: the manifest is signed by a key the trust store lacks.
	ErrUnknownKey = errors.New("manifest signed by a key that is not trusted")
	// ErrUnsigned: the artifact has no manifest or an unsigned one, and the
	// policy requires signatures.
	ErrUnsigned = errors.New("artifact is not signed and the policy requires signatures")
	// ErrMalformedManifest: the manifest cannot be decoded or breaks a field
	// rule.
	ErrMalformedManifest = errors.New("malformed manifest")
	// ErrManifestTooLarge: the manifest is larger than MaxManifestSize.
	ErrManifestTooLarge = errors.New("manifest too large")
	// ErrPayloadTooLarge: the payload is larger than the verifier accepts.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrKindMismatch: the manifest's kind is not the one the caller expects.
	ErrKindMismatch = errors.New("artifact kind is not the expected one")
	// ErrNameMismatch: the manifest's name is not the one the caller expects.
	ErrNameMismatch = errors.New("artifact name is not the expected one")
	// ErrABIMismatch: the manifest's ABI is not the one the caller expects.
	ErrABIMismatch = errors.New("artifact ABI is not the expected one")

	// ErrMalformedKey: a key file or key cannot be decoded as ed25519.
	ErrMalformedKey = errors.New("malformed key")
	// ErrInsecureKeyFile: a private key file is readable or writable by
	// others than its owner.
	ErrInsecureKeyFile = errors.New("private key file is accessible to other users")
	// ErrDuplicateKey: two files of a trust store hold the same key id.
	ErrDuplicateKey = errors.New("duplicate key id in trust store")
	// ErrSymlink: the artifact or manifest path is a symbolic link and the
	// verifier does not follow them (VerifierOptions.FollowSymlinks).
	ErrSymlink = errors.New("path is a symbolic link")
	// ErrVersionReused: the manifest gives a name and version that the
	// store already knows for other bytes. A version label names one
	// payload per name, forever.
	ErrVersionReused = errors.New("version label already names another payload")
	// ErrNotFound: the store holds no such entry.
	ErrNotFound = errors.New("not found in artifact store")
)

// Check names one step of verification.
type Check string

// The checks a Verifier runs, in order.
const (
	CheckManifest  Check = "manifest"  // read and decode the manifest: ErrMalformedManifest, ErrManifestTooLarge
	CheckPolicy    Check = "policy"    // a signature is required: ErrUnsigned
	CheckKey       Check = "key"       // the signer's key is trusted: ErrUnknownKey
	CheckSignature Check = "signature" // the signature verifies: ErrBadSignature
	CheckName      Check = "name"      // the caller's expected name: ErrNameMismatch
	CheckKind      Check = "kind"      // the caller's expected kind: ErrKindMismatch
	CheckABI       Check = "abi"       // the caller's expected ABI: ErrABIMismatch
	CheckPayload   Check = "payload"   // read the payload: ErrPayloadTooLarge or an I/O error
	CheckDigest    Check = "digest"    // size and SHA-256 match the manifest: ErrDigestMismatch
	CheckVersion   Check = "version"   // the version label is new or names the same payload: ErrVersionReused
)

// VerifyError is returned when an artifact fails verification. It names the
// artifact and the failed check and carries the details. errors.Is matches it
// against the sentinel of its check (see Check) and against anything Err
// wraps.
type VerifyError struct {
	Artifact string // the artifact's path, or the name given to VerifyBytes
	Check    Check  // the check that failed
	Err      error  // what was wrong
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("artifact %s refused: %s check failed: %v", e.Artifact, e.Check, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel error of e's check.
func (e *VerifyError) Is(target error) bool {
	switch e.Check {
	case CheckPolicy:
		return target == ErrUnsigned
	case CheckKey:
		return target == ErrUnknownKey
	case CheckSignature:
		return target == ErrBadSignature
	case CheckName:
		return target == ErrNameMismatch
	case CheckKind:
		return target == ErrKindMismatch
	case CheckABI:
		return target == ErrABIMismatch
	case CheckDigest:
		return target == ErrDigestMismatch
	case CheckVersion:
		return target == ErrVersionReused
	}
	// CheckManifest and CheckPayload have more than one cause; Err wraps
	// the sentinel.
	return false
}
