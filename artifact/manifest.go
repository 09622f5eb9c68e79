package artifact

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ManifestSuffix is appended to an artifact's path to name its manifest:
// pricing.wasm is described by pricing.wasm.manifest in the same directory.
const ManifestSuffix = ".manifest"

// MaxManifestSize bounds an encoded manifest. A real manifest is a few hundred
// bytes; anything larger is refused with ErrManifestTooLarge before it is
// parsed.
const MaxManifestSize = 64 << 10

// manifestFormat names the encoding of a manifest file and of its canonical
// bytes. A file that states another format is refused.
const manifestFormat = "hotswap-manifest/v1"

// Field limits; they keep canonical bytes unambiguous and manifests small.
const (
	maxNameLen    = 128
	maxVersionLen = 128
	maxABILen     = 64
)

// ManifestPath returns the path of the manifest that describes the artifact at
// artifactPath.
func ManifestPath(artifactPath string) string { return artifactPath + ManifestSuffix }

// Kind is what an artifact is, and so which loader may run it.
type Kind string

// Artifact kinds.
const (
	KindWasm     Kind = "wasm"     // a WebAssembly module for module/wasm
	KindGoPlugin Kind = "goplugin" // a Go plugin (.so) for the Go plugin loader
	KindBinary   Kind = "binary"   // an executable for the process upgrade
	KindBPF      Kind = "bpf"      // an eBPF object file
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindWasm, KindGoPlugin, KindBinary, KindBPF:
		return true
	}
	return false
}

// KindFromPath guesses an artifact's kind from its file name: .wasm is a WASM
// module, .so a Go plugin, .o or .bpf an eBPF object, anything else a binary.
func KindFromPath(path string) Kind {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".wasm":
		return KindWasm
	case ".so":
		return KindGoPlugin
	case ".o", ".bpf":
		return KindBPF
	}
	return KindBinary
}

// Digest is the SHA-256 of an artifact's payload.
type Digest [sha256.Size]byte

// DigestOf returns the SHA-256 of b.
func DigestOf(b []byte) Digest { return sha256.Sum256(b) }

// String returns the digest as "sha256:" followed by 64 lower-case hex digits,
// the form used in audit records and messages.
func (d Digest) String() string { return "sha256:" + d.Hex() }

// Hex returns the digest as 64 lower-case hex digits.
func (d Digest) Hex() string { return hex.EncodeToString(d[:]) }

// Short returns the first 12 hex digits, enough to tell versions apart in
// messages.
func (d Digest) Short() string { return d.Hex()[:12] }

// IsZero reports whether d is the zero digest (no digest set).
func (d Digest) IsZero() bool { return d == Digest{} }

// ParseDigest parses 64 lower-case hex digits, with or without a "sha256:"
// prefix.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	h := strings.TrimPrefix(s, "sha256:")
	if len(h) != 2*len(d) || strings.ToLower(h) != h {
		return d, fmt.Errorf("parse digest %q: want 64 lower-case hex digits", s)
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, fmt.Errorf("parse digest %q: %w", s, err)
	}
	return d, nil
}

// Manifest describes one artifact. A signer's ed25519 signature covers its
// CanonicalBytes, so every field is what the signer stated.
type Manifest struct {
	// Name identifies what the artifact implements ("pricing"); versions of
	// one name replace each other. 1 to 128 characters from a-z, 0-9, '.',
	// '_' and '-', starting with a letter or digit.
	Name string
	// Version is the signer's version label ("1.4.2"). 1 to 128 printable
	// ASCII characters without spaces.
	Version string
	// Kind is what the payload is.
	Kind Kind
	// Digest is the SHA-256 of the payload.
	Digest Digest
	// Size is the payload's length in bytes.
	Size int64
	// ABI is the host interface version the payload was built against; empty
	// when the kind has none. Up to 64 printable ASCII characters without
	// spaces.
	ABI string
	// KeyID names the key that signed the manifest (see KeyID); empty in an
	// unsigned manifest.
	KeyID string
	// Created is when the manifest was made, in UTC, to the second.
	Created time.Time
}

// Validate reports the first field of m that breaks the rules documented on
// Manifest, as an error wrapping ErrMalformedManifest.
func (m Manifest) Validate() error {
	bad := func(field, why string) error {
		return fmt.Errorf("%w: %s %s", ErrMalformedManifest, field, why)
	}
	if !validName(m.Name) {
		return bad("name", fmt.Sprintf("%q: want 1-%d of [a-z0-9._-], starting with a letter or digit", m.Name, maxNameLen))
	}
	if !validLabel(m.Version, maxVersionLen) || m.Version == "" {
		return bad("version", fmt.Sprintf("%q: want 1-%d printable ASCII characters without spaces", m.Version, maxVersionLen))
	}
	if !m.Kind.Valid() {
		return bad("kind", fmt.Sprintf("%q: want %s, %s, %s or %s", m.Kind, KindWasm, KindGoPlugin, KindBinary, KindBPF))
	}
	if m.Digest.IsZero() {
		return bad("sha256", "is missing")
	}
	if m.Size < 0 {
		return bad("size", fmt.Sprintf("%d is negative", m.Size))
	}
	if !validLabel(m.ABI, maxABILen) {
		return bad("abi", fmt.Sprintf("%q: want up to %d printable ASCII characters without spaces", m.ABI, maxABILen))
	}
	if m.KeyID != "" && !validKeyID(m.KeyID) {
		return bad("key_id", fmt.Sprintf("%q: want %d lower-case hex digits", m.KeyID, keyIDLen))
	}
	if m.Created.IsZero() {
		return bad("created", "is missing")
	}
	if !m.Created.Equal(m.Created.Truncate(time.Second)) || m.Created.Location() != time.UTC {
		return bad("created", "must be UTC to the second")
	}
	if y := m.Created.Year(); y < 1970 || y > 9999 {
		return bad("created", fmt.Sprintf("year %d out of range", y))
	}
	return nil
}

// CanonicalBytes returns the bytes a signature covers. They are deterministic
// and independent of the file encoding: the line "hotswap-manifest/v1"
// followed by one "key=value" line per field, in this order and always
// present, each ended by '\n':
//
//	hotswap-manifest/v1
//	name=pricing
//	version=1.4.2
//	kind=wasm
//	sha256=<64 lower-case hex digits>
//	size=<decimal bytes>
//	abi=<abi, possibly empty>
//	key_id=<16 lower-case hex digits>
//	created=<RFC 3339 UTC to the second, e.g. 2026-01-02T15:04:05Z>
//
// Validate's rules keep every value free of '\n' and '=', so two different
// manifests never share canonical bytes. CanonicalBytes fails if m is not
// valid.
func (m Manifest) CanonicalBytes() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(manifestFormat + "\n")
	line := func(k, v string) { b.WriteString(k + "=" + v + "\n") }
	line("name", m.Name)
	line("version", m.Version)
	line("kind", string(m.Kind))
	line("sha256", m.Digest.Hex())
	line("size", strconv.FormatInt(m.Size, 10))
	line("abi", m.ABI)
	line("key_id", m.KeyID)
	line("created", m.Created.Format(time.RFC3339))
	return b.Bytes(), nil
}

// SignedManifest is a manifest as stored beside its artifact: the manifest
// and the ed25519 signature over its canonical bytes.
type SignedManifest struct {
	Manifest Manifest
	// Signature is the ed25519 signature over Manifest.CanonicalBytes(), made
	// by the key Manifest.KeyID names; nil in an unsigned manifest.
	Signature []byte
}

// manifestJSON is the file encoding of a SignedManifest.
type manifestJSON struct {
	Format    string `json:"format"`
	Name      string `json:"name"`
	Version   string `json:"version"`
	Kind      Kind   `json:"kind"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	ABI       string `json:"abi"`
	KeyID     string `json:"key_id"`
	Created   string `json:"created"`
	Signature string `json:"signature"`
}

// Marshal encodes sm as the manifest file format: one indented JSON object
// with the fields of the canonical bytes plus "format" and "signature"
// (standard base64, empty when unsigned). See ParseManifest.
func (sm *SignedManifest) Marshal() ([]byte, error) {
	if err := sm.Manifest.Validate(); err != nil {
		return nil, err
	}
	if err := checkSignatureFields(sm.Manifest, sm.Signature); err != nil {
		return nil, err
	}
	m := sm.Manifest
	out, err := json.MarshalIndent(manifestJSON{
		Format:    manifestFormat,
		Name:      m.Name,
		Version:   m.Version,
		Kind:      m.Kind,
		SHA256:    m.Digest.Hex(),
		Size:      m.Size,
		ABI:       m.ABI,
		KeyID:     m.KeyID,
		Created:   m.Created.Format(time.RFC3339),
		Signature: base64.StdEncoding.EncodeToString(sm.Signature),
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(out, '\n'), nil
}

// ParseManifest decodes a manifest file. It is strict: the input must be at
// most MaxManifestSize bytes (else ErrManifestTooLarge), a single JSON object
// with every field Marshal writes, each once, spelled exactly, and no other,
// of format "hotswap-manifest/v1", whose manifest passes Validate (else
// ErrMalformedManifest). It does not check the
// signature; a Verifier does.
func ParseManifest(data []byte) (*SignedManifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrManifestTooLarge, len(data), MaxManifestSize)
	}
	if err := checkManifestKeys(data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedManifest, err)
	}
	var raw manifestJSON
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedManifest, err)
	}
	if raw.Format != manifestFormat {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrMalformedManifest, raw.Format, manifestFormat)
	}
	d, err := ParseDigest(raw.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: sha256: %v", ErrMalformedManifest, err)
	}
	created, err := time.Parse(time.RFC3339, raw.Created)
	if err != nil {
		return nil, fmt.Errorf("%w: created: %v", ErrMalformedManifest, err)
	}
	if created.UTC().Format(time.RFC3339) != raw.Created {
		return nil, fmt.Errorf("%w: created %q: want RFC 3339 UTC to the second", ErrMalformedManifest, raw.Created)
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(raw.Signature)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrMalformedManifest, err)
	}
	if len(sig) == 0 {
		sig = nil
	}
	sm := &SignedManifest{
		Manifest: Manifest{
			Name:    raw.Name,
			Version: raw.Version,
			Kind:    raw.Kind,
			Digest:  d,
			Size:    raw.Size,
			ABI:     raw.ABI,
			KeyID:   raw.KeyID,
			Created: created.UTC(),
		},
		Signature: sig,
	}
	if err := sm.Manifest.Validate(); err != nil {
		return nil, err
	}
	if err := checkSignatureFields(sm.Manifest, sm.Signature); err != nil {
		return nil, err
	}
	return sm, nil
}

// manifestKeys are the fields of a manifest file, all required.
var manifestKeys = []string{"format", "name", "version", "kind", "sha256", "size", "abi", "key_id", "created", "signature"}

// checkManifestKeys checks that data is one JSON object whose keys are
// exactly manifestKeys, each once, in the case written: encoding/json alone
// would accept "NAME" for "name" and let a repeated key silently win.
func checkManifestKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil {
		return err
	} else if tok != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	seen := make(map[string]bool, len(manifestKeys))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string) // a key: the decoder yields only strings here
		switch {
		case !slices.Contains(manifestKeys, k):
			return fmt.Errorf("unknown field %q", k)
		case seen[k]:
			return fmt.Errorf("field %q repeated", k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the manifest object")
	}
	for _, k := range manifestKeys {
		if !seen[k] {
			return fmt.Errorf("field %q missing", k)
		}
	}
	return nil
}

// checkSignatureFields checks that a signature and its key id come together
// and that the signature has the ed25519 length.
func checkSignatureFields(m Manifest, sig []byte) error {
	switch {
	case len(sig) == 0 && m.KeyID != "":
		return fmt.Errorf("%w: key_id %s set but signature empty", ErrMalformedManifest, m.KeyID)
	case len(sig) != 0 && m.KeyID == "":
		return fmt.Errorf("%w: signature set but key_id empty", ErrMalformedManifest)
	case len(sig) != 0 && len(sig) != signatureSize:
		return fmt.Errorf("%w: signature is %d bytes, want %d", ErrMalformedManifest, len(sig), signatureSize)
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// validLabel reports whether s is at most max printable ASCII characters
// other than space and '='.
func validLabel(s string, max int) bool {
	if len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '=' {
			return false
		}
	}
	return true
}
