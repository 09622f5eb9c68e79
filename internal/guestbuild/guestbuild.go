// Package guestbuild compiles Go guest modules of this repository to
// WebAssembly, for tests, benchmarks and the demo.
package guestbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Command returns the build command for a guest package, as documented for
// guest authors.
func Command(ctx context.Context, dir, pkg, out string, ldflags string) *exec.Cmd {
	args := []string{"build", "-buildmode=c-shared", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags="+ldflags)
	}
	cmd := exec.CommandContext(ctx, goTool(), append(args, pkg)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	return cmd
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// Root returns the repository root: the directory holding go.mod above this
// source file, or above the working directory.
func Root() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		if root, err := findMod(filepath.Dir(file)); err == nil {
			return root, nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return findMod(wd)
}

func findMod(dir string) (string, error) {
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(data, []byte("module github.com/hotswapgo/hotswap\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("the hotswap source tree (go.mod) was not found; run from inside the repository")
		}
		dir = parent
	}
}

// Build compiles the guest package pkg (a path relative to the repository
// root, e.g. "./examples/pricing/guests/v1") with ldflags, caching the result
// under cacheDir by a digest of the sources, and returns the module's path.
func Build(ctx context.Context, cacheDir, pkg, ldflags string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	key, err := sourceKey(root, pkg, ldflags)
	if err != nil {
		return "", err
	}
	name := strings.Trim(strings.ReplaceAll(pkg, "/", "_"), "._")
	return cached(cacheDir, name, key, func(tmp string) error {
		cmd := Command(ctx, root, pkg, tmp, ldflags)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build guest %s: %v\n%s", pkg, err, msg)
		}
		return nil
	})
}

// cached returns the module named name and keyed by key in cacheDir,
// building it with build (into the temporary path it is given) if it is
// not there yet.
func cached(cacheDir, name, key string, build func(tmp string) error) (string, error) {
	out := filepath.Join(cacheDir, name+"-"+key[:16]+".wasm")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	// Test binaries of several packages build at once: each writes its own
	// temporary file and renames it into place, which is atomic.
	f, err := os.CreateTemp(cacheDir, name+"-*.tmp")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	if err := build(tmp); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}

// Dir returns the process's private directory of built guests, made (mode
// 0700, with a random name) on first use: every test binary and benchmark
// builds its guests once, into a directory no other user can write and no
// other process shares. Cleanup removes it.
func Dir() (string, error) {
	private.once.Do(func() { private.dir, private.err = os.MkdirTemp("", "hotswap-guests-") })
	return private.dir, private.err
}

var private struct {
	once sync.Once
	dir  string
	err  error
}

// Cleanup removes the directory of Dir, if it was made.
func Cleanup() {
	if private.dir != "" {
		os.RemoveAll(private.dir)
	}
}

// Bytes builds (or reuses, within this process) the guest package pkg with
// ldflags in Dir and returns the module's bytes, waiting at most 5 minutes
// for the build.
func Bytes(pkg, ldflags string) ([]byte, error) {
	dir, err := Dir()
	if err != nil {
		return nil, fmt.Errorf("build guest %s: %w", pkg, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	path, err := Build(ctx, dir, pkg, ldflags)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(path)
}

// sourceKey digests everything a guest build depends on in this repository:
// the guest package, the SDK, go.mod and the flags.
func sourceKey(root, pkg, ldflags string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version(), pkg, ldflags)
	for _, dir := range []string{filepath.Join(root, pkg), filepath.Join(root, "guest")} {
		if err := digestDir(h, root, dir, ".go"); err != nil {
			return "", err
		}
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	h.Write(mod)
	return hex.EncodeToString(h.Sum(nil)), err
}

// digestDir writes the relative path, size and contents of every file under
// dir whose name ends in suffix to h.
func digestDir(h io.Writer, root, dir, suffix string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, suffix) {
			return err
		}
		data, err := os.ReadFile(path)
		rel, _ := filepath.Rel(root, path) // a clone elsewhere shares the cache
		fmt.Fprintln(h, rel, len(data))
		h.Write(data)
		return err
	})
}
