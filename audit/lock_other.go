//go:build !unix

package audit

// lockFile is a no-op where flock(2) does not exist: only the in-process
// mutex serializes writers there.
func lockFile(string, bool) (unlock func(), err error) { return func() {}, nil }
