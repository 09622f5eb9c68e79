package fleet

import (
	"strings"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
)

// FuzzRecords decodes hostile etcd records of every kind and uses them as
// the agent and the controller do: nothing may panic, and a rollout record
// that passes its check yields members within its list.
func FuzzRecords(f *testing.F) {
	f.Add([]byte(`{"spec":{"modules":{"pricing":{"version":"v1","digest":"sha256:` + zeros + `","url":"file:///a"}}},"waves":["1","10%","100%"]}`))
	f.Add([]byte(`{"revision":3,"phase":"running","members":["a","b"],"sizes":[1,2],"wave":1}`))
	f.Add([]byte(`{"revision":3,"phase":"running","members":["a"],"sizes":[5],"wave":-1}`))
	f.Add([]byte(`{"waves":["NaN%","1e400","0"]}`))
	f.Add([]byte(`{"spec":{"modules":{"pricing":{"version":"v1","digest":"sha256:` + zeros + `","url":"file:///a","b":{"version":"v2","digest":"` + zeros[:63] + `1","url":"file:///b","weight":1e308}}}}}`))
	f.Add([]byte(`{"spec":{"binary":{"version":"2","digest":"` + zeros + `","url":"https://x/svc"}}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if d, err := decode[Desired]("desired", raw); err == nil {
			if d.Spec.Validate() == nil {
				_ = d.Spec.ID()
			}
			if sizes, err := waveSizes(d.Waves, 50); err == nil {
				prev := 0
				for _, n := range sizes {
					if n <= prev || n > 50 {
						t.Fatalf("waveSizes(%q, 50) = %v; want growing sizes up to 50", d.Waves, sizes)
					}
					prev = n
				}
				if len(sizes) == 0 || sizes[len(sizes)-1] != 50 {
					t.Fatalf("waveSizes(%q, 50) = %v; want the last wave to cover all 50", d.Waves, sizes)
				}
			}
		}
		if r, err := decode[Rollout]("rollout", raw); err == nil {
			if got := r.Touched(); len(got) > len(r.Members) {
				t.Fatalf("Touched() = %d members of %d", len(got), len(r.Members))
			}
		}
		if a, err := decode[Assignment]("target", raw); err == nil && a.Spec.Validate() == nil {
			for _, m := range a.Spec.Modules {
				if _, err := parseDigest(m.Digest); err != nil {
					t.Fatalf("a valid spec holds digest %q: %v", m.Digest, err)
				}
			}
			if b := a.Spec.Binary; b != nil {
				if _, err := parseDigest(b.Digest); err != nil {
					t.Fatalf("a valid spec holds binary digest %q: %v", b.Digest, err)
				}
			}
		}
		if ap, err := decode[Applied]("applied", raw); err == nil {
			_ = ap.Failure()
		}
	})
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"

// FuzzOCIManifest checks hostile OCI manifests against a hotswap
// artifact's layout: nothing may panic, and one that passes has a sha256
// payload within its bound and at most a bounded signed manifest.
func FuzzOCIManifest(f *testing.F) {
	payload := `{"mediaType":"application/vnd.hotswap.payload.v1","digest":"sha256:` + zeros + `","size":100}`
	signed := `{"mediaType":"application/vnd.hotswap.manifest.v1+json","digest":"sha256:` + zeros + `","size":300}`
	config := `{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}`
	head := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.hotswap.artifact.v1","config":` + config
	f.Add([]byte(head + `,"layers":[` + payload + `,` + signed + `]}`))
	f.Add([]byte(head + `,"layers":[` + payload + `]}`))
	f.Add([]byte(head + `,"layers":[` + signed + `,` + payload + `]}`))
	f.Add([]byte(head + `,"layers":[` + payload + `,` + signed + `,` + signed + `]}`))
	f.Add([]byte(`{"schemaVersion":2,"layers":[{"size":-1,"digest":"sha256:"}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		const maxSize = 1000
		l, err := parseOCIManifest(raw, maxSize)
		if err != nil {
			return
		}
		if l.payload.MediaType != OCIPayloadMediaType || l.payload.Size <= 0 || l.payload.Size > maxSize ||
			l.payload.Digest.Validate() != nil || len(l.payload.Digest.Encoded()) != 64 {
			t.Fatalf("parseOCIManifest(%q) passed a payload layer %+v", raw, l.payload)
		}
		if m := l.manifest; m != nil && (m.MediaType != OCIManifestMediaType || m.Size <= 0 || m.Size > artifact.MaxManifestSize) {
			t.Fatalf("parseOCIManifest(%q) passed a signed manifest layer %+v", raw, *m)
		}
	})
}

// FuzzOCIURL parses hostile oci:// URLs: one that passes names a registry,
// a repository and a sha256 digest, and reads back as itself.
func FuzzOCIURL(f *testing.F) {
	f.Add("oci://127.0.0.1:5000/team/pricing@sha256:" + zeros)
	f.Add("oci://registry.example/pricing:v1@sha256:" + zeros)
	f.Add("oci://[::1]:5000/pricing@sha512:" + zeros + zeros)
	f.Add("oci://r/p:v1")
	f.Fuzz(func(t *testing.T, raw string) {
		for _, pinned := range []bool{true, false} {
			ref, err := parseOCIURL(raw, pinned)
			if err != nil {
				continue
			}
			sep := ":"
			if pinned {
				sep = "@"
				if _, err := artifact.ParseDigest(strings.TrimPrefix(ref.Reference, "sha256:")); err != nil {
					t.Fatalf("parseOCIURL(%q) passed digest %q: %v", raw, ref.Reference, err)
				}
			}
			back := OCIScheme + ref.Registry + "/" + ref.Repository
			if ref.Reference != "" {
				back += sep + ref.Reference
			}
			if back != raw {
				t.Fatalf("parseOCIURL(%q) = %+v, which reads back as %q", raw, ref, back)
			}
		}
	})
}
