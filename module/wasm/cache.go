package wasm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/tetratelabs/wazero"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// compiler compiles modules one at a time, noting which files each compile
// added to the compilation cache, so that those of a refused module can be
// removed. wazero names its cache files by a digest of the binary, the
// runtime configuration and the CPU, which only it computes; comparing the
// cache directory before and after a compile finds them without depending
// on that.
type compiler struct {
	dir string // the compilation cache directory
	log *slog.Logger
	mu  sync.Mutex // held during a compile
}

// compile compiles bin in rt and returns the cache files the compile added.
// A file another backend sharing the directory added at the same time may
// be among them; removing it costs that backend a compile, nothing more.
func (c *compiler) compile(ctx context.Context, rt wazero.Runtime, bin []byte) (wazero.CompiledModule, []string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.files()
	cm, err := rt.CompileModule(ctx, bin)
	if err != nil {
		return nil, nil, err
	}
	var created []string
	for _, f := range c.files() {
		if _, found := slices.BinarySearch(before, f); !found {
			created = append(created, f)
		}
	}
	return cm, created, nil
}

// files lists, sorted, the files in the cache directory's subdirectories
// (wazero keeps one per wazero version and platform).
func (c *compiler) files() []string {
	var out []string
	dirs, _ := os.ReadDir(c.dir)
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		sub := filepath.Join(c.dir, d.Name())
		entries, _ := os.ReadDir(sub)
		for _, e := range entries {
			if e.Type().IsRegular() {
				out = append(out, filepath.Join(sub, e.Name()))
			}
		}
	}
	slices.Sort(out)
	return out
}

// remove deletes cache files.
func (c *compiler) remove(files []string) {
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("remove compiled code of a refused module", logkey.Path, f, logkey.Err, err)
		}
	}
}

// openCache checks the compilation cache directory, creating it when it is
// missing, and opens it. Code in it runs without any further check, so the
// directory (and wazero's subdirectories in it) must belong to the
// effective user and be writable by no one else.
func openCache(dir string) (wazero.CompilationCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := checkPrivate(dir); err != nil {
		return nil, err
	}
	cache, err := wazero.NewCompilationCacheWithDir(dir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		cache.Close(context.Background())
		return nil, err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := checkPrivate(filepath.Join(dir, e.Name())); err != nil {
				cache.Close(context.Background())
				return nil, err
			}
		}
	}
	return cache, nil
}

// checkPrivate refuses a directory that is not the effective user's or
// that its group or others may write.
func checkPrivate(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if owner, ok := ownerOf(fi); ok && owner != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to this process's uid %d: compiled code in it could be anyone's", dir, owner, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s has mode %v: its group or others could plant compiled code; chmod go-w it", dir, fi.Mode().Perm())
	}
	return nil
}
