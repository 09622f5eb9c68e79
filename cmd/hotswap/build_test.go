package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildRefusesBadUse checks the CLI's side of `hotswap build`; the
// build itself is tested in module/goplugin.
func TestBuildRefusesBadUse(t *testing.T) {
	dir := t.TempDir()
	notHost := filepath.Join(dir, "not-a-binary")
	if err := os.WriteFile(notHost, []byte("text"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no --plugin", []string{"build", "-o", filepath.Join(dir, "x.so")}, 2, "--plugin DIR and -o OUT are required"},
		{"no -o", []string{"build", "--plugin", dir}, 2, "--plugin DIR and -o OUT are required"},
		{"an argument", []string{"build", "--plugin", dir, "-o", "x.so", "extra"}, 2, ""},
		{"host without build info", []string{"build", "--plugin", dir, "-o", filepath.Join(dir, "x.so"), "--host", notHost}, 1, "read the build info of host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, code, err := runCLI(t, tc.args...)
			if code != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v (exit %d); want exit %d and %q", tc.args, err, code, tc.code, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "x.so")); err == nil {
				t.Errorf("run(%q) wrote x.so", tc.args)
			}
		})
	}
}
