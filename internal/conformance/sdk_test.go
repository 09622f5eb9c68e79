package conformance_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// TestMinimalCGuest: the C reference guest, every export in one short file,
// builds to under 1 KiB, needs no capability, and echoes.
func TestMinimalCGuest(t *testing.T) {
	art := guest(t, language{"c", func() ([]byte, error) { return guestbuild.CBytes("guest/c/echo.c") }})
	if len(art) > 1<<10 {
		t.Errorf("guest/c/echo.c built to %d bytes; want under 1 KiB", len(art))
	}
	dir, err := cacheDir()
	if err != nil {
		t.Fatal(err)
	}
	b, err := wasm.New(wasm.Options{CacheDir: dir}) // no grants
	if err != nil {
		t.Fatal(err)
	}
	r, err := module.New(module.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	if err := load(r, "m", "v1", art); err != nil {
		t.Fatalf("Load(echo.c) = %v", err)
	}
	big := strings.Repeat("x", 200<<10) // past its static buffer
	for _, in := range []string{"hello", "", big} {
		if got, err := call(r, "m", "echo", in); err != nil || got != in {
			t.Fatalf("echo(%.10q…) = %.10q…, %v", in, got, err)
		}
	}
}

// TestRustSDKUnitTests builds the Rust SDK's own tests (its JSON reader and
// writer) for this machine and runs them.
func TestRustSDKUnitTests(t *testing.T) {
	if _, err := os.Stat(guestbuild.Rustc); err != nil {
		if os.Getenv("HOTSWAP_REQUIRE_GUEST_TOOLCHAINS") == "" {
			t.Skipf("no Rust toolchain: %v", err)
		}
		t.Fatal(err)
	}
	root, err := guestbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "sdk-tests")
	build := exec.CommandContext(ctx, guestbuild.Rustc, "--edition=2021", "--test", "-o", bin,
		filepath.Join(root, "guest", "rust", "src", "lib.rs"))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("rustc --test guest/rust: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, bin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "test result: ok") {
		t.Fatalf("guest/rust tests: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
