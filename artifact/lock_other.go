//go:build !unix

package artifact

import (
	"fmt"
	"os"
)

// lockFile is a no-op where flock(2) does not exist: only the in-process
// mutex serializes writers there.
func lockFile(string) (unlock func(), err error) { return func() {}, nil }

// openNoFollow opens path unless it is a symbolic link. Without O_NOFOLLOW
// the check and the open are two steps.
func openNoFollow(path string) (*os.File, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		return nil, fmt.Errorf("%s: %w", path, ErrSymlink)
	}
	return os.Open(path)
}
