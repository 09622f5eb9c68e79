package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/hotswapgo/hotswap/artifact"
)

// ErrFetch: an artifact could not be fetched; what served keeps serving.
var ErrFetch = errors.New("fetch artifact")

// Fetched is an artifact as fetched, not yet verified.
type Fetched struct {
	// Payload's digest equals the pin: Fetch checked it.
	Payload []byte
	// Manifest is nil when the source has none (an unsigned artifact,
	// which only a development host accepts).
	Manifest []byte
}

// Source reaches where artifacts are: files, http(s) servers and OCI
// registries. The zero value reads file URLs, http(s) URLs with
// http.DefaultClient, and OCI registries anonymously over HTTPS (plain
// HTTP to a loopback registry only). A Source is safe for concurrent use
// when its HTTPClient and OCI.Credential are.
type Source struct {
	// HTTPClient makes the requests of http(s) URLs and of OCI registries:
	// its Transport holds the TLS settings (a private CA, a client
	// certificate). Defaults to http.DefaultClient.
	HTTPClient *http.Client
	// OCI says how to reach OCI registries. Its zero value is the secure
	// default (see OCIOptions).
	OCI OCIOptions
}

// Fetch reads the artifact of m with a zero Source but for client: see
// Source.Fetch.
func Fetch(ctx context.Context, client *http.Client, m ModuleSpec, maxSize int64) (Fetched, error) {
	return Source{HTTPClient: client}.Fetch(ctx, m, maxSize)
}

// Fetch reads the artifact of m, reading no more than maxSize payload
// bytes and artifact.MaxManifestSize manifest bytes, and checks the
// payload's digest against m.Digest: a mismatch is an
// *artifact.VerifyError of artifact.CheckDigest, whatever the manifest
// says. A file or http(s) URL names the payload and its manifest is at
// URL+".manifest"; an oci:// URL names an OCI manifest in a registry that
// holds both (see FetchOCI). Fetch does not verify the manifest: that is
// the host's trust path. Any other failure matches ErrFetch. Cancelling
// ctx aborts the fetch.
func (s Source) Fetch(ctx context.Context, m ModuleSpec, maxSize int64) (Fetched, error) {
	pin, err := parseDigest(m.Digest)
	if err != nil {
		return Fetched{}, err
	}
	if strings.HasPrefix(m.URL, OCIScheme) {
		return s.fetchOCI(ctx, m.URL, pin, maxSize)
	}
	client := s.HTTPClient
	payload, err := get(ctx, client, m.URL, maxSize)
	if err != nil {
		return Fetched{}, err
	}
	if got := artifact.DigestOf(payload); got != pin {
		return Fetched{}, pinMismatch(m.URL, got, pin)
	}
	manifest, err := get(ctx, client, m.URL+".manifest", artifact.MaxManifestSize)
	if errors.Is(err, fs.ErrNotExist) {
		manifest, err = nil, nil
	}
	if err != nil {
		return Fetched{}, err
	}
	return Fetched{Payload: payload, Manifest: manifest}, nil
}

// pinMismatch is the refusal of a payload whose digest got is not the pin.
func pinMismatch(url string, got, pin artifact.Digest) error {
	return &artifact.VerifyError{Artifact: url, Check: artifact.CheckDigest,
		Err: fmt.Errorf("payload is %s, the pin in etcd is %s", got, pin)}
}

// get reads rawURL, at most limit bytes; a missing resource matches
// fs.ErrNotExist.
func get(ctx context.Context, client *http.Client, rawURL string, limit int64) ([]byte, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrFetch, rawURL, err)
	}
	var r io.ReadCloser
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("%w %s: a file URL names no host", ErrFetch, rawURL)
		}
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %w", ErrFetch, rawURL, err)
		}
		r = f
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrFetch, rawURL, err)
		}
		if client == nil {
			client = http.DefaultClient
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%w %s: %w", ErrFetch, rawURL, err)
		}
		if resp.StatusCode == http.StatusNotFound {
			resp.Body.Close()
			return nil, fmt.Errorf("%w %s: %w", ErrFetch, rawURL, fs.ErrNotExist)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("%w %s: HTTP %s", ErrFetch, rawURL, resp.Status)
		}
		r = resp.Body
	default:
		return nil, fmt.Errorf("%w %s: scheme %q is not file, http, https or oci", ErrFetch, rawURL, u.Scheme)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrFetch, rawURL, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w %s: larger than %d bytes", ErrFetch, rawURL, limit)
	}
	if strings.HasSuffix(rawURL, ".manifest") && len(b) == 0 {
		return nil, fmt.Errorf("%w %s: empty manifest", ErrFetch, rawURL)
	}
	return b, nil
}
