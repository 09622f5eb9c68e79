package artifact

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// DefaultMaxPayloadSize is the largest payload a Verifier accepts unless
// VerifierOptions.MaxPayloadSize says otherwise.
const DefaultMaxPayloadSize = 1 << 30 // 1 GiB

// Mode is a verifier's trust policy.
type Mode uint8

const (
	// ModeEnforce requires every artifact to carry a manifest signed by a
	// trusted key. It is the zero value, so the default.
	ModeEnforce Mode = iota
	// ModeDevelopment also accepts artifacts without a manifest or with an
	// unsigned one. Digests are still checked when there is a manifest, and
	// a signature that is present must still verify with a trusted key:
	// development mode waives the requirement, not the checks. It is meant
	// for a developer's machine; status output must show it.
	ModeDevelopment
)

// String returns "enforce" or "development", the words ParseMode accepts;
// status output shows a verifier's mode as "trust=" + Mode().String().
func (m Mode) String() string {
	switch m {
	case ModeEnforce:
		return "enforce"
	case ModeDevelopment:
		return "development"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// ParseMode parses "enforce" or "development" ("dev" for short).
func ParseMode(s string) (Mode, error) {
	switch s {
	case "enforce":
		return ModeEnforce, nil
	case "development", "dev":
		return ModeDevelopment, nil
	}
	return 0, fmt.Errorf("parse trust mode %q: want enforce or development", s)
}

// VerifierOptions configures a Verifier. The zero value enforces signatures.
type VerifierOptions struct {
	// Mode is the trust policy. Defaults to ModeEnforce (signatures
	// required).
	Mode Mode
	// MaxPayloadSize is the largest payload accepted, in bytes; larger ones
	// are refused with ErrPayloadTooLarge before they are read. Defaults to
	// DefaultMaxPayloadSize (1 GiB).
	MaxPayloadSize int64
	// Logger receives a warning for every unsigned artifact accepted in
	// development mode. Defaults to discarding.
	Logger *slog.Logger
	// FollowSymlinks lets Verify, VerifyFiles and VerifyToStore read an
	// artifact or manifest through a symbolic link. Defaults to false: a
	// path whose last element is a symbolic link is refused (CheckPayload
	// or CheckManifest), so a link signed by mistake cannot bring the file
	// it points to (say /etc/shadow) into the store.
	FollowSymlinks bool
}

// Expect states what a caller is about to load. Each non-empty field must
// match the manifest, else verification fails with ErrNameMismatch,
// ErrKindMismatch or ErrABIMismatch. The zero value expects nothing.
type Expect struct {
	Name string
	Kind Kind
	ABI  string
	// MaxSize, when positive and below the verifier's MaxPayloadSize,
	// lowers the payload size limit for this artifact: a manifest stating
	// more is refused with ErrPayloadTooLarge before any payload byte is
	// read.
	MaxSize int64
}

// Verified is an artifact that passed verification.
type Verified struct {
	// Manifest describes Payload. In development mode, for an artifact
	// without a manifest, it is made up from the payload (Version
	// "unsigned-" + the digest's first 12 hex digits) and has no KeyID.
	Manifest Manifest
	// Payload is exactly the bytes whose digest was checked: load these,
	// not the file, so what runs is what was verified. Do not modify it.
	Payload []byte
	// Signed reports whether a trusted signature covered the manifest; it
	// is false only in development mode.
	Signed bool

	raw []byte // the encoded manifest, as checked; Store.Put keeps it
}

// Verifier checks artifacts against a trust store and a policy. It is safe
// for concurrent use.
type Verifier struct {
	trust      *TrustStore
	mode       Mode
	maxPayload int64
	follow     bool // follow symbolic links to artifacts and manifests
	log        *slog.Logger
}

// NewVerifier returns a verifier that trusts the keys in trust (nil trusts
// none, which only suits development mode).
func NewVerifier(trust *TrustStore, opts VerifierOptions) (*Verifier, error) {
	if opts.Mode != ModeEnforce && opts.Mode != ModeDevelopment {
		return nil, fmt.Errorf("new verifier: unknown mode %v", opts.Mode)
	}
	if opts.MaxPayloadSize < 0 {
		return nil, fmt.Errorf("new verifier: MaxPayloadSize %d is negative", opts.MaxPayloadSize)
	}
	if opts.MaxPayloadSize == 0 {
		opts.MaxPayloadSize = DefaultMaxPayloadSize
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Mode == ModeDevelopment {
		log.Warn("artifact verifier in development mode: unsigned artifacts are accepted")
	}
	return &Verifier{trust: trust, mode: opts.Mode, maxPayload: opts.MaxPayloadSize, follow: opts.FollowSymlinks, log: log}, nil
}

// Mode returns the verifier's trust policy; put it in every status output.
func (v *Verifier) Mode() Mode { return v.mode }

// Trust returns the verifier's trust store.
func (v *Verifier) Trust() *TrustStore { return v.trust }

// Verify verifies the artifact at artifactPath against its manifest at
// ManifestPath(artifactPath) and returns the verified payload. It reads the
// manifest, checks the policy, the signer's key, the signature and want, and
// only then reads the payload, once, into memory and checks its size and
// SHA-256. Load the returned Payload, never the file again: the file may
// change after Verify returns.
//
// A failed check returns a *VerifyError naming the artifact and the check.
// Cancelling ctx aborts the read of the payload.
func (v *Verifier) Verify(ctx context.Context, artifactPath string, want Expect) (*Verified, error) {
	return v.VerifyFiles(ctx, artifactPath, ManifestPath(artifactPath), want)
}

// VerifyFiles is Verify with the manifest at manifestPath.
func (v *Verifier) VerifyFiles(ctx context.Context, payloadPath, manifestPath string, want Expect) (*Verified, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify %s: %w", payloadPath, err)
	}
	raw, err := v.manifestFile(manifestPath)
	if err != nil {
		if err := v.noManifest(payloadPath, manifestPath, err); err != nil {
			return nil, err
		}
		payload, err := v.readPayload(ctx, payloadPath, nil, want)
		if err != nil {
			return nil, err
		}
		return v.synthesize(payloadPath, payload, want, time.Now())
	}
	sm, err := v.checkManifest(payloadPath, raw, want)
	if err != nil {
		return nil, err
	}
	payload, err := v.readPayload(ctx, payloadPath, sm, want)
	if err != nil {
		return nil, err
	}
	if err := checkDigest(payloadPath, sm.Manifest, DigestOf(payload), int64(len(payload))); err != nil {
		return nil, err
	}
	return v.verified(payloadPath, sm, raw, payload), nil
}

// VerifyBytes verifies an artifact held in memory: manifest is its encoded
// manifest (nil when it has none), payload its bytes, and name what error
// messages call it. The returned Payload aliases payload.
func (v *Verifier) VerifyBytes(ctx context.Context, name string, manifest, payload []byte, want Expect) (*Verified, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	if manifest == nil {
		if v.mode != ModeDevelopment {
			return nil, &VerifyError{Artifact: name, Check: CheckPolicy, Err: errors.New("no manifest")}
		}
		return v.synthesize(name, payload, want, time.Now())
	}
	sm, err := v.checkManifestBytes(name, manifest, want)
	if err != nil {
		return nil, err
	}
	if err := checkDigest(name, sm.Manifest, DigestOf(payload), int64(len(payload))); err != nil {
		return nil, err
	}
	return v.verified(name, sm, manifest, payload), nil
}

// VerifyReader verifies an artifact whose payload arrives as a stream, such
// as an upload: manifest is its encoded manifest (nil when it has none, which
// only development mode accepts), payload the stream and name what error
// messages call it. Every check that needs only the manifest runs before the
// first payload byte is read, so a refused artifact costs no more than its
// manifest; then exactly the size the manifest states is read (plus one
// byte, to notice a longer stream) and its digest checked. Without a
// manifest at most the size limit is read. Cancelling ctx stops the read.
func (v *Verifier) VerifyReader(ctx context.Context, name string, manifest []byte, payload io.Reader, want Expect) (*Verified, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	limit := v.limit(want)
	var sm *SignedManifest
	if manifest == nil {
		if v.mode != ModeDevelopment {
			return nil, &VerifyError{Artifact: name, Check: CheckPolicy, Err: errors.New("no manifest")}
		}
	} else {
		var err error
		if sm, err = v.checkManifestBytes(name, manifest, want); err != nil {
			return nil, err
		}
		limit = sm.Manifest.Size
	}
	buf := make([]byte, 0, min(limit, 1<<20)+1)
	buf, err := readAllInto(buf, io.LimitReader(ctxReader{ctx, payload}, limit+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("verify %s: %w", name, ctx.Err())
		}
		return nil, &VerifyError{Artifact: name, Check: CheckPayload, Err: err}
	}
	if sm == nil {
		if int64(len(buf)) > limit {
			return nil, &VerifyError{Artifact: name, Check: CheckPayload,
				Err: fmt.Errorf("%w: more than %d bytes", ErrPayloadTooLarge, limit)}
		}
		return v.synthesize(name, buf, want, time.Now())
	}
	if int64(len(buf)) > limit {
		return nil, &VerifyError{Artifact: name, Check: CheckDigest,
			Err: fmt.Errorf("payload is longer than the %d bytes the manifest says", limit)}
	}
	if err := checkDigest(name, sm.Manifest, DigestOf(buf), int64(len(buf))); err != nil {
		return nil, err
	}
	return v.verified(name, sm, manifest, buf), nil
}

// checkManifestBytes runs checkManifest on an encoded manifest held in
// memory, refusing one larger than MaxManifestSize.
func (v *Verifier) checkManifestBytes(name string, manifest []byte, want Expect) (*SignedManifest, error) {
	if len(manifest) > MaxManifestSize {
		return nil, &VerifyError{Artifact: name, Check: CheckManifest,
			Err: fmt.Errorf("%w: %d bytes, limit %d", ErrManifestTooLarge, len(manifest), MaxManifestSize)}
	}
	return v.checkManifest(name, manifest, want)
}

// limit returns the payload size limit for want.
func (v *Verifier) limit(want Expect) int64 {
	if want.MaxSize > 0 {
		return min(want.MaxSize, v.maxPayload)
	}
	return v.maxPayload
}

// VerifyEntry re-verifies an artifact kept in a Store, against the
// verifier's current trust store and policy, and returns its payload. Use it
// to load a last-known-good version after a restart.
func (v *Verifier) VerifyEntry(ctx context.Context, e Entry) (*Verified, error) {
	m := e.Manifest
	return v.VerifyFiles(ctx, e.Path, e.ManifestPath, Expect{Name: m.Name, Kind: m.Kind, ABI: m.ABI})
}

// noManifest turns a failure to read a manifest into the right refusal.
func (v *Verifier) noManifest(artifact, manifestPath string, err error) error {
	switch {
	case errors.Is(err, ErrManifestTooLarge):
		return &VerifyError{Artifact: artifact, Check: CheckManifest, Err: err}
	case errors.Is(err, fs.ErrNotExist):
		if v.mode == ModeDevelopment {
			return nil
		}
		return &VerifyError{Artifact: artifact, Check: CheckPolicy, Err: fmt.Errorf("no manifest at %s", manifestPath)}
	}
	return &VerifyError{Artifact: artifact, Check: CheckManifest, Err: err}
}

// checkManifest runs every check that needs only the manifest: decode,
// policy, key, signature, expectations and the payload size limit. sm is nil
// when raw is nil (no manifest, development mode).
func (v *Verifier) checkManifest(artifact string, raw []byte, want Expect) (*SignedManifest, error) {
	if raw == nil {
		return nil, nil
	}
	sm, err := ParseManifest(raw)
	if err != nil {
		return nil, &VerifyError{Artifact: artifact, Check: CheckManifest, Err: err}
	}
	m := sm.Manifest
	if sm.Signature == nil {
		if v.mode != ModeDevelopment {
			return nil, &VerifyError{Artifact: artifact, Check: CheckPolicy,
				Err: fmt.Errorf("manifest of %s %s has no signature", m.Name, m.Version)}
		}
	} else {
		pub, ok := v.trust.Lookup(m.KeyID)
		if !ok {
			return nil, &VerifyError{Artifact: artifact, Check: CheckKey,
				Err: fmt.Errorf("key %s is not in the trust store (trusted: %s)", m.KeyID, keyList(v.trust))}
		}
		msg, err := m.CanonicalBytes()
		if err != nil { // unreachable: ParseManifest validated m
			return nil, &VerifyError{Artifact: artifact, Check: CheckManifest, Err: err}
		}
		if !ed25519.Verify(pub, msg, sm.Signature) {
			return nil, &VerifyError{Artifact: artifact, Check: CheckSignature,
				Err: fmt.Errorf("signature over %s %s does not verify with key %s", m.Name, m.Version, m.KeyID)}
		}
	}
	if err := checkExpect(artifact, m, want); err != nil {
		return nil, err
	}
	if limit := v.limit(want); m.Size > limit {
		return nil, &VerifyError{Artifact: artifact, Check: CheckPayload,
			Err: fmt.Errorf("%w: manifest says %d bytes, limit %d", ErrPayloadTooLarge, m.Size, limit)}
	}
	return sm, nil
}

func checkExpect(artifact string, m Manifest, want Expect) error {
	switch {
	case want.Name != "" && m.Name != want.Name:
		return &VerifyError{Artifact: artifact, Check: CheckName, Err: fmt.Errorf("manifest names %q, want %q", m.Name, want.Name)}
	case want.Kind != "" && m.Kind != want.Kind:
		return &VerifyError{Artifact: artifact, Check: CheckKind, Err: fmt.Errorf("manifest says kind %q, want %q", m.Kind, want.Kind)}
	case want.ABI != "" && m.ABI != want.ABI:
		return &VerifyError{Artifact: artifact, Check: CheckABI, Err: fmt.Errorf("manifest says ABI %q, want %q", m.ABI, want.ABI)}
	}
	return nil
}

func checkDigest(artifact string, m Manifest, got Digest, size int64) error {
	if size != m.Size {
		return &VerifyError{Artifact: artifact, Check: CheckDigest,
			Err: fmt.Errorf("payload is %d bytes, manifest says %d", size, m.Size)}
	}
	if got != m.Digest {
		return &VerifyError{Artifact: artifact, Check: CheckDigest,
			Err: fmt.Errorf("payload is %s, manifest says %s", got, m.Digest)}
	}
	return nil
}

// readPayload reads the payload once. With a manifest it reads at most the
// stated size plus one byte, so a grown or huge file costs no more memory
// than the signer allowed.
func (v *Verifier) readPayload(ctx context.Context, path string, sm *SignedManifest, want Expect) ([]byte, error) {
	fail := func(err error) error { return &VerifyError{Artifact: path, Check: CheckPayload, Err: err} }
	f, err := v.open(path)
	if err != nil {
		return nil, fail(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fail(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fail(fmt.Errorf("not a regular file (%v)", fi.Mode().Type()))
	}
	limit := v.limit(want)
	if sm != nil {
		if fi.Size() != sm.Manifest.Size {
			return nil, &VerifyError{Artifact: path, Check: CheckDigest,
				Err: fmt.Errorf("payload is %d bytes, manifest says %d", fi.Size(), sm.Manifest.Size)}
		}
		limit = sm.Manifest.Size
	} else if fi.Size() > limit {
		return nil, fail(fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, fi.Size(), limit))
	}
	buf := make([]byte, 0, min(fi.Size(), limit)+1)
	buf, err = readAllInto(buf, io.LimitReader(ctxReader{ctx, f}, limit+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("verify %s: %w", path, ctx.Err())
		}
		return nil, fail(err)
	}
	if int64(len(buf)) > limit {
		if sm != nil {
			return nil, &VerifyError{Artifact: path, Check: CheckDigest,
				Err: fmt.Errorf("payload grew past %d bytes while read, manifest says %d", limit, sm.Manifest.Size)}
		}
		return nil, fail(fmt.Errorf("%w: more than %d bytes", ErrPayloadTooLarge, limit))
	}
	return buf, nil
}

// readAllInto appends all of r to buf.
func readAllInto(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func (v *Verifier) verified(artifact string, sm *SignedManifest, raw, payload []byte) *Verified {
	signed := sm.Signature != nil
	if !signed {
		v.warnUnsigned(artifact, sm.Manifest)
	}
	return &Verified{Manifest: sm.Manifest, Payload: payload, Signed: signed, raw: raw}
}

func (v *Verifier) warnUnsigned(artifact string, m Manifest) {
	v.log.Warn("accepting unsigned artifact (trust=development)",
		"artifact", artifact, "name", m.Name, logkey.Version, m.Version, logkey.Digest, m.Digest.Hex())
}

// synthesize makes an unsigned manifest for a payload that has none
// (development mode only).
func (v *Verifier) synthesize(artifact string, payload []byte, want Expect, created time.Time) (*Verified, error) {
	if limit := v.limit(want); int64(len(payload)) > limit {
		return nil, &VerifyError{Artifact: artifact, Check: CheckPayload,
			Err: fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, len(payload), limit)}
	}
	m, raw, err := synthManifest(artifact, DigestOf(payload), int64(len(payload)), want, created)
	if err != nil {
		return nil, err
	}
	v.warnUnsigned(artifact, m)
	return &Verified{Manifest: m, Payload: payload, Signed: false, raw: raw}, nil
}

// synthManifest makes up the unsigned manifest of a payload that has none.
func synthManifest(artifact string, d Digest, size int64, want Expect, created time.Time) (Manifest, []byte, error) {
	m := Manifest{
		Name:    want.Name,
		Version: "unsigned-" + d.Short(),
		Kind:    want.Kind,
		Digest:  d,
		Size:    size,
		ABI:     want.ABI,
		Created: created.UTC().Truncate(time.Second),
	}
	if m.Name == "" {
		base := filepath.Base(artifact)
		m.Name = strings.ToLower(strings.TrimSuffix(base, filepath.Ext(base)))
	}
	if m.Kind == "" {
		m.Kind = KindFromPath(artifact)
	}
	raw, err := (&SignedManifest{Manifest: m}).Marshal()
	if err != nil {
		return m, nil, &VerifyError{Artifact: artifact, Check: CheckManifest,
			Err: fmt.Errorf("no manifest, and none can be made up (pass Expect.Name): %w", err)}
	}
	return m, raw, nil
}

// manifestFile reads a manifest file, refusing one larger than
// MaxManifestSize without reading it all, and a symbolic link unless the
// verifier follows them.
func (v *Verifier) manifestFile(path string) ([]byte, error) {
	f, err := v.open(path)
	if err != nil {
		return nil, err
	}
	return readManifest(f, path)
}

// open opens path for reading; unless the verifier follows symbolic links,
// a path whose last element is one is refused with ErrSymlink.
func (v *Verifier) open(path string) (*os.File, error) {
	if v.follow {
		return os.Open(path)
	}
	return openNoFollow(path)
}

// readManifestFile reads a manifest file kept by the store, refusing one
// larger than MaxManifestSize without reading it all.
func readManifestFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return readManifest(f, path)
}

func readManifest(f *os.File, path string) ([]byte, error) {
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrManifestTooLarge, path, MaxManifestSize)
	}
	return data, nil
}

func keyList(t *TrustStore) string {
	ids := t.KeyIDs()
	if len(ids) == 0 {
		return "none"
	}
	return strings.Join(ids, ", ")
}
