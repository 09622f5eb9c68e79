//go:build !unix

package artifact

// lockFile is a no-op where flock(2) does not exist: only the in-process
// mutex serializes writers there.
func lockFile(string) (unlock func(), err error) { return func() {}, nil }
