package artifact_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
)

func validManifest() artifact.Manifest {
	return artifact.Manifest{
		Name:    "pricing",
		Version: "1.4.2",
		Kind:    artifact.KindWasm,
		Digest:  artifact.DigestOf([]byte("payload")),
		Size:    7,
		ABI:     "1",
		Created: testCreated,
	}
}

func TestCanonicalBytes(t *testing.T) {
	m := validManifest()
	m.KeyID = "0123456789abcdef"
	got, err := m.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	want := "hotswap-manifest/v1\n" +
		"name=pricing\n" +
		"version=1.4.2\n" +
		"kind=wasm\n" +
		"sha256=239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5\n" +
		"size=7\n" +
		"abi=1\n" +
		"key_id=0123456789abcdef\n" +
		"created=2026-01-02T15:04:05Z\n"
	if string(got) != want {
		t.Errorf("CanonicalBytes() = %q; want %q", got, want)
	}
}

func TestManifestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*artifact.Manifest)
		ok     bool
	}{
		{"valid", func(*artifact.Manifest) {}, true},
		{"empty ABI", func(m *artifact.Manifest) { m.ABI = "" }, true},
		{"name with dots", func(m *artifact.Manifest) { m.Name = "a.b_c-d" }, true},
		{"empty name", func(m *artifact.Manifest) { m.Name = "" }, false},
		{"upper-case name", func(m *artifact.Manifest) { m.Name = "Pricing" }, false},
		{"name starting with a dot", func(m *artifact.Manifest) { m.Name = ".." }, false},
		{"name with a slash", func(m *artifact.Manifest) { m.Name = "a/b" }, false},
		{"long name", func(m *artifact.Manifest) { m.Name = strings.Repeat("a", 129) }, false},
		{"empty version", func(m *artifact.Manifest) { m.Version = "" }, false},
		{"version with newline", func(m *artifact.Manifest) { m.Version = "1\nkind=binary" }, false},
		{"version with equals", func(m *artifact.Manifest) { m.Version = "a=b" }, false},
		{"version with space", func(m *artifact.Manifest) { m.Version = "1 2" }, false},
		{"unknown kind", func(m *artifact.Manifest) { m.Kind = "jar" }, false},
		{"no digest", func(m *artifact.Manifest) { m.Digest = artifact.Digest{} }, false},
		{"negative size", func(m *artifact.Manifest) { m.Size = -1 }, false},
		{"bad key id", func(m *artifact.Manifest) { m.KeyID = "XYZ" }, false},
		{"no created", func(m *artifact.Manifest) { m.Created = time.Time{} }, false},
		{"created with nanoseconds", func(m *artifact.Manifest) { m.Created = m.Created.Add(1) }, false},
		{"created not UTC", func(m *artifact.Manifest) { m.Created = m.Created.In(time.FixedZone("x", 3600)) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest()
			tt.change(&m)
			err := m.Validate()
			if tt.ok && err != nil {
				t.Errorf("Validate() = %v; want nil", err)
			}
			if !tt.ok && !errors.Is(err, artifact.ErrMalformedManifest) {
				t.Errorf("Validate() = %v; want %v", err, artifact.ErrMalformedManifest)
			}
		})
	}
}

func TestManifestRoundTrip(t *testing.T) {
	s := testSigner(t, 1)
	sm, err := s.Sign(validManifest())
	if err != nil {
		t.Fatal(err)
	}
	data, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := artifact.ParseManifest(data)
	if err != nil {
		t.Fatalf("ParseManifest() = %v; want nil", err)
	}
	if got.Manifest != sm.Manifest || !bytes.Equal(got.Signature, sm.Signature) {
		t.Errorf("ParseManifest(Marshal()) = %+v; want %+v", got, sm)
	}
}

func TestParseManifestRefuses(t *testing.T) {
	s := testSigner(t, 1)
	sm, err := s.Sign(validManifest())
	if err != nil {
		t.Fatal(err)
	}
	good, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	edit := func(old, new string) string {
		if !strings.Contains(string(good), old) {
			t.Fatalf("manifest has no %q", old)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	sig := base64.StdEncoding.EncodeToString(sm.Signature)
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", artifact.ErrMalformedManifest},
		{"not JSON", "name=pricing", artifact.ErrMalformedManifest},
		{"array", "[]", artifact.ErrMalformedManifest},
		{"trailing object", string(good) + "{}", artifact.ErrMalformedManifest},
		{"unknown field", edit(`"name"`, `"extra": 1, "name"`), artifact.ErrMalformedManifest},
		{"other format", edit("hotswap-manifest/v1", "hotswap-manifest/v2"), artifact.ErrMalformedManifest},
		{"upper-case digest", edit(sm.Manifest.Digest.Hex(), strings.ToUpper(sm.Manifest.Digest.Hex())), artifact.ErrMalformedManifest},
		{"short digest", edit(sm.Manifest.Digest.Hex(), "abcd"), artifact.ErrMalformedManifest},
		{"created with offset", edit("2026-01-02T15:04:05Z", "2026-01-02T16:04:05+01:00"), artifact.ErrMalformedManifest},
		{"created with fraction", edit("2026-01-02T15:04:05Z", "2026-01-02T15:04:05.5Z"), artifact.ErrMalformedManifest},
		{"signature without key id", edit(`"key_id": "`+s.KeyID()+`"`, `"key_id": ""`), artifact.ErrMalformedManifest},
		{"key id without signature", edit(sig, ""), artifact.ErrMalformedManifest},
		{"short signature", edit(sig, "AAAA"), artifact.ErrMalformedManifest},
		{"signature not base64", edit(`"signature": "`, `"signature": "!`), artifact.ErrMalformedManifest},
		{"field in other case", edit(`"name"`, `"NAME"`), artifact.ErrMalformedManifest},
		{"repeated field", edit(`"name": "pricing"`, `"name": "pricing", "name": "billing"`), artifact.ErrMalformedManifest},
		{"missing field", edit(`"abi": "1",`, ``), artifact.ErrMalformedManifest},
		{"size as string", edit(`"size": 7`, `"size": "7"`), artifact.ErrMalformedManifest},
		{"too large", string(good) + strings.Repeat(" ", artifact.MaxManifestSize), artifact.ErrManifestTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := artifact.ParseManifest([]byte(tt.in))
			if !errors.Is(err, tt.want) {
				t.Errorf("ParseManifest() = %+v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	d := artifact.DigestOf([]byte("x"))
	tests := []struct {
		in string
		ok bool
	}{
		{d.Hex(), true},
		{d.String(), true},
		{strings.ToUpper(d.Hex()), false},
		{d.Hex()[:10], false},
		{"sha256:" + strings.Repeat("g", 64), false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := artifact.ParseDigest(tt.in)
			if tt.ok && (err != nil || got != d) {
				t.Errorf("ParseDigest(%q) = %v, %v; want %v", tt.in, got, err, d)
			}
			if !tt.ok && err == nil {
				t.Errorf("ParseDigest(%q) = %v, nil; want an error", tt.in, got)
			}
		})
	}
}

func TestKindFromPath(t *testing.T) {
	tests := map[string]artifact.Kind{
		"a/pricing.wasm": artifact.KindWasm,
		"p.SO":           artifact.KindGoPlugin,
		"prog.o":         artifact.KindBPF,
		"prog.bpf":       artifact.KindBPF,
		"hotswap":        artifact.KindBinary,
	}
	for in, want := range tests {
		if got := artifact.KindFromPath(in); got != want {
			t.Errorf("KindFromPath(%q) = %q; want %q", in, got, want)
		}
	}
}
