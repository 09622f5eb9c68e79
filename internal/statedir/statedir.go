// Package statedir finds and checks the directories where hotswap keeps
// state that decides what code runs: signing keys, trusted keys, the
// artifact store, the audit log, compiled code and module state. Anyone who
// can write one of them can make the service run their code, so they live
// only in directories owned by the service's user (or root) that no one else
// can write, and never in a shared temporary directory.
package statedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Env names the environment variable that sets the state directory.
const Env = "HOTSWAP_STATE_DIR"

// SystemDir is the state directory of a service running as root without
// $HOTSWAP_STATE_DIR.
const SystemDir = "/var/lib/hotswap"

// ErrNoDefault: no state directory was given and none can be derived.
var ErrNoDefault = errors.New("no state directory")

// ErrInsecure: a state directory, or a directory above it, can be changed by
// another user.
var ErrInsecure = errors.New("state directory is not private to the service's user")

// Default returns $HOTSWAP_STATE_DIR; else SystemDir for root; else hotswap
// in the user's configuration directory ($XDG_CONFIG_HOME or
// $HOME/.config). When none of these is set it fails with ErrNoDefault and
// says what to set: it never falls back to the temporary directory, which
// other users can write.
func Default() (string, error) {
	if d := os.Getenv(Env); d != "" {
		return filepath.Abs(d)
	}
	if os.Geteuid() == 0 {
		return SystemDir, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("%w: set $%s (or $HOME or $XDG_CONFIG_HOME), or pass the state directory explicitly: %v", ErrNoDefault, Env, err)
	}
	return filepath.Join(dir, "hotswap"), nil
}

// Ensure creates dir (and missing parents, mode 0700) and checks that dir and
// every directory above it are safe to keep state in; see Check.
func Ensure(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	return Check(dir)
}

// Check returns an error matching ErrInsecure unless dir is a directory
// owned by the effective user or root and not writable by group or others,
// and every directory above it is owned by the effective user or root and
// either not writable by others or sticky (like /tmp, where others cannot
// rename or remove what they do not own). Symbolic links on the way are
// resolved and their targets checked.
func Check(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("check state directory %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("check state directory %s: %w", dir, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("check state directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("check state directory %s: not a directory", dir)
	}
	if err := checkOwner(real, fi); err != nil {
		return err
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %v, writable by others (chmod go-w %s)", ErrInsecure, real, fi.Mode().Perm(), real)
	}
	for p := filepath.Dir(real); ; p = filepath.Dir(p) {
		pi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check state directory %s: %w", dir, err)
		}
		if err := checkOwner(p, pi); err != nil {
			return err
		}
		if pi.Mode().Perm()&0o002 != 0 && pi.Mode()&fs.ModeSticky == 0 {
			return fmt.Errorf("%w: %s, above %s, is writable by everyone without the sticky bit", ErrInsecure, p, real)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil // no owner to check on this platform
	}
	if euid := os.Geteuid(); int(st.Uid) != euid && st.Uid != 0 {
		return fmt.Errorf("%w: %s is owned by uid %d, not by this process's uid %d or root", ErrInsecure, path, st.Uid, euid)
	}
	return nil
}
