package host_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/statedir"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// TestDevTrustDir: the keys of a development trust root are trusted only
// by a host started with it, which says so; signatures stay required, and
// a root others can write is refused.
func TestDevTrustDir(t *testing.T) {
	devKey := testhost.Signer(t, 0x5e)
	devTrust := filepath.Join(t.TempDir(), "trust")
	if err := os.Mkdir(devTrust, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := artifact.WritePublicKey(devTrust, devKey.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// Not WebAssembly: a load that passed the signature checks fails at the
	// kind check (the payload does not start like its manifest's kind).
	payload := []byte("not a module")
	for _, tt := range []struct {
		name      string
		devTrust  string
		want      string // DevTrustDir()
		wantCheck string // the check that refuses the dev-signed artifact
	}{
		{"production", "", "", string(artifact.CheckKey)},
		{"development", devTrust, devTrust, string(artifact.CheckKind)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := testhost.NewFixture(t)
			h := f.Host(t, testhost.HostOptions{Options: func(o *host.Options) { o.DevTrustDir = tt.devTrust }})
			if got := h.DevTrustDir(); got != tt.want {
				t.Errorf("DevTrustDir() = %q; want %q", got, tt.want)
			}
			if got := h.TrustMode(); got != "enforce" {
				t.Errorf("TrustMode() = %q; want enforce: signatures stay required", got)
			}
			path := f.Sign(t, devKey, "pricing-dev.wasm", payload, artifact.Manifest{Version: "dev.1"})
			_, err := h.LoadFile(testhost.Context(t, 5*time.Minute), "pricing", path)
			if check := checkOf(err); check != tt.wantCheck {
				t.Errorf("LoadFile(signed by the development key) = %v (check %q); want the %s check to refuse it", err, check, tt.wantCheck)
			}
			unsigned := f.Write(t, "pricing-unsigned.wasm", payload)
			if _, err := h.LoadFile(testhost.Context(t, 5*time.Minute), "pricing", unsigned); checkOf(err) != string(artifact.CheckPolicy) {
				t.Errorf("LoadFile(unsigned) = %v; want refused by the policy check", err)
			}
		})
	}

	t.Run("writable by others", func(t *testing.T) {
		open := filepath.Join(t.TempDir(), "open")
		if err := os.Mkdir(open, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(open, 0o777); err != nil {
			t.Fatal(err)
		}
		f := testhost.NewFixture(t)
		b, err := wasm.New(wasm.Options{CacheDir: testhost.CacheDir(t)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = host.New(host.Options{Backend: b, StateDir: f.State, DevTrustDir: open})
		if !errors.Is(err, statedir.ErrInsecure) {
			t.Fatalf("host.New(DevTrustDir writable by others) = %v; want ErrInsecure", err)
		}
	})
}

// checkOf names the check that refused a load, "" if none.
func checkOf(err error) string {
	var (
		ve *artifact.VerifyError
		le *module.LoadError
	)
	switch {
	case errors.As(err, &ve):
		return string(ve.Check)
	case errors.As(err, &le):
		return le.Check
	}
	return ""
}
