package artifact

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Signer signs manifests with one ed25519 private key. It is safe for
// concurrent use.
type Signer struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	id   string
}

// NewSigner returns a Signer for priv.
func NewSigner(priv ed25519.PrivateKey) (*Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("new signer: %w: private key is %d bytes, want %d", ErrMalformedKey, len(priv), ed25519.PrivateKeySize)
	}
	pub := priv.Public().(ed25519.PublicKey)
	return &Signer{priv: priv, pub: pub, id: KeyID(pub)}, nil
}

// KeyID returns the id of the signer's public key.
func (s *Signer) KeyID() string { return s.id }

// PublicKey returns the signer's public key, the one to put in trust stores.
func (s *Signer) PublicKey() ed25519.PublicKey { return s.pub }

// Sign sets m.KeyID to the signer's key id and signs m's canonical bytes. A
// zero m.Created is set to the current time, truncated to the second, in UTC.
// Sign fails if the completed manifest is not valid.
func (s *Signer) Sign(m Manifest) (*SignedManifest, error) {
	m.KeyID = s.id
	if m.Created.IsZero() {
		m.Created = time.Now().UTC().Truncate(time.Second)
	}
	msg, err := m.CanonicalBytes()
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	return &SignedManifest{Manifest: m, Signature: ed25519.Sign(s.priv, msg)}, nil
}

// SignFile hashes the artifact at artifactPath, completes m with its digest
// and size, signs it and writes the signed manifest atomically to
// ManifestPath(artifactPath), replacing any manifest there. Fields of m left
// empty get defaults: Name from the file name without its extension
// (lower-cased), Kind from KindFromPath, Version from the first 12 hex digits
// of the digest. Cancelling ctx stops the hashing and nothing is written.
func (s *Signer) SignFile(ctx context.Context, artifactPath string, m Manifest) (*SignedManifest, error) {
	f, err := os.Open(artifactPath)
	if err != nil {
		return nil, fmt.Errorf("sign artifact: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, ctxReader{ctx, f})
	if err != nil {
		return nil, fmt.Errorf("sign artifact %s: read payload: %w", artifactPath, err)
	}
	copy(m.Digest[:], h.Sum(nil))
	m.Size = n
	if m.Name == "" {
		base := filepath.Base(artifactPath)
		m.Name = strings.ToLower(strings.TrimSuffix(base, filepath.Ext(base)))
	}
	if m.Kind == "" {
		m.Kind = KindFromPath(artifactPath)
	}
	if m.Version == "" {
		m.Version = m.Digest.Short()
	}
	sm, err := s.Sign(m)
	if err != nil {
		return nil, fmt.Errorf("sign artifact %s: %w", artifactPath, err)
	}
	data, err := sm.Marshal()
	if err != nil {
		return nil, fmt.Errorf("sign artifact %s: %w", artifactPath, err)
	}
	if err := writeFileAtomic(ManifestPath(artifactPath), data, 0o644); err != nil {
		return nil, fmt.Errorf("sign artifact %s: write manifest: %w", artifactPath, err)
	}
	return sm, nil
}

// ctxReader fails reads once its context is done, so long copies stop on
// cancellation.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
