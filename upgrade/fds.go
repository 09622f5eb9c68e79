package upgrade

import (
	"fmt"
	"os"
	"slices"
	"syscall"
)

// handedFiles duplicates every handed socket and file, sorted by name, and
// this process's standard error last.
func (u *Upgrader) handedFiles() (names []string, files []*os.File, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	names = make([]string, 0, len(u.files)+1)
	for name := range u.files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		rc, err := u.files[name].syscallConn()
		var f *os.File
		if err == nil {
			f, err = dupFile(rc, name)
		}
		if err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("hand over %s: %w", name, err)
		}
		files = append(files, f)
	}
	if rc, err := os.Stderr.SyscallConn(); err == nil {
		if f, err := dupFile(rc, stderrName); err == nil {
			names = append(names, stderrName)
			files = append(files, f)
		}
	}
	return names, files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func fcntl(fd, cmd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// dupFile duplicates the descriptor behind rc with close-on-exec set, without
// touching its O_NONBLOCK flag. (os.File.Fd, which exec.Cmd.ExtraFiles calls,
// would switch the shared open file description to blocking mode and turn
// the parent's pending Accept into a thread-blocking accept(2).)
func dupFile(rc syscall.RawConn, name string) (*os.File, error) {
	var nfd int
	var derr error
	err := rc.Control(func(fd uintptr) {
		r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			derr = errno
			return
		}
		nfd = int(r)
	})
	if err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", name, err)
	}
	// The new descriptor shares the (non-blocking) open file description, so
	// os.NewFile registers it as pollable and Fd leaves its flags alone.
	return os.NewFile(uintptr(nfd), name), nil
}
