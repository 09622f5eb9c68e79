package artifact

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// TrustStore is the set of public keys whose signatures a Verifier accepts,
// looked up by key id. It is immutable once made and safe for concurrent use;
// to change the trusted keys, load a new one and make a new Verifier.
type TrustStore struct {
	keys map[string]ed25519.PublicKey
}

// NewTrustStore returns a trust store holding keys. It fails with
// ErrDuplicateKey if two different keys share a key id.
func NewTrustStore(keys ...ed25519.PublicKey) (*TrustStore, error) {
	t := &TrustStore{keys: make(map[string]ed25519.PublicKey, len(keys))}
	for _, k := range keys {
		if err := t.add(k, "key"); err != nil {
			return nil, fmt.Errorf("new trust store: %w", err)
		}
	}
	return t, nil
}

func (t *TrustStore) add(k ed25519.PublicKey, from string) error {
	if len(k) != ed25519.PublicKeySize {
		return fmt.Errorf("%s: %w: public key is %d bytes, want %d", from, ErrMalformedKey, len(k), ed25519.PublicKeySize)
	}
	id := KeyID(k)
	if old, ok := t.keys[id]; ok && !old.Equal(k) {
		return fmt.Errorf("%s: %w: %s", from, ErrDuplicateKey, id)
	}
	t.keys[id] = slices.Clone(k)
	return nil
}

// LoadTrustStore reads every *.pub file (PEM "PUBLIC KEY", see
// WritePublicKey) in dir; other files are ignored. A key's id is computed
// from the key, whatever its file is called. A directory that does not exist
// is an error, so a mistyped path does not silently trust nothing; any file
// that does not parse is an error too.
func LoadTrustStore(dir string) (*TrustStore, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load trust store: %w", err)
	}
	t := &TrustStore{keys: make(map[string]ed25519.PublicKey)}
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), PublicKeySuffix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		pub, err := LoadPublicKey(p)
		if err != nil {
			return nil, fmt.Errorf("load trust store: %w", err)
		}
		if err := t.add(pub, p); err != nil {
			return nil, fmt.Errorf("load trust store: %w", err)
		}
	}
	return t, nil
}

// Lookup returns the key with the given id.
func (t *TrustStore) Lookup(id string) (ed25519.PublicKey, bool) {
	if t == nil {
		return nil, false
	}
	k, ok := t.keys[id]
	return k, ok
}

// KeyIDs returns the ids of the trusted keys, sorted.
func (t *TrustStore) KeyIDs() []string {
	if t == nil {
		return nil
	}
	ids := make([]string, 0, len(t.keys))
	for id := range t.keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
