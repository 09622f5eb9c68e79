package guestbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Rustc is the Rust compiler guests are built with: Debian's, whose
// wasm32-unknown-unknown standard library comes from the package
// libstd-rust-dev-wasm32 (a rustup toolchain elsewhere on PATH may lack it).
const Rustc = "/usr/bin/rustc"

// ErrNoToolchain means the compiler a guest language needs is not
// installed; the error names the Debian packages that provide it.
var ErrNoToolchain = errors.New("guest toolchain not installed")

// CFlags are the flags of a freestanding C guest, as documented in
// guest/c/hotswap.h.
var CFlags = []string{"--target=wasm32", "-O2", "-nostdlib", "-ffreestanding", "-mbulk-memory",
	"-Wall", "-Werror", "-Wl,--no-entry", "-Wl,--stack-first"}

// RustFlags are the flags of a Rust guest and of the SDK crate.
var RustFlags = []string{"--edition=2021", "--target=wasm32-unknown-unknown", "-C", "opt-level=2",
	"-C", "panic=abort", "-C", "debuginfo=0", "-C", "strip=debuginfo", "-C", "target-feature=+bulk-memory"}

// BuildC compiles the C guest src (a file relative to the repository root)
// with the SDK header guest/c/hotswap.h and the extra flags (e.g.
// "-DNAME"), caching the result under cacheDir, and returns the module's
// path.
func BuildC(ctx context.Context, cacheDir, src string, flags ...string) (string, error) {
	clang, err := exec.LookPath("clang")
	if err != nil {
		return "", fmt.Errorf("build C guest %s: %w: clang (apt-get install -y clang lld)", src, ErrNoToolchain)
	}
	if _, err := exec.LookPath("wasm-ld"); err != nil {
		return "", fmt.Errorf("build C guest %s: %w: wasm-ld (apt-get install -y lld)", src, ErrNoToolchain)
	}
	root, err := Root()
	if err != nil {
		return "", err
	}
	args := append(append(append([]string(nil), CFlags...), "-I", filepath.Join(root, "guest", "c")), flags...)
	return buildForeign(ctx, cacheDir, root, src, []string{"guest/c"}, clang, args,
		func(ctx context.Context, out string) error {
			return run(ctx, root, clang, append(args, "-o", out, filepath.Join(root, src))...)
		})
}

// BuildRust compiles the Rust guest src (the crate root, relative to the
// repository root) against the SDK crate guest/rust with the extra rustc
// flags (e.g. "--cfg", "NAME"), caching the result under cacheDir, and
// returns the module's path. Both crates are compiled with Rustc alone,
// without cargo or a registry.
func BuildRust(ctx context.Context, cacheDir, src string, flags ...string) (string, error) {
	if _, err := os.Stat(Rustc); err != nil {
		return "", fmt.Errorf("build Rust guest %s: %w: %s (apt-get install -y rustc libstd-rust-dev-wasm32)", src, ErrNoToolchain, Rustc)
	}
	root, err := Root()
	if err != nil {
		return "", err
	}
	args := append(append([]string(nil), RustFlags...), flags...)
	return buildForeign(ctx, cacheDir, root, src, []string{"guest/rust/src"}, Rustc, args,
		func(ctx context.Context, out string) error {
			dir, err := os.MkdirTemp(filepath.Dir(out), "rlib-*")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			sdk := filepath.Join(dir, "libhotswap_guest.rlib")
			err = run(ctx, root, Rustc, append(append([]string(nil), RustFlags...), "--crate-type=rlib",
				"--crate-name=hotswap_guest", "-o", sdk, filepath.Join(root, "guest", "rust", "src", "lib.rs"))...)
			if err != nil {
				return err
			}
			return run(ctx, root, Rustc, append(args, "--crate-type=cdylib", "--extern", "hotswap_guest="+sdk,
				"-o", out, filepath.Join(root, src))...)
		})
}

// buildForeign builds into cacheDir under a name keyed by the compiler's
// version, its arguments and the sources (src's directory and sdkDirs).
func buildForeign(ctx context.Context, cacheDir, root, src string, sdkDirs []string, compiler string, args []string,
	build func(ctx context.Context, out string) error) (string, error) {
	version, err := toolVersion(ctx, compiler)
	if err != nil {
		return "", fmt.Errorf("build guest %s: %w", src, err)
	}
	h := sha256.New()
	fmt.Fprintln(h, version, strings.Join(args, " "), src)
	for _, dir := range append([]string{filepath.Dir(src)}, sdkDirs...) {
		if err := digestDir(h, root, filepath.Join(root, dir), ""); err != nil {
			return "", fmt.Errorf("build guest %s: %w", src, err)
		}
	}
	name := strings.Trim(strings.ReplaceAll(strings.TrimSuffix(src, filepath.Ext(src)), "/", "_"), "._")
	return cached(cacheDir, name, hex.EncodeToString(h.Sum(nil)), func(tmp string) error {
		if err := build(ctx, tmp); err != nil {
			return fmt.Errorf("build guest %s: %w", src, err)
		}
		return nil
	})
}

func run(ctx context.Context, dir, tool string, args ...string) error {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", filepath.Base(tool), err, msg)
	}
	return nil
}

var versions struct {
	mu sync.Mutex // protects m
	m  map[string]string
}

// toolVersion returns the first line of `tool --version`, once per process.
func toolVersion(ctx context.Context, tool string) (string, error) {
	versions.mu.Lock()
	defer versions.mu.Unlock()
	if v, ok := versions.m[tool]; ok {
		return v, nil
	}
	out, err := exec.CommandContext(ctx, tool, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", tool, err)
	}
	v, _, _ := strings.Cut(string(out), "\n")
	if versions.m == nil {
		versions.m = make(map[string]string)
	}
	versions.m[tool] = v
	return v, nil
}

// CBytes builds (or reuses, within this process) the C guest src with
// flags in Dir and returns the module's bytes, waiting at most 2 minutes.
func CBytes(src string, flags ...string) ([]byte, error) {
	return foreignBytes(src, func(ctx context.Context, dir string) (string, error) { return BuildC(ctx, dir, src, flags...) })
}

// RustBytes builds (or reuses, within this process) the Rust guest src
// with flags in Dir and returns the module's bytes, waiting at most 5
// minutes.
func RustBytes(src string, flags ...string) ([]byte, error) {
	return foreignBytes(src, func(ctx context.Context, dir string) (string, error) {
		return BuildRust(ctx, dir, src, flags...)
	})
}

func foreignBytes(src string, build func(ctx context.Context, dir string) (string, error)) ([]byte, error) {
	dir, err := Dir()
	if err != nil {
		return nil, fmt.Errorf("build guest %s: %w", src, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	path, err := build(ctx, dir)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(path)
}
