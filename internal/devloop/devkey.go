package devloop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/internal/statedir"
)

// DevKey is the development key and its trust root.
type DevKey struct {
	Signer *artifact.Signer
	// TrustDir holds the key's public half: the development trust root a
	// service started for development trusts (host.Options.DevTrustDir).
	TrustDir string
	// Made is set when the key was made by this call.
	Made bool
}

// OpenDevKey returns the development key kept in dir (keys/ and trust/,
// each private to this user), making it on first use. It never touches any
// other trust root: a service trusts it only if started with its TrustDir.
func OpenDevKey(dir string) (*DevKey, error) {
	keys, trust := filepath.Join(dir, "keys"), filepath.Join(dir, "trust")
	for _, d := range []string{dir, keys, trust} {
		if err := statedir.Ensure(d); err != nil {
			return nil, fmt.Errorf("development key: %w", err)
		}
	}
	k := &DevKey{TrustDir: trust}
	matches, err := filepath.Glob(filepath.Join(keys, "*"+artifact.PrivateKeySuffix))
	if err != nil {
		return nil, err
	}
	var priv []byte
	switch len(matches) {
	case 0:
		p, err := artifact.GenerateKey(nil)
		if err != nil {
			return nil, err
		}
		if _, _, err := artifact.WriteKeyPair(keys, p); err != nil {
			return nil, fmt.Errorf("development key: %w", err)
		}
		priv, k.Made = p, true
	case 1:
		p, err := artifact.LoadPrivateKey(matches[0])
		if err != nil {
			return nil, fmt.Errorf("development key: %w", err)
		}
		priv = p
	default:
		return nil, fmt.Errorf("development key: %s holds %d keys; want one", keys, len(matches))
	}
	if k.Signer, err = artifact.NewSigner(priv); err != nil {
		return nil, fmt.Errorf("development key: %w", err)
	}
	if _, err := artifact.WritePublicKey(trust, k.Signer.PublicKey()); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("development key: trust it: %w", err)
	}
	return k, nil
}
