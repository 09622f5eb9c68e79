// Package netns runs code inside a Linux network namespace.
package netns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on a thread that has joined the network namespace at path (a
// file such as /run/netns/NAME or /proc/PID/ns/net) and returns fn's error.
// An empty path runs fn in the caller's namespace. Sockets and attachments
// made by fn belong to that namespace and stay there after Do returns.
//
// fn runs on a goroutine of its own, locked to its thread; the thread goes
// back to its namespace afterwards, and if that fails the goroutine exits
// still locked, so the runtime ends the thread instead of reusing it in the
// wrong namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		left, err := run(path, fn)
		if left {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

// run joins the namespace at path, runs fn and goes back; left reports
// whether the thread is back in its own namespace.
func run(path string, fn func() error) (left bool, err error) {
	target, err := os.Open(path)
	if err != nil {
		return true, fmt.Errorf("open network namespace: %w", err)
	}
	defer target.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return true, fmt.Errorf("open own network namespace: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	err = fn()
	if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
		return false, fmt.Errorf("leave network namespace %s: %w", path, rerr)
	}
	return true, err
}
