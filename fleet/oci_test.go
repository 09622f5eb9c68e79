package fleet_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/internal/testregistry"
)

// recorder is an http.RoundTripper that records the requests it passes on.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex // protects reqs
	reqs []string   // "METHOD scheme://host/path"
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.String())
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

// fetched reports whether a GET of a blob with digest d passed.
func (r *recorder) fetched(d string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.reqs, func(s string) bool { return strings.HasPrefix(s, "GET ") && strings.HasSuffix(s, "/blobs/"+d) })
}

// ociEnv is a registry and a source that records its requests.
type ociEnv struct {
	t   *testing.T
	reg *testregistry.Registry
	rec *recorder
	src fleet.Source
	dir string
}

func newOCIEnv(t *testing.T) *ociEnv {
	t.Helper()
	reg := testregistry.Start(t, testregistry.Options{})
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rec := &recorder{next: tr}
	return &ociEnv{t: t, reg: reg, rec: rec, src: fleet.Source{HTTPClient: &http.Client{Transport: rec}}, dir: t.TempDir()}
}

// file writes payload as name, signed as version unless version is "".
func (e *ociEnv) file(name string, payload []byte, version string) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, payload, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if version != "" {
		m := artifact.Manifest{Name: "pricing", Kind: artifact.KindWasm, Version: version}
		if _, err := testhost.Signer(e.t, testhost.TrustedSeed).SignFile(context.Background(), p, m); err != nil {
			e.t.Fatal(err)
		}
	}
	return p
}

func (e *ociEnv) push(path, repo string, allowUnsigned bool) fleet.ModuleSpec {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := e.src.PushOCI(ctx, path, "oci://"+e.reg.Host+"/"+repo, allowUnsigned)
	if err != nil {
		e.t.Fatalf("PushOCI(%s) = %v", path, err)
	}
	return m
}

func (e *ociEnv) fetch(m fleet.ModuleSpec, maxSize int64) (fleet.Fetched, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.src.Fetch(ctx, m, maxSize)
}

// pushManifest pushes raw as an OCI manifest to repo and returns its URL.
func (e *ociEnv) pushManifest(repo, mediaType string, raw []byte) string {
	e.t.Helper()
	r, err := remote.NewRepository(e.reg.Host + "/" + repo)
	if err != nil {
		e.t.Fatal(err)
	}
	r.PlainHTTP = true
	r.ManifestMediaTypes = []string{mediaType}
	desc := content.NewDescriptorFromBytes(mediaType, raw)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Push(ctx, desc, bytes.NewReader(raw)); err != nil {
		e.t.Fatalf("push manifest %s: %v", raw, err)
	}
	return "oci://" + e.reg.Host + "/" + repo + "@" + desc.Digest.String()
}

func TestOCIPushFetch(t *testing.T) {
	e := newOCIEnv(t)
	payload := bytes.Repeat([]byte("wasm"), 1000)
	path := e.file("pricing.wasm", payload, "v1")
	m := e.push(path, "team/pricing:v1", false)
	if want := artifact.DigestOf(payload).String(); m.Digest != want || m.Version != "v1" {
		t.Fatalf("PushOCI() = digest %s version %q; want %s v1", m.Digest, m.Version, want)
	}
	if !strings.HasPrefix(m.URL, "oci://"+e.reg.Host+"/team/pricing@sha256:") {
		t.Fatalf("PushOCI() URL = %q; want oci://%s/team/pricing@sha256:...", m.URL, e.reg.Host)
	}
	if err := (fleet.Spec{Modules: map[string]fleet.ModuleSpec{"pricing": m}}).Validate(); err != nil {
		t.Errorf("Validate(pushed spec) = %v; want nil", err)
	}
	f, err := e.fetch(m, 1<<20)
	if err != nil {
		t.Fatalf("Fetch(%s) = %v", m.URL, err)
	}
	if !bytes.Equal(f.Payload, payload) {
		t.Errorf("Fetch() payload of %d bytes differs from the %d pushed", len(f.Payload), len(payload))
	}
	want, _ := os.ReadFile(artifact.ManifestPath(path))
	if !bytes.Equal(f.Manifest, want) {
		t.Errorf("Fetch() manifest = %q; want %q", f.Manifest, want)
	}
	for _, r := range e.rec.reqs {
		if !strings.Contains(r, " http://"+e.reg.Host+"/") {
			t.Errorf("request %q; want plain HTTP to the loopback registry only", r)
		}
	}

	// The same artifact pushed again names the same manifest: push is
	// deterministic, and the tag moves nothing.
	if again := e.push(path, "team/pricing", false); again != m {
		t.Errorf("second PushOCI() = %+v; want %+v", again, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if r, err := e.src.ResolveOCI(ctx, m.URL); err != nil || r != m {
		t.Errorf("ResolveOCI() = %+v, %v; want %+v", r, err, m)
	}

	// Unsigned: pushed only when asked, fetched with no manifest.
	unsigned := e.file("bare.wasm", []byte("bare payload"), "")
	if _, err := e.src.PushOCI(ctx, unsigned, "oci://"+e.reg.Host+"/bare", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("PushOCI(unsigned, allowUnsigned=false) = %v; want fs.ErrNotExist", err)
	}
	um := e.push(unsigned, "bare", true)
	if um.Version != "" {
		t.Errorf("PushOCI(unsigned) version = %q; want none", um.Version)
	}
	f, err = e.fetch(um, 1<<20)
	if err != nil || string(f.Payload) != "bare payload" || f.Manifest != nil {
		t.Errorf("Fetch(unsigned) = %q, manifest %q, %v; want the payload, no manifest", f.Payload, f.Manifest, err)
	}

	// A manifest beside another payload is not pushed.
	other := e.file("other.wasm", []byte("other payload"), "")
	os.WriteFile(artifact.ManifestPath(other), want, 0o644)
	if _, err := e.src.PushOCI(ctx, other, "oci://"+e.reg.Host+"/other", false); err == nil || !strings.Contains(err.Error(), "names payload") {
		t.Errorf("PushOCI(payload with another's manifest) = %v; want refused", err)
	}
}

func TestOCIRefusals(t *testing.T) {
	e := newOCIEnv(t)
	payload := bytes.Repeat([]byte("v1 payload "), 100)
	m := e.push(e.file("v1.wasm", payload, "v1"), "pricing", false)
	other := artifact.DigestOf([]byte("v2 payload")).String()

	t.Run("pin mismatch", func(t *testing.T) {
		bad := m
		bad.Digest = other
		_, err := e.fetch(bad, 1<<20)
		var ve *artifact.VerifyError
		if !errors.As(err, &ve) || ve.Check != artifact.CheckDigest || !errors.Is(err, artifact.ErrDigestMismatch) {
			t.Fatalf("Fetch(pin %s) = %v; want a VerifyError of check digest", other, err)
		}
		if e.rec.fetched(m.Digest) {
			t.Errorf("Fetch(pin mismatch) downloaded the payload; want it refused from the manifest")
		}
	})
	t.Run("declared larger than maxSize", func(t *testing.T) {
		_, err := e.fetch(m, int64(len(payload))-1)
		if !errors.Is(err, fleet.ErrFetch) || !strings.Contains(err.Error(), "declares") {
			t.Fatalf("Fetch(maxSize %d) = %v; want ErrFetch naming the declared size", len(payload)-1, err)
		}
		if e.rec.fetched(m.Digest) {
			t.Errorf("Fetch(oversized) downloaded the payload; want it refused before")
		}
	})
	t.Run("not in the registry", func(t *testing.T) {
		missing := m
		missing.URL = "oci://" + e.reg.Host + "/pricing@" + other
		if _, err := e.fetch(missing, 1<<20); !errors.Is(err, fleet.ErrFetch) {
			t.Fatalf("Fetch(unknown manifest) = %v; want ErrFetch", err)
		}
	})
	t.Run("bad URL", func(t *testing.T) {
		for _, u := range []string{"oci://" + e.reg.Host + "/pricing:v1", "oci://" + e.reg.Host + "/pricing", "oci://pricing@" + other} {
			bad := m
			bad.URL = u
			if _, err := e.fetch(bad, 1<<20); !errors.Is(err, fleet.ErrFetch) || !errors.Is(err, fleet.ErrInvalid) {
				t.Errorf("Fetch(%s) = %v; want ErrFetch and ErrInvalid", u, err)
			}
			if err := (fleet.Spec{Modules: map[string]fleet.ModuleSpec{"pricing": bad}}).Validate(); !errors.Is(err, fleet.ErrInvalid) {
				t.Errorf("Validate(%s) = %v; want ErrInvalid", u, err)
			}
		}
	})
}

// TestOCITampered edits blobs in the registry's storage: the registry
// serves what is on disk without checking it.
func TestOCITampered(t *testing.T) {
	e := newOCIEnv(t)
	payload := bytes.Repeat([]byte("v1 payload "), 100)
	path := e.file("v1.wasm", payload, "v1")
	m := e.push(path, "pricing", false)
	raw, _ := os.ReadFile(artifact.ManifestPath(path))
	blob := e.reg.BlobPath(m.Digest)

	flipped := bytes.Clone(payload)
	flipped[10] ^= 1
	if err := os.WriteFile(blob, flipped, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.fetch(m, 1<<20)
	var ve *artifact.VerifyError
	if !errors.As(err, &ve) || ve.Check != artifact.CheckDigest {
		t.Errorf("Fetch(payload flipped on disk) = %v; want a VerifyError of check digest", err)
	}

	if err := os.WriteFile(blob, append(bytes.Clone(payload), make([]byte, 1<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.fetch(m, 1<<20); !errors.Is(err, fleet.ErrFetch) {
		t.Errorf("Fetch(payload grown on disk) = %v; want ErrFetch", err)
	}

	os.WriteFile(blob, payload, 0o644)
	if _, err := e.fetch(m, 1<<20); err != nil {
		t.Fatalf("Fetch(restored) = %v; want the artifact", err)
	}
	mblob := e.reg.BlobPath(artifact.DigestOf(raw).String())
	tampered := bytes.Replace(raw, []byte(`"v1"`), []byte(`"v9"`), 1)
	if err := os.WriteFile(mblob, tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.fetch(m, 1<<20); !errors.Is(err, fleet.ErrFetch) || !strings.Contains(err.Error(), "signed manifest") {
		t.Errorf("Fetch(signed manifest edited on disk) = %v; want ErrFetch naming the signed manifest", err)
	}
}

const (
	dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	dockerConfig   = "application/vnd.docker.container.image.v1+json"
)

// TestOCIBadLayouts pushes OCI manifests that are not a hotswap artifact's
// layout over real blobs; each is refused.
func TestOCIBadLayouts(t *testing.T) {
	e := newOCIEnv(t)
	payload := bytes.Repeat([]byte("v1 payload "), 100)
	path := e.file("v1.wasm", payload, "v1")
	m := e.push(path, "pricing", false)
	raw, _ := os.ReadFile(artifact.ManifestPath(path))
	pl := content.NewDescriptorFromBytes(fleet.OCIPayloadMediaType, payload)
	sm := content.NewDescriptorFromBytes(fleet.OCIManifestMediaType, raw)
	config := ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: 2}
	good := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: fleet.OCIArtifactType, Config: config, Layers: []ocispec.Descriptor{pl, sm}}

	for _, tc := range []struct {
		name string
		edit func(*ocispec.Manifest)
		want string
	}{
		{"as pushed", func(*ocispec.Manifest) {}, ""},
		{"docker manifest", func(o *ocispec.Manifest) { o.MediaType = dockerManifest; o.Config.MediaType = dockerConfig }, "media type"},
		{"extra layer", func(o *ocispec.Manifest) { o.Layers = append(o.Layers, sm) }, "3 layers"},
		{"no layer", func(o *ocispec.Manifest) { o.Layers = nil }, "0 layers"},
		{"layers swapped", func(o *ocispec.Manifest) { o.Layers = []ocispec.Descriptor{sm, pl} }, "layer 0 of media type"},
		{"payload media type", func(o *ocispec.Manifest) { o.Layers[0].MediaType = ocispec.MediaTypeImageLayer }, "layer 0 of media type"},
		{"artifact type", func(o *ocispec.Manifest) { o.ArtifactType = "application/vnd.example" }, "not a hotswap artifact"},
		{"config", func(o *ocispec.Manifest) { o.Config = sm }, "want the empty config"},
		{"size understated", func(o *ocispec.Manifest) { o.Layers[0].Size = 10 }, "payload"},
		{"size overstated", func(o *ocispec.Manifest) { o.Layers[0].Size = 1 << 30 }, "declares"},
		{"foreign URL", func(o *ocispec.Manifest) { o.Layers[1].URLs = []string{"https://example.com/x"} }, "foreign"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			o.Layers = slices.Clone(good.Layers)
			tc.edit(&o)
			b, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			bad := m
			bad.URL = e.pushManifest("pricing", cmp.Or(o.MediaType, ocispec.MediaTypeImageManifest), b)
			_, err = e.fetch(bad, 1<<20)
			t.Logf("Fetch() = %v", err)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Fetch() = %v; want the artifact", err)
			case tc.want != "" && (!errors.Is(err, fleet.ErrFetch) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), bad.URL)):
				t.Errorf("Fetch() = %v; want ErrFetch naming the URL and %q", err, tc.want)
			}
		})
	}
}

// TestOCIPlainHTTPRule: a registry off loopback is reached over HTTPS
// unless PlainHTTP says otherwise; credentials go to the registry asked.
func TestOCIPlainHTTPRule(t *testing.T) {
	pin := artifact.DigestOf([]byte("x")).String()
	for _, tc := range []struct {
		host   string
		plain  bool
		scheme string
	}{
		{"registry.example:5000", false, "https"},
		{"registry.example:5000", true, "http"},
		{"192.0.2.1", false, "https"},
		{"localhost:5000", false, "http"},
		{"[::1]:5000", false, "http"},
	} {
		var got []string
		client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			got = append(got, r.URL.Scheme+"://"+r.URL.Host)
			return nil, errors.New("no network in this test")
		})}
		src := fleet.Source{HTTPClient: client, OCI: fleet.OCIOptions{PlainHTTP: tc.plain}}
		m := fleet.ModuleSpec{Digest: pin, URL: "oci://" + tc.host + "/pricing@" + pin}
		_, err := src.Fetch(context.Background(), m, 1<<20)
		if !errors.Is(err, fleet.ErrFetch) {
			t.Errorf("Fetch(%s) = %v; want ErrFetch", m.URL, err)
		}
		if len(got) == 0 || got[0] != tc.scheme+"://"+tc.host {
			t.Errorf("Fetch(%s, PlainHTTP %v) asked %v; want %s://%s", m.URL, tc.plain, got, tc.scheme, tc.host)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOCIRollout rolls a version out of a real registry to an instance,
// then refuses one whose pin is not the registry's payload.
func TestOCIRollout(t *testing.T) {
	e := newEnv(t, 0)
	o := newOCIEnv(t)
	v1 := e.artifact(gV1, "v1", false)
	v2 := e.artifact(gV2, "v2", false)
	ov1 := o.push(strings.TrimPrefix(v1.URL, "file://"), "pricing:v1", false)
	ov2 := o.push(strings.TrimPrefix(v2.URL, "file://"), "pricing:v2", false)
	if ov1.Digest != v1.Digest || ov1.Version != "v1" {
		t.Fatalf("PushOCI(v1) = %+v; want digest %s version v1", ov1, v1.Digest)
	}
	in := e.startInstance("a", nil, nil, func(opts *fleet.AgentOptions) { opts.HTTPClient = o.src.HTTPClient })
	e.until("registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	e.controller("c1", e.cli)

	rev := e.set(fleet.Desired{Spec: spec(ov1)})
	e.until("v1 done", phase(rev, fleet.Done))
	if got := in.serves(); got != hexOf(v1) {
		t.Fatalf("instance serves %q; want v1 %s from %s", got, hexOf(v1), ov1.URL)
	}
	if v := in.quote(t); v != "v1" {
		t.Errorf("quote answered by %q; want v1", v)
	}
	if !o.rec.fetched(ov1.Digest) {
		t.Errorf("the agent did not fetch the payload from the registry; requests %v", o.rec.reqs)
	}

	// v2's artifact under a pin it does not have (not v1's: an instance
	// keeps the version it serves without a fetch).
	mismatched := ov2
	mismatched.Digest = artifact.DigestOf([]byte("not in the registry")).String()
	mismatched.Version = "v2-pin"
	rev = e.set(fleet.Desired{Spec: spec(mismatched)})
	st := e.until("halted", phase(rev, fleet.Halted))
	if !strings.Contains(st.Rollout.Reason, "check digest") {
		t.Errorf("halt reason = %q; want check digest", st.Rollout.Reason)
	}
	ap, ch := in.agent.Applied()
	for ap.Spec != spec(ov1).ID() { // the revert
		select {
		case <-ch:
		case <-time.After(wait):
			t.Fatalf("agent did not report v1 again after the halt; last %+v", ap)
		}
		ap, ch = in.agent.Applied()
	}
	if got := in.serves(); got != hexOf(v1) {
		t.Errorf("instance serves %s after the refusal; want v1 %s", got, hexOf(v1))
	}
	for _, s := range in.host.Status() {
		for _, v := range s.Versions() {
			if v.Digest == hexOf(v2) {
				t.Errorf("version %s %s was loaded; want it refused before", v.Version, v.Digest)
			}
		}
	}
	if o.rec.fetched(ov2.Digest) {
		t.Errorf("the agent downloaded v2's payload; want it refused from the OCI manifest")
	}
}

// TestOCICredentials pushes to and fetches from a registry that asks for
// basic authentication: without credentials both are refused.
func TestOCICredentials(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{User: "ci", Password: "s3cret"})
	e := newOCIEnv(t)
	e.reg = reg
	path := e.file("pricing.wasm", []byte("authenticated payload"), "v1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.src.PushOCI(ctx, path, "oci://"+reg.Host+"/pricing", false); err == nil || !strings.Contains(err.Error(), "credential") {
		t.Fatalf("PushOCI(no credentials) = %v; want refused for want of a credential", err)
	}
	var asked []string
	e.src.OCI.Credential = func(_ context.Context, registry string) (string, string, error) {
		asked = append(asked, registry)
		return "ci", "s3cret", nil
	}
	m := e.push(path, "pricing", false)
	if f, err := e.fetch(m, 1<<20); err != nil || string(f.Payload) != "authenticated payload" {
		t.Fatalf("Fetch(with credentials) = %q, %v; want the payload", f.Payload, err)
	}
	if len(asked) == 0 || asked[0] != reg.Host {
		t.Errorf("Credential asked for %v; want %s", asked, reg.Host)
	}
	e.src.OCI.Credential = nil
	if _, err := e.fetch(m, 1<<20); !errors.Is(err, fleet.ErrFetch) || !strings.Contains(err.Error(), "credential") {
		t.Errorf("Fetch(no credentials) = %v; want ErrFetch for want of a credential", err)
	}
}

// fakeRegistry serves one hotswap OCI manifest whose payload layer
// declares size bytes, and answers the payload's GET with blob.
func fakeRegistry(t *testing.T, size int64, blob http.HandlerFunc) fleet.ModuleSpec {
	t.Helper()
	pin := artifact.DigestOf([]byte("the payload"))
	layer := ocispec.Descriptor{MediaType: fleet.OCIPayloadMediaType, Digest: digest.Digest(pin.String()), Size: size}
	raw, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: fleet.OCIArtifactType, Layers: []ocispec.Descriptor{layer},
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: ocispec.DescriptorEmptyJSON.Digest, Size: 2}})
	md := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, raw)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/pricing/manifests/" + md.Digest.String():
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", md.Digest.String())
			w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
			if r.Method == http.MethodGet {
				w.Write(raw)
			}
		case "/v2/pricing/blobs/" + layer.Digest.String():
			blob(w, r)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return fleet.ModuleSpec{Digest: pin.String(), URL: "oci://" + strings.TrimPrefix(srv.URL, "http://") + "/pricing@" + md.Digest.String()}
}

// TestOCIServedBounds: a registry that serves an endless payload (with no
// Content-Length) is cut off after the declared size; one that stalls is
// abandoned when ctx ends.
func TestOCIServedBounds(t *testing.T) {
	m := fakeRegistry(t, 1000, func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 4096)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	_, err := fleet.Source{}.Fetch(context.Background(), m, 1<<20)
	if !errors.Is(err, fleet.ErrFetch) || !strings.Contains(err.Error(), "served more bytes") {
		t.Errorf("Fetch(endless payload) = %v; want ErrFetch, served more bytes", err)
	}

	stalled := make(chan struct{})
	m = fakeRegistry(t, 1000, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("x"))
		w.(http.Flusher).Flush()
		close(stalled)
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := fleet.Source{}.Fetch(ctx, m, 1<<20)
		done <- err
	}()
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the fetch did not reach the payload within 30s")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !errors.Is(err, fleet.ErrFetch) {
			t.Errorf("Fetch(cancelled mid-payload) = %v; want ErrFetch and context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Fetch did not return within 10s of its ctx's cancel")
	}
}
