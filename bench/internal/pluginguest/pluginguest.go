// Package pluginguest builds the test guests of this repository as Go
// plugins for the benchmark programs. It is apart from benchutil so that
// the benchmarks that load no plugin do not link package plugin.
package pluginguest

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module/goplugin"
)

// Build builds the guest package pkg (e.g. "./internal/testguests/echo") as
// a Go plugin for the running binary, with the main package's string
// variables vars, in dir, and returns its bytes. Every call is a new build
// with fresh import paths: a new plugin.
func Build(pkg string, vars map[string]string, dir string) ([]byte, error) {
	root, err := guestbuild.Root()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := os.CreateTemp(dir, "plugin-*.so")
	if err != nil {
		return nil, err
	}
	out.Close()
	defer os.Remove(out.Name())
	if _, err := goplugin.Build(ctx, goplugin.BuildOptions{Dir: filepath.Join(root, pkg), Out: out.Name(), Vars: vars, WorkDir: dir}); err != nil {
		return nil, err
	}
	return os.ReadFile(out.Name())
}
