//go:build unix

package audit

import (
	"fmt"
	"os"
	"syscall"
)

// lockFile takes a flock(2) on path, exclusive for writers (creating the
// file) or shared for readers, and blocks until it has it. A reader that
// cannot open the lock file reads without the lock.
func lockFile(path string, exclusive bool) (unlock func(), err error) {
	how, flag := syscall.LOCK_SH, os.O_RDONLY
	if exclusive {
		how, flag = syscall.LOCK_EX, os.O_RDWR|os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		if !exclusive {
			return func() {}, nil
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}
