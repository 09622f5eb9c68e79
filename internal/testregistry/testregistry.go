// Package testregistry runs a real OCI registry for tests: Debian's
// docker-registry (the CNCF distribution registry), on a loopback port,
// storing into a test's temporary directory, killed when the test ends.
package testregistry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Binary is where Debian's docker-registry package installs the registry.
const Binary = "/usr/bin/docker-registry"

// startTimeout bounds the wait for a started registry to answer /v2/.
const startTimeout = 30 * time.Second

// Registry is a running registry. Its fields are read-only.
type Registry struct {
	// Host is where it listens, "127.0.0.1:PORT": the host part of an
	// oci:// URL.
	Host string
	// Root is its filesystem storage.
	Root string
}

// BlobPath returns the file that holds the blob of digest ("sha256:<hex>")
// in the registry's storage, so a test can tamper with what it serves.
func (r *Registry) BlobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) < 2 {
		return ""
	}
	return filepath.Join(r.Root, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}

// Options configures a registry. The zero value serves anyone.
type Options struct {
	// User and Password, when User is set, are the only credentials the
	// registry accepts (HTTP basic authentication). Defaults to none: no
	// authentication.
	User, Password string
}

// Start runs a registry for t. Without the binary, t fails when
// HOTSWAP_REQUIRE_GUEST_TOOLCHAINS is set (as in CI) and is skipped
// otherwise.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		bin = Binary
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("HOTSWAP_REQUIRE_GUEST_TOOLCHAINS") != "" {
			t.Fatalf("no OCI registry to test against: %v (apt-get install docker-registry)", err)
		}
		t.Skipf("no OCI registry to test against: %v (apt-get install docker-registry; CI requires it)", err)
	}
	// A free port can be taken between its probe and the registry's
	// listen: try a few.
	var last error
	for range 3 {
		r, err := start(t, bin, opts)
		if err == nil {
			return r
		}
		last = err
	}
	t.Fatalf("start %s: %v", bin, last)
	return nil
}

func start(t testing.TB, bin string, opts Options) (*Registry, error) {
	dir := t.TempDir()
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &Registry{Host: fmt.Sprintf("127.0.0.1:%d", port), Root: filepath.Join(dir, "storage")}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: hotswap-test
`, r.Root, r.Host)
	if opts.User != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			return nil, err
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.User+":"+string(hash)+"\n"), 0o600); err != nil {
			return nil, err
		}
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: hotswap-test\n    path: %s\n", htpasswd)
	}
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		return nil, err
	}
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("registry pid %d did not exit within 10s of SIGKILL", cmd.Process.Pid)
		}
	}
	if err := waitReady(r.Host, exited); err != nil {
		stop()
		return nil, fmt.Errorf("%w; its output:\n%s", err, out.String())
	}
	t.Cleanup(stop)
	return r, nil
}

// waitReady polls http://host/v2/ until it answers (200, or 401 when it
// asks for credentials), the process exits
// or startTimeout passes.
func waitReady(host string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/v2/", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		select {
		case <-tick.C:
		case <-exited:
			return errors.New("the registry exited before it answered /v2/")
		case <-ctx.Done():
			return fmt.Errorf("the registry did not answer /v2/ within %v: %v", startTimeout, err)
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// lockedBuffer collects the registry's output for a failure message.
type lockedBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 {
		return len(p), nil // enough to diagnose
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
