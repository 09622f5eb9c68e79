package artifact_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
)

func TestVerify(t *testing.T) {
	payload := []byte("\x00asm\x01\x00\x00\x00 pricing module v1")
	trusted := testSigner(t, 1)
	stranger := testSigner(t, 2)

	// Each case builds an artifact in dir and returns its path.
	tests := []struct {
		name      string
		mode      artifact.Mode
		setup     func(t *testing.T, dir string) string
		want      artifact.Expect
		wantErr   error
		wantCheck artifact.Check
	}{
		{
			name: "signed by a trusted key",
			setup: func(t *testing.T, dir string) string {
				return writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
			},
			want: artifact.Expect{Name: "pricing", Kind: artifact.KindWasm},
		},
		{
			name: "tampered payload, same size",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				bad := bytes.Clone(payload)
				bad[len(bad)-1] ^= 1
				mustWrite(t, p, bad)
				return p
			},
			wantErr: artifact.ErrDigestMismatch, wantCheck: artifact.CheckDigest,
		},
		{
			name: "tampered payload, longer",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				mustWrite(t, p, append(bytes.Clone(payload), "evil"...))
				return p
			},
			wantErr: artifact.ErrDigestMismatch, wantCheck: artifact.CheckDigest,
		},
		{
			name: "tampered manifest",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				editManifest(t, p, `"version": "1"`, `"version": "2"`)
				return p
			},
			wantErr: artifact.ErrBadSignature, wantCheck: artifact.CheckSignature,
		},
		{
			name: "manifest digest swapped to another payload",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				other := bytes.Clone(payload)
				other[0] = 'X'
				mustWrite(t, p, other)
				d := artifact.DigestOf(payload).Hex()
				editManifest(t, p, d, artifact.DigestOf(other).Hex())
				return p
			},
			wantErr: artifact.ErrBadSignature, wantCheck: artifact.CheckSignature,
		},
		{
			name: "wrong key claims a trusted key id",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, stranger, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				editManifest(t, p, stranger.KeyID(), trusted.KeyID())
				return p
			},
			wantErr: artifact.ErrBadSignature, wantCheck: artifact.CheckSignature,
		},
		{
			name: "unknown key",
			setup: func(t *testing.T, dir string) string {
				return writeSigned(t, stranger, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
			},
			wantErr: artifact.ErrUnknownKey, wantCheck: artifact.CheckKey,
		},
		{
			name: "malformed manifest",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				mustWrite(t, artifact.ManifestPath(p), []byte(`{"format": "hotswap-manifest/v1", "name": `))
				return p
			},
			wantErr: artifact.ErrMalformedManifest, wantCheck: artifact.CheckManifest,
		},
		{
			name: "manifest with an unknown field",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				editManifest(t, p, `"version": "1"`, `"version": "1", "trust_me": true`)
				return p
			},
			wantErr: artifact.ErrMalformedManifest, wantCheck: artifact.CheckManifest,
		},
		{
			name: "oversized manifest",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				editManifest(t, p, `"version": "1"`, `"version": "1"`+strings.Repeat(" ", artifact.MaxManifestSize))
				return p
			},
			wantErr: artifact.ErrManifestTooLarge, wantCheck: artifact.CheckManifest,
		},
		{
			name: "no manifest under the default policy",
			setup: func(t *testing.T, dir string) string {
				p := dir + "/pricing.wasm"
				mustWrite(t, p, payload)
				return p
			},
			wantErr: artifact.ErrUnsigned, wantCheck: artifact.CheckPolicy,
		},
		{
			name: "unsigned manifest under the default policy",
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				stripSignature(t, p)
				return p
			},
			wantErr: artifact.ErrUnsigned, wantCheck: artifact.CheckPolicy,
		},
		{
			name: "kind mismatch",
			setup: func(t *testing.T, dir string) string {
				return writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
			},
			want:    artifact.Expect{Kind: artifact.KindBinary},
			wantErr: artifact.ErrKindMismatch, wantCheck: artifact.CheckKind,
		},
		{
			name: "name mismatch",
			setup: func(t *testing.T, dir string) string {
				return writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
			},
			want:    artifact.Expect{Name: "billing"},
			wantErr: artifact.ErrNameMismatch, wantCheck: artifact.CheckName,
		},
		{
			name: "ABI mismatch",
			setup: func(t *testing.T, dir string) string {
				return writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1", ABI: "1"})
			},
			want:    artifact.Expect{ABI: "2"},
			wantErr: artifact.ErrABIMismatch, wantCheck: artifact.CheckABI,
		},
		{
			name: "development mode accepts no manifest",
			mode: artifact.ModeDevelopment,
			setup: func(t *testing.T, dir string) string {
				p := dir + "/pricing.wasm"
				mustWrite(t, p, payload)
				return p
			},
		},
		{
			name: "development mode accepts an unsigned manifest",
			mode: artifact.ModeDevelopment,
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				stripSignature(t, p)
				return p
			},
		},
		{
			name: "development mode still checks the digest",
			mode: artifact.ModeDevelopment,
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				stripSignature(t, p)
				mustWrite(t, p, []byte("something else entirely"))
				return p
			},
			wantErr: artifact.ErrDigestMismatch, wantCheck: artifact.CheckDigest,
		},
		{
			name: "development mode still refuses an unknown key",
			mode: artifact.ModeDevelopment,
			setup: func(t *testing.T, dir string) string {
				return writeSigned(t, stranger, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
			},
			wantErr: artifact.ErrUnknownKey, wantCheck: artifact.CheckKey,
		},
		{
			name: "development mode still refuses a bad signature",
			mode: artifact.ModeDevelopment,
			setup: func(t *testing.T, dir string) string {
				p := writeSigned(t, trusted, dir, "pricing.wasm", payload, artifact.Manifest{Version: "1"})
				editManifest(t, p, `"version": "1"`, `"version": "2"`)
				return p
			},
			wantErr: artifact.ErrBadSignature, wantCheck: artifact.CheckSignature,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.setup(t, t.TempDir())
			v := testVerifier(t, tt.mode, trusted)
			got, err := v.Verify(context.Background(), p, tt.want)
			checkVerifyErr(t, p, err, tt.wantErr, tt.wantCheck)
			if tt.wantErr != nil {
				return
			}
			onDisk, _ := os.ReadFile(p)
			if !bytes.Equal(got.Payload, onDisk) {
				t.Errorf("Verify().Payload = %q; want %q", got.Payload, onDisk)
			}
			if got.Manifest.Digest != artifact.DigestOf(onDisk) {
				t.Errorf("Verify().Manifest.Digest = %v; want %v", got.Manifest.Digest, artifact.DigestOf(onDisk))
			}
			if wantSigned := tt.mode == artifact.ModeEnforce; got.Signed != wantSigned {
				t.Errorf("Verify().Signed = %v; want %v", got.Signed, wantSigned)
			}
		})
	}
}

// checkVerifyErr checks that err is nil when wantErr is, and otherwise a
// *VerifyError for artifact p and check wantCheck that matches wantErr and
// no other sentinel.
func checkVerifyErr(t *testing.T, p string, err, wantErr error, wantCheck artifact.Check) {
	t.Helper()
	if wantErr == nil {
		if err != nil {
			t.Fatalf("Verify() = %v; want nil", err)
		}
		return
	}
	if !errors.Is(err, wantErr) {
		t.Fatalf("Verify() = %v; want %v", err, wantErr)
	}
	for _, s := range sentinels {
		if s != wantErr && errors.Is(err, s) {
			t.Errorf("Verify() = %v also matches %v; want only %v", err, s, wantErr)
		}
	}
	var ve *artifact.VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify() = %T; want *artifact.VerifyError", err)
	}
	if ve.Check != wantCheck || ve.Artifact != p {
		t.Errorf("Verify() check %q artifact %q; want %q %q", ve.Check, ve.Artifact, wantCheck, p)
	}
	if msg := err.Error(); !strings.Contains(msg, p) || !strings.Contains(msg, string(wantCheck)) {
		t.Errorf("Verify() message %q does not name the artifact and the %s check", msg, wantCheck)
	}
}

func TestVerifyPayloadTooLarge(t *testing.T) {
	s := testSigner(t, 1)
	ts, _ := artifact.NewTrustStore(s.PublicKey())
	for _, mode := range []artifact.Mode{artifact.ModeEnforce, artifact.ModeDevelopment} {
		t.Run(mode.String(), func(t *testing.T) {
			v, err := artifact.NewVerifier(ts, artifact.VerifierOptions{Mode: mode, MaxPayloadSize: 8})
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			p := writeSigned(t, s, dir, "big.wasm", []byte("more than eight bytes"), artifact.Manifest{Version: "1"})
			if mode == artifact.ModeDevelopment {
				os.Remove(artifact.ManifestPath(p))
			}
			_, err = v.Verify(context.Background(), p, artifact.Expect{})
			checkVerifyErr(t, p, err, artifact.ErrPayloadTooLarge, artifact.CheckPayload)
		})
	}
}

func TestVerifyDevelopmentModeSaysSo(t *testing.T) {
	var logs bytes.Buffer
	v, err := artifact.NewVerifier(nil, artifact.VerifierOptions{
		Mode:   artifact.ModeDevelopment,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Mode().String(); got != "development" {
		t.Errorf("Mode() = %q; want %q", got, "development")
	}
	p := t.TempDir() + "/tool"
	mustWrite(t, p, []byte("#!/bin/sh\n"))
	vd, err := v.Verify(context.Background(), p, artifact.Expect{})
	if err != nil {
		t.Fatalf("Verify() = %v; want nil", err)
	}
	if vd.Signed {
		t.Errorf("Verify().Signed = true; want false")
	}
	m := vd.Manifest
	if m.Name != "tool" || m.Kind != artifact.KindBinary || !strings.HasPrefix(m.Version, "unsigned-") || m.KeyID != "" {
		t.Errorf("Verify().Manifest = %+v; want name tool, kind binary, version unsigned-…, no key", m)
	}
	if !strings.Contains(logs.String(), "trust=development") || !strings.Contains(logs.String(), "unsigned") {
		t.Errorf("log = %q; want a warning that an unsigned artifact was accepted in development mode", logs.String())
	}
	if got := (artifact.VerifierOptions{}).Mode.String(); got != "enforce" {
		t.Errorf("default Mode = %q; want %q", got, "enforce")
	}
}

func TestVerifyBytes(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	payload := []byte("payload")
	sm, err := s.Sign(artifact.Manifest{Name: "x", Version: "1", Kind: artifact.KindWasm,
		Digest: artifact.DigestOf(payload), Size: int64(len(payload)), Created: testCreated})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.VerifyBytes(ctx, "x", raw, payload, artifact.Expect{Name: "x"}); err != nil {
		t.Errorf("VerifyBytes() = %v; want nil", err)
	}
	if _, err := v.VerifyBytes(ctx, "x", raw, []byte("Payload"), artifact.Expect{}); !errors.Is(err, artifact.ErrDigestMismatch) {
		t.Errorf("VerifyBytes(tampered) = %v; want %v", err, artifact.ErrDigestMismatch)
	}
	if _, err := v.VerifyBytes(ctx, "x", nil, payload, artifact.Expect{}); !errors.Is(err, artifact.ErrUnsigned) {
		t.Errorf("VerifyBytes(no manifest) = %v; want %v", err, artifact.ErrUnsigned)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := v.VerifyBytes(cctx, "x", raw, payload, artifact.Expect{}); !errors.Is(err, context.Canceled) {
		t.Errorf("VerifyBytes(cancelled) = %v; want %v", err, context.Canceled)
	}
}

func TestVerifyCancelled(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	p := writeSigned(t, s, t.TempDir(), "a.wasm", []byte("abc"), artifact.Manifest{Version: "1"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.Verify(ctx, p, artifact.Expect{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Verify(cancelled) = %v; want %v", err, context.Canceled)
	}
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    artifact.Mode
		wantErr bool
	}{
		{"enforce", artifact.ModeEnforce, false},
		{"development", artifact.ModeDevelopment, false},
		{"dev", artifact.ModeDevelopment, false},
		{"off", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := artifact.ParseMode(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseMode(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func mustWrite(t testing.TB, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// editManifest replaces old with new in the manifest of the artifact at p.
func editManifest(t testing.TB, p, old, new string) {
	t.Helper()
	mp := artifact.ManifestPath(p)
	data, err := os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("manifest %s has no %q:\n%s", mp, old, data)
	}
	mustWrite(t, mp, bytes.Replace(data, []byte(old), []byte(new), 1))
}

// stripSignature rewrites the manifest of the artifact at p unsigned.
func stripSignature(t testing.TB, p string) {
	t.Helper()
	data, err := os.ReadFile(artifact.ManifestPath(p))
	if err != nil {
		t.Fatal(err)
	}
	sm, err := artifact.ParseManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	sm.Manifest.KeyID, sm.Signature = "", nil
	out, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, artifact.ManifestPath(p), out)
}

func TestVerifyReader(t *testing.T) {
	s := testSigner(t, 1)
	v := testVerifier(t, artifact.ModeEnforce, s)
	payload := []byte("payload")
	manifest := func(size int64, d artifact.Digest) []byte {
		sm, err := s.Sign(artifact.Manifest{Name: "x", Version: "1", Kind: artifact.KindWasm, Digest: d, Size: size, Created: testCreated})
		if err != nil {
			t.Fatal(err)
		}
		raw, err := sm.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	good := manifest(int64(len(payload)), artifact.DigestOf(payload))
	ctx := context.Background()
	tests := []struct {
		name     string
		manifest []byte
		stream   []byte
		want     artifact.Expect
		wantErr  error // nil: accepted
		maxRead  int   // most bytes the verifier may read
	}{
		{"good", good, payload, artifact.Expect{Name: "x"}, nil, len(payload) + 1},
		{"longer than the manifest says", good, append(payload, make([]byte, 1<<20)...), artifact.Expect{}, artifact.ErrDigestMismatch, len(payload) + 1},
		{"shorter", good, payload[:3], artifact.Expect{}, artifact.ErrDigestMismatch, len(payload) + 1},
		{"over the caller's limit", good, payload, artifact.Expect{MaxSize: 3}, artifact.ErrPayloadTooLarge, 0},
		{"wrong name", good, payload, artifact.Expect{Name: "y"}, artifact.ErrNameMismatch, 0},
		{"no manifest", nil, payload, artifact.Expect{}, artifact.ErrUnsigned, 0},
		{"huge manifest size", manifest(1<<40, artifact.DigestOf(payload)), payload, artifact.Expect{}, artifact.ErrPayloadTooLarge, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingReader{r: bytes.NewReader(tt.stream)}
			vd, err := v.VerifyReader(ctx, "x.wasm", tt.manifest, r, tt.want)
			switch {
			case tt.wantErr == nil && (err != nil || !bytes.Equal(vd.Payload, payload)):
				t.Errorf("VerifyReader() = %v; want the payload accepted", err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("VerifyReader() = %v; want %v", err, tt.wantErr)
			}
			if r.n > tt.maxRead {
				t.Errorf("VerifyReader() read %d bytes; want at most %d", r.n, tt.maxRead)
			}
		})
	}
	dev := testVerifier(t, artifact.ModeDevelopment, s)
	r := &countingReader{r: bytes.NewReader(make([]byte, 1<<20))}
	if _, err := dev.VerifyReader(ctx, "x.wasm", nil, r, artifact.Expect{Name: "x", MaxSize: 1000}); !errors.Is(err, artifact.ErrPayloadTooLarge) || r.n > 1001 {
		t.Errorf("development VerifyReader(unsigned, 1 MiB, limit 1000) = %v after %d bytes; want ErrPayloadTooLarge after at most 1001", err, r.n)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestVerifyRefusesSymlinks(t *testing.T) {
	s := testSigner(t, 1)
	dir := t.TempDir()
	real := writeSigned(t, s, dir, "real.wasm", []byte("payload"), artifact.Manifest{Name: "x", Version: "1"})
	link := filepath.Join(dir, "link.wasm")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(artifact.ManifestPath(real), artifact.ManifestPath(link)); err != nil {
		t.Fatal(err)
	}
	// Only the payload is a link.
	half := filepath.Join(dir, "half.wasm")
	if err := os.Symlink(real, half); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(artifact.ManifestPath(real))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(artifact.ManifestPath(half), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ts, err := artifact.NewTrustStore(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	strict, err := artifact.NewVerifier(ts, artifact.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	follow, err := artifact.NewVerifier(ts, artifact.VerifierOptions{FollowSymlinks: true})
	if err != nil {
		t.Fatal(err)
	}
	store, err := artifact.OpenStore(filepath.Join(dir, "store"), artifact.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, p := range []string{link, half} {
		if _, err := strict.Verify(ctx, p, artifact.Expect{}); !errors.Is(err, artifact.ErrSymlink) {
			t.Errorf("Verify(%s) = %v; want ErrSymlink", filepath.Base(p), err)
		}
		if _, err := strict.VerifyToStore(ctx, store, p, artifact.Expect{}); !errors.Is(err, artifact.ErrSymlink) {
			t.Errorf("VerifyToStore(%s) = %v; want ErrSymlink", filepath.Base(p), err)
		}
		if _, err := follow.Verify(ctx, p, artifact.Expect{}); err != nil {
			t.Errorf("Verify(%s) following links = %v; want nil", filepath.Base(p), err)
		}
	}
	if entries, _ := store.Entries("x"); len(entries) != 0 {
		t.Errorf("store holds %d entries after refused links; want none", len(entries))
	}
}
