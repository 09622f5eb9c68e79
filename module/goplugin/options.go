package goplugin

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Defaults for Options.
const (
	// DefaultMaxRetained is how many plugin versions a process may hold.
	// Each stays mapped until the process exits (golang/go#20461).
	DefaultMaxRetained = 32
	// DefaultInitTimeout bounds the self-test and the migrate hook.
	DefaultInitTimeout = 10 * time.Second
)

// Options configures a Backend. The zero value of each field means its
// default.
type Options struct {
	// Dir holds the unique copy of each plugin the process opens (dlopen
	// needs a file, and a path opened once can never be opened again). It
	// must be owned by the process's user and not writable by others; it is
	// created with mode 0700 if missing. Defaults to DefaultDir(): the
	// user's cache directory, hotswap/goplugin.
	Dir string
	// MaxRetained caps the plugin versions the process holds, retired ones
	// included; a load past it is refused with a *RetainedError. Defaults
	// to DefaultMaxRetained (32).
	MaxRetained int
	// InitTimeout bounds the self-test and the migrate hook of a version.
	// Native code cannot be stopped: a hook past its deadline fails the
	// load but keeps running. Defaults to DefaultInitTimeout (10s).
	InitTimeout time.Duration
	// RequiredHandlers lists handlers every version must register.
	// Defaults to none.
	RequiredHandlers []string
	// Logger receives the plugins' log lines and one line per open.
	// Defaults to discarding.
	Logger *slog.Logger
}

// DefaultDir returns the directory Options.Dir defaults to.
func DefaultDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("locate the plugin directory: %w", err)
	}
	return filepath.Join(dir, "hotswap", "goplugin"), nil
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxRetained < 0 {
		return o, fmt.Errorf("negative MaxRetained %d", o.MaxRetained)
	}
	if o.InitTimeout < 0 {
		return o, fmt.Errorf("negative InitTimeout %v", o.InitTimeout)
	}
	for _, h := range o.RequiredHandlers {
		if h == "" {
			return o, errors.New("empty name in RequiredHandlers")
		}
	}
	if o.MaxRetained == 0 {
		o.MaxRetained = DefaultMaxRetained
	}
	if o.InitTimeout == 0 {
		o.InitTimeout = DefaultInitTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Dir == "" {
		dir, err := DefaultDir()
		if err != nil {
			return o, err
		}
		o.Dir = dir
	}
	return o, nil
}
