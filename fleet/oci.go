package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/hotswapgo/hotswap/artifact"
)

// How an artifact lies in an OCI registry: one OCI image manifest
// (ocispec.MediaTypeImageManifest) of artifactType OCIArtifactType, with
// the empty config (ocispec.DescriptorEmptyJSON) and one or two layers:
// first the payload (OCIPayloadMediaType), its digest the pin; then, for a
// signed artifact, the signed manifest (OCIManifestMediaType), the bytes
// `hotswap sign` writes beside a payload. Nothing else: no foreign URLs, no
// inline data, no subject. An oci:// URL names the OCI manifest by its
// digest, so a fetch reads only content-addressed bytes.
const (
	// OCIScheme starts an OCI URL: oci://HOST[:PORT]/REPO@sha256:<hex>,
	// the hex being the OCI manifest's digest (not the payload's: that is
	// ModuleSpec.Digest, the pin).
	OCIScheme = "oci://"
	// OCIArtifactType is the artifactType of a hotswap artifact's OCI
	// manifest.
	OCIArtifactType = "application/vnd.hotswap.artifact.v1"
	// OCIPayloadMediaType is the media type of the payload layer.
	OCIPayloadMediaType = "application/vnd.hotswap.payload.v1"
	// OCIManifestMediaType is the media type of the signed manifest layer.
	OCIManifestMediaType = "application/vnd.hotswap.manifest.v1+json"
	// MaxOCIManifestSize bounds an OCI manifest: a larger one is refused
	// before it is read. A hotswap one takes well under 1 KiB.
	MaxOCIManifestSize = 64 << 10
)

// OCIOptions says how to reach OCI registries. The zero value pulls
// anonymously, over HTTPS unless the registry is on a loopback address.
type OCIOptions struct {
	// Credential returns the user name and password for a registry, named
	// "host[:port]", sent as HTTP basic authentication or to the
	// registry's token service. Defaults to nil: anonymous access.
	Credential func(ctx context.Context, registry string) (username, password string, err error)
	// PlainHTTP reaches registries that are not on a loopback address over
	// plain HTTP. Defaults to false: only a registry on localhost or a
	// loopback IP is reached over plain HTTP, every other over HTTPS.
	PlainHTTP bool
}

// ociLayout is what a validated OCI manifest holds.
type ociLayout struct {
	payload  ocispec.Descriptor
	manifest *ocispec.Descriptor // nil: unsigned
}

// parseOCIURL parses an oci:// URL in its one canonical form: with a
// sha256 digest when pinned (for a fetch), else with an optional tag (for
// a push).
func parseOCIURL(raw string, pinned bool) (registry.Reference, error) {
	form := "oci://HOST[:PORT]/REPO[:TAG]"
	if pinned {
		form = "oci://HOST[:PORT]/REPO@sha256:<hex>"
	}
	rest, ok := strings.CutPrefix(raw, OCIScheme)
	if !ok {
		return registry.Reference{}, fmt.Errorf("%w: URL %q is not %s", ErrInvalid, raw, form)
	}
	ref, err := registry.ParseReference(rest)
	if err != nil {
		return registry.Reference{}, fmt.Errorf("%w: URL %q is not %s: %v", ErrInvalid, raw, form, err)
	}
	canonical := ref.Registry + "/" + ref.Repository
	switch _, derr := ref.Digest(); {
	case pinned && (derr != nil || !strings.HasPrefix(ref.Reference, "sha256:")):
		return registry.Reference{}, fmt.Errorf("%w: URL %q is not %s: it names no sha256 digest", ErrInvalid, raw, form)
	case pinned:
		canonical += "@" + ref.Reference
	case derr == nil:
		return registry.Reference{}, fmt.Errorf("%w: URL %q is not %s: a push names a tag or nothing, not a digest", ErrInvalid, raw, form)
	case ref.Reference != "":
		canonical += ":" + ref.Reference
	}
	if canonical != rest {
		return registry.Reference{}, fmt.Errorf("%w: URL %q is not %s", ErrInvalid, raw, form)
	}
	return ref, nil
}

// loopback reports whether hostport is on this machine.
func loopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// repository returns the client of ref's repository.
func (s Source) repository(ref registry.Reference) *remote.Repository {
	client := &auth.Client{Client: s.HTTPClient, Cache: auth.NewCache()}
	if cred := s.OCI.Credential; cred != nil {
		client.Credential = func(ctx context.Context, hostport string) (auth.Credential, error) {
			user, password, err := cred(ctx, hostport)
			return auth.Credential{Username: user, Password: password}, err
		}
	}
	return &remote.Repository{
		Client:             client,
		Reference:          ref,
		PlainHTTP:          s.OCI.PlainHTTP || loopback(ref.Registry),
		ManifestMediaTypes: []string{ocispec.MediaTypeImageManifest},
		MaxMetadataBytes:   MaxOCIManifestSize,
	}
}

// fetchOCI reads the artifact an oci:// URL names (see OCIScheme) and
// checks its payload against pin. It resolves the OCI manifest by digest
// and refuses one larger than MaxOCIManifestSize, of another media type,
// whose bytes have another digest or whose layout is not the one
// documented at the OCI constants. A payload layer whose digest is not pin
// is an *artifact.VerifyError of artifact.CheckDigest and is never
// downloaded. Each layer is refused before it is read when it declares
// more than its bound (maxSize for the payload, artifact.MaxManifestSize
// for the signed manifest), and while it is read when the registry serves
// more or other bytes than it declares.
func (s Source) fetchOCI(ctx context.Context, url string, pin artifact.Digest, maxSize int64) (Fetched, error) {
	ref, err := parseOCIURL(url, true)
	if err != nil {
		return Fetched{}, fmt.Errorf("%w %s: %w", ErrFetch, url, err)
	}
	repo := s.repository(ref)
	layout, err := ociManifest(ctx, repo, ref, maxSize)
	if err != nil {
		return Fetched{}, fmt.Errorf("%w %s: %w", ErrFetch, url, err)
	}
	if got := layout.payload.Digest.Encoded(); got != pin.Hex() {
		return Fetched{}, &artifact.VerifyError{Artifact: url, Check: artifact.CheckDigest,
			Err: fmt.Errorf("the registry's artifact has payload %s, the pin in etcd is %s", layout.payload.Digest, pin)}
	}
	payload, got, err := readBlob(ctx, repo.Blobs(), layout.payload)
	if err != nil {
		return Fetched{}, fmt.Errorf("%w %s: payload: %w", ErrFetch, url, err)
	}
	if got != pin {
		return Fetched{}, pinMismatch(url, got, pin)
	}
	f := Fetched{Payload: payload}
	if layout.manifest != nil {
		raw, got, err := readBlob(ctx, repo.Blobs(), *layout.manifest)
		if err != nil {
			return Fetched{}, fmt.Errorf("%w %s: signed manifest: %w", ErrFetch, url, err)
		}
		if got.String() != layout.manifest.Digest.String() {
			return Fetched{}, fmt.Errorf("%w %s: signed manifest: served bytes of %s, not %s", ErrFetch, url, got, layout.manifest.Digest)
		}
		f.Manifest = raw
	}
	return f, nil
}

// ResolveOCI reads what the artifact an oci:// URL names would pin: the
// payload's digest and, when it is signed, its manifest's version. Nothing
// is verified here (an instance verifies the signature); the payload is
// not downloaded.
func (s Source) ResolveOCI(ctx context.Context, url string) (ModuleSpec, error) {
	ref, err := parseOCIURL(url, true)
	if err != nil {
		return ModuleSpec{}, fmt.Errorf("%w %s: %w", ErrFetch, url, err)
	}
	repo := s.repository(ref)
	layout, err := ociManifest(ctx, repo, ref, 1<<62)
	if err != nil {
		return ModuleSpec{}, fmt.Errorf("%w %s: %w", ErrFetch, url, err)
	}
	m := ModuleSpec{URL: url, Digest: layout.payload.Digest.String()}
	if layout.manifest != nil {
		raw, got, err := readBlob(ctx, repo.Blobs(), *layout.manifest)
		if err != nil {
			return ModuleSpec{}, fmt.Errorf("%w %s: signed manifest: %w", ErrFetch, url, err)
		}
		if got.String() != layout.manifest.Digest.String() {
			return ModuleSpec{}, fmt.Errorf("%w %s: signed manifest: served bytes of %s, not %s", ErrFetch, url, got, layout.manifest.Digest)
		}
		sm, err := artifact.ParseManifest(raw)
		if err != nil {
			return ModuleSpec{}, fmt.Errorf("%w %s: signed manifest: %w", ErrFetch, url, err)
		}
		m.Version = sm.Manifest.Version
	}
	return m, nil
}

// ociManifest fetches and validates the OCI manifest ref names.
func ociManifest(ctx context.Context, repo *remote.Repository, ref registry.Reference, maxSize int64) (ociLayout, error) {
	want := digest.Digest(ref.Reference)
	desc, err := repo.Resolve(ctx, ref.Reference)
	if err != nil {
		return ociLayout{}, fmt.Errorf("resolve: %w", err)
	}
	switch {
	case desc.Digest != want:
		return ociLayout{}, fmt.Errorf("the registry resolved %s to %s", want, desc.Digest)
	case desc.MediaType != ocispec.MediaTypeImageManifest:
		return ociLayout{}, fmt.Errorf("manifest of media type %q, want %q", desc.MediaType, ocispec.MediaTypeImageManifest)
	case desc.Size <= 0 || desc.Size > MaxOCIManifestSize:
		return ociLayout{}, fmt.Errorf("manifest of %d bytes; want 1 to %d", desc.Size, MaxOCIManifestSize)
	}
	raw, got, err := readBlob(ctx, repo.Manifests(), desc)
	if err != nil {
		return ociLayout{}, fmt.Errorf("manifest: %w", err)
	}
	if got.String() != want.String() {
		return ociLayout{}, fmt.Errorf("manifest: served bytes of %s, not %s", got, want)
	}
	return parseOCIManifest(raw, maxSize)
}

// parseOCIManifest decodes and checks an OCI manifest against the layout
// of a hotswap artifact, with payload layers up to maxSize bytes.
func parseOCIManifest(raw []byte, maxSize int64) (ociLayout, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return ociLayout{}, fmt.Errorf("decode manifest: %w", err)
	}
	switch {
	case m.SchemaVersion != 2:
		return ociLayout{}, fmt.Errorf("manifest schemaVersion %d, want 2", m.SchemaVersion)
	case m.MediaType != ocispec.MediaTypeImageManifest:
		return ociLayout{}, fmt.Errorf("manifest mediaType %q, want %q", m.MediaType, ocispec.MediaTypeImageManifest)
	case m.ArtifactType != OCIArtifactType:
		return ociLayout{}, fmt.Errorf("artifactType %q, want %q: not a hotswap artifact", m.ArtifactType, OCIArtifactType)
	case m.Subject != nil:
		return ociLayout{}, errors.New("manifest has a subject; a hotswap artifact has none")
	case m.Config.MediaType != ocispec.MediaTypeEmptyJSON || m.Config.Digest != ocispec.DescriptorEmptyJSON.Digest ||
		m.Config.Size != ocispec.DescriptorEmptyJSON.Size:
		return ociLayout{}, fmt.Errorf("config %s of media type %q, want the empty config", m.Config.Digest, m.Config.MediaType)
	case len(m.Layers) != 1 && len(m.Layers) != 2:
		return ociLayout{}, fmt.Errorf("%d layers, want the payload and at most its signed manifest", len(m.Layers))
	}
	bounds := []struct {
		mediaType string
		max       int64
	}{{OCIPayloadMediaType, maxSize}, {OCIManifestMediaType, artifact.MaxManifestSize}}
	for i, l := range m.Layers {
		switch {
		case l.MediaType != bounds[i].mediaType:
			return ociLayout{}, fmt.Errorf("layer %d of media type %q, want %q", i, l.MediaType, bounds[i].mediaType)
		case l.Digest.Validate() != nil || l.Digest.Algorithm() != digest.SHA256:
			return ociLayout{}, fmt.Errorf("layer %d digest %q is not sha256:<hex>", i, l.Digest)
		case l.Size <= 0 || l.Size > bounds[i].max:
			return ociLayout{}, fmt.Errorf("layer %d declares %d bytes; want 1 to %d", i, l.Size, bounds[i].max)
		case len(l.URLs) > 0 || len(l.Data) > 0:
			return ociLayout{}, fmt.Errorf("layer %d names foreign URLs or inline data", i)
		}
	}
	layout := ociLayout{payload: m.Layers[0]}
	if len(m.Layers) == 2 {
		layout.manifest = &m.Layers[1]
	}
	return layout, nil
}

// readBlob reads what desc names from f, refusing more or fewer bytes than
// desc.Size, and returns it with its sha256: the caller compares.
func readBlob(ctx context.Context, f content.Fetcher, desc ocispec.Descriptor) ([]byte, artifact.Digest, error) {
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, artifact.Digest{}, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	buf.Grow(int(desc.Size) + 1)
	if _, err := buf.ReadFrom(io.LimitReader(rc, desc.Size+1)); err != nil {
		return nil, artifact.Digest{}, fmt.Errorf("read %s: %w", desc.Digest, err)
	}
	if n := int64(buf.Len()); n != desc.Size {
		what := fmt.Sprintf("%d bytes", n)
		if n > desc.Size {
			what = "more bytes"
		}
		return nil, artifact.Digest{}, fmt.Errorf("%s: served %s, the manifest declares %d", desc.Digest, what, desc.Size)
	}
	return buf.Bytes(), artifact.DigestOf(buf.Bytes()), nil
}

// PushOCI pushes the artifact at path (its payload, and the signed
// manifest at path+".manifest" unless it has none and allowUnsigned says
// that is fine) to the repository ref, oci://HOST[:PORT]/REPO[:TAG], in
// the layout documented at the OCI constants, and returns the spec to pin:
// its URL names the OCI manifest by digest, its Digest is the payload's,
// its Version the signed manifest's. A manifest that names another payload
// is refused. The signature is not checked: the instances do.
func (s Source) PushOCI(ctx context.Context, path, ref string, allowUnsigned bool) (ModuleSpec, error) {
	r, err := parseOCIURL(ref, false)
	if err != nil {
		return ModuleSpec{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return ModuleSpec{}, fmt.Errorf("push %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return ModuleSpec{}, fmt.Errorf("push %s: read payload: %w", path, err)
	}
	payload := ocispec.Descriptor{MediaType: OCIPayloadMediaType, Digest: digest.NewDigest(digest.SHA256, h), Size: n}
	if payload.Size == 0 {
		return ModuleSpec{}, fmt.Errorf("push %s: empty payload", path)
	}
	pin, err := artifact.ParseDigest(payload.Digest.Encoded())
	if err != nil {
		return ModuleSpec{}, fmt.Errorf("push %s: %w", path, err)
	}
	spec := ModuleSpec{Digest: pin.String()}
	raw, err := readManifestFile(artifact.ManifestPath(path))
	switch {
	case errors.Is(err, fs.ErrNotExist) && allowUnsigned:
	case err != nil:
		return ModuleSpec{}, fmt.Errorf("push %s: %w", path, err)
	default:
		sm, err := artifact.ParseManifest(raw)
		if err != nil {
			return ModuleSpec{}, fmt.Errorf("push %s: %w", path, err)
		}
		if sm.Manifest.Digest != pin || sm.Manifest.Size != payload.Size {
			return ModuleSpec{}, fmt.Errorf("push %s: its manifest names payload %s of %d bytes, the file is %s of %d bytes",
				path, sm.Manifest.Digest, sm.Manifest.Size, pin, payload.Size)
		}
		spec.Version = sm.Manifest.Version
	}
	repo := s.repository(r)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return ModuleSpec{}, fmt.Errorf("push %s: %w", path, err)
	}
	layers := []ocispec.Descriptor{payload}
	blobs := []io.Reader{f}
	if raw != nil {
		layers = append(layers, content.NewDescriptorFromBytes(OCIManifestMediaType, raw))
		blobs = append(blobs, bytes.NewReader(raw))
	}
	layers = append(layers, ocispec.DescriptorEmptyJSON)
	blobs = append(blobs, bytes.NewReader(ocispec.DescriptorEmptyJSON.Data))
	for i, desc := range layers {
		if err := pushBlob(ctx, repo, desc, blobs[i]); err != nil {
			return ModuleSpec{}, fmt.Errorf("push %s to %s: %w", path, ref, err)
		}
	}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: OCIArtifactType,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: ocispec.DescriptorEmptyJSON.Size},
		Layers:       layers[:len(layers)-1],
	})
	if err != nil {
		return ModuleSpec{}, err
	}
	desc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, manifest)
	if r.Reference != "" {
		err = repo.PushReference(ctx, desc, bytes.NewReader(manifest), r.Reference)
	} else {
		err = repo.Push(ctx, desc, bytes.NewReader(manifest))
	}
	if err != nil {
		return ModuleSpec{}, fmt.Errorf("push %s to %s: manifest: %w", path, ref, err)
	}
	spec.URL = OCIScheme + r.Registry + "/" + r.Repository + "@" + desc.Digest.String()
	return spec, nil
}

// pushBlob pushes a blob the repository does not have yet.
func pushBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, r io.Reader) error {
	ok, err := repo.Blobs().Exists(ctx, desc)
	if err != nil || ok {
		return err
	}
	// Without the empty config's inline data in its descriptor.
	desc.Data = nil
	return repo.Blobs().Push(ctx, desc, r)
}

// readManifestFile reads a signed manifest file, at most
// artifact.MaxManifestSize bytes.
func readManifestFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, artifact.MaxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > artifact.MaxManifestSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, artifact.MaxManifestSize)
	}
	return b, nil
}
