package statedir_test

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hotswapgo/hotswap/internal/statedir"
)

// nobody is the uid and gid the tests hand files to, or run a process as.
const nobody = 65534

func TestEnsureCreatesPrivateDirectories(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	if err := statedir.Ensure(dir); err != nil {
		t.Fatalf("Ensure(%s) = %v", dir, err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o700 {
			t.Errorf("mode of %s = %v; want 0700", d, got)
		}
	}
}

func TestCheckRefusesWhatOthersCanChange(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to hand a directory to another user")
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, parent, dir string)
		want  error // nil: accepted
	}{
		{"private", func(t *testing.T, _, _ string) {}, nil},
		{"group writable", func(t *testing.T, _, dir string) { chmod(t, dir, 0o770) }, statedir.ErrInsecure},
		{"world writable", func(t *testing.T, _, dir string) { chmod(t, dir, 0o707) }, statedir.ErrInsecure},
		{"readable by others", func(t *testing.T, _, dir string) { chmod(t, dir, 0o755) }, nil},
		{"owned by another user", func(t *testing.T, _, dir string) { chown(t, dir, nobody) }, statedir.ErrInsecure},
		{"parent owned by another user", func(t *testing.T, parent, _ string) { chown(t, parent, nobody) }, statedir.ErrInsecure},
		{"parent world writable", func(t *testing.T, parent, _ string) { chmod(t, parent, 0o777) }, statedir.ErrInsecure},
		{"parent world writable and sticky", func(t *testing.T, parent, _ string) {
			chmod(t, parent, 0o777|os.ModeSticky)
		}, nil},
		{"link to a directory of another user", func(t *testing.T, parent, dir string) {
			other := filepath.Join(parent, "other")
			if err := os.Mkdir(other, 0o700); err != nil {
				t.Fatal(err)
			}
			chown(t, other, nobody)
			os.Remove(dir)
			if err := os.Symlink(other, dir); err != nil {
				t.Fatal(err)
			}
		}, statedir.ErrInsecure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "parent")
			dir := filepath.Join(parent, "state")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, parent, dir)
			err := statedir.Check(dir)
			switch {
			case tt.want == nil && err != nil:
				t.Errorf("Check() = %v; want accepted", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Errorf("Check() = %v; want %v", err, tt.want)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Chown(path, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func TestDefault(t *testing.T) {
	t.Run("env", func(t *testing.T) {
		dir := t.TempDir()
		t.Setenv(statedir.Env, dir)
		if got, err := statedir.Default(); err != nil || got != dir {
			t.Errorf("Default() = %q, %v; want %q", got, err, dir)
		}
	})
	t.Run("root without env", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("runs as root only")
		}
		t.Setenv(statedir.Env, "")
		t.Setenv("HOME", "")
		t.Setenv("XDG_CONFIG_HOME", "")
		if got, err := statedir.Default(); err != nil || got != statedir.SystemDir {
			t.Errorf("Default() = %q, %v; want %q", got, err, statedir.SystemDir)
		}
	})
	t.Run("user without HOME", func(t *testing.T) {
		// Run this test binary again as an unprivileged user with no HOME,
		// no XDG_* and no HOTSWAP_STATE_DIR: it must refuse, not fall back
		// to the temporary directory.
		if os.Geteuid() != 0 {
			t.Skip("needs root to run a process as another user")
		}
		out := runAsNobody(t)
		if !strings.Contains(out, "refused: "+statedir.ErrNoDefault.Error()) || !strings.Contains(out, statedir.Env) {
			t.Fatalf("Default() as a user without HOME printed %q; want a refusal naming $%s", out, statedir.Env)
		}
	})
}

// TestMain runs the helper process of TestDefault when asked to.
func TestMain(m *testing.M) {
	if os.Getenv("STATEDIR_HELPER") == "1" {
		dir, err := statedir.Default()
		if err != nil {
			os.Stdout.WriteString("refused: " + err.Error() + "\n")
		} else {
			os.Stdout.WriteString("dir: " + dir + "\n")
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runAsNobody runs this test binary as uid nobody with an environment of
// only STATEDIR_HELPER=1 (see TestMain), and returns its output.
func runAsNobody(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// nobody must be able to reach and run the binary: copy it into a
	// directory of the test's own, opened to others for reading.
	dir := t.TempDir()
	chmod(t, filepath.Dir(dir), 0o755)
	chmod(t, dir, 0o755)
	bin := filepath.Join(dir, "helper.test")
	copyFile(t, self, bin)
	cmd := exec.Command(bin)
	cmd.Env = []string{"STATEDIR_HELPER=1"}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as nobody: %v\n%s", err, out)
	}
	return string(out)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
