package artifact

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Key file names: a key pair with id ID is written as ID.key (private, mode
// 0600) and ID.pub (public, mode 0644).
const (
	PrivateKeySuffix = ".key"
	PublicKeySuffix  = ".pub"
)

const (
	keyIDLen      = 16 // hex digits: the first 8 bytes of SHA-256(public key)
	signatureSize = ed25519.SignatureSize
	maxKeyFile    = 16 << 10

	pemPrivate = "PRIVATE KEY" // PKCS #8, as openssl writes it
	pemPublic  = "PUBLIC KEY"  // PKIX SubjectPublicKeyInfo
)

// KeyID returns the id of an ed25519 public key: the first 8 bytes of the
// SHA-256 of the raw 32-byte key, as 16 lower-case hex digits. Manifests name
// their signer by it and trust stores look keys up by it.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:keyIDLen/2])
}

func validKeyID(s string) bool {
	if len(s) != keyIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// GenerateKey returns a new ed25519 private key drawn from r, or from
// crypto/rand when r is nil.
func GenerateKey(r io.Reader) (ed25519.PrivateKey, error) {
	if r == nil {
		r = rand.Reader
	}
	_, priv, err := ed25519.GenerateKey(r)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return priv, nil
}

// MarshalPrivateKey encodes priv as a PEM "PRIVATE KEY" block (PKCS #8,
// unencrypted), the format openssl reads.
func MarshalPrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: der}), nil
}

// ParsePrivateKey decodes a PEM "PRIVATE KEY" block holding an ed25519 key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	der, err := pemBlock(data, pemPrivate)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedKey, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not an ed25519 key", ErrMalformedKey, k)
	}
	return priv, nil
}

// MarshalPublicKey encodes pub as a PEM "PUBLIC KEY" block (PKIX).
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: der}), nil
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" block holding an ed25519 key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	der, err := pemBlock(data, pemPublic)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedKey, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not an ed25519 key", ErrMalformedKey, k)
	}
	return pub, nil
}

func pemBlock(data []byte, typ string) ([]byte, error) {
	b, rest := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrMalformedKey)
	}
	if b.Type != typ {
		return nil, fmt.Errorf("%w: PEM block %q, want %q", ErrMalformedKey, b.Type, typ)
	}
	if len(b.Headers) != 0 {
		return nil, fmt.Errorf("%w: PEM headers (an encrypted key?) are not supported", ErrMalformedKey)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM block", ErrMalformedKey)
	}
	return b.Bytes, nil
}

// WriteKeyPair writes priv to dir/ID.key (mode 0600) and its public key to
// dir/ID.pub (mode 0644), where ID is KeyID of the public key, creating dir
// (mode 0700) if needed. It refuses to overwrite an existing file. Both files
// are written atomically.
func WriteKeyPair(dir string, priv ed25519.PrivateKey) (privPath, pubPath string, err error) {
	pub, ok := priv.Public().(ed25519.PublicKey)
	if !ok || len(priv) != ed25519.PrivateKeySize {
		return "", "", fmt.Errorf("write key pair: %w: not an ed25519 private key", ErrMalformedKey)
	}
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("write key pair: %w", err)
	}
	id := KeyID(pub)
	privPath = filepath.Join(dir, id+PrivateKeySuffix)
	pubPath = filepath.Join(dir, id+PublicKeySuffix)
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("write key pair: %s: %w", p, os.ErrExist)
		}
	}
	if err := writeFileAtomic(privPath, privPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("write private key: %w", err)
	}
	if err := writeFileAtomic(pubPath, pubPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("write public key: %w", err)
	}
	return privPath, pubPath, nil
}

// WritePublicKey writes pub to dir/ID.pub (mode 0644), creating dir if
// needed; use it to add a key to a trust store directory. Writing a key that
// is already there is not an error.
func WritePublicKey(dir string, pub ed25519.PublicKey) (string, error) {
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write public key: %w", err)
	}
	p := filepath.Join(dir, KeyID(pub)+PublicKeySuffix)
	if err := writeFileAtomic(p, pubPEM, 0o644); err != nil {
		return "", fmt.Errorf("write public key: %w", err)
	}
	return p, nil
}

// LoadPrivateKey reads a private key file. It refuses, with an error wrapping
// ErrInsecureKeyFile, a file that its group or other users may read or write,
// as ssh does: such a key may already be someone else's.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("load private key %s: %w: mode %04o, want 0600 (chmod 600 %s)", path, ErrInsecureKeyFile, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load private key: %w", err)
	}
	priv, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("load private key %s: %w", path, err)
	}
	return priv, nil
}

// LoadPublicKey reads a public key file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := readBounded(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load public key: %w", err)
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("load public key %s: %w", path, err)
	}
	return pub, nil
}

// readBounded reads at most limit bytes of path and fails if there is more.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory that is fsync'd, given perm and renamed over path; the directory
// is fsync'd after the rename. A reader sees the old file or the new one,
// never a part.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

// syncDir fsyncs a directory so a rename or create in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
