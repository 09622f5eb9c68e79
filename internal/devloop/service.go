package devloop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// stopTimeout bounds how long stopping the service may take: SIGTERM, and
// SIGKILL for what is left when half of it passed.
const stopTimeout = 30 * time.Second

// tailSize is how much of the service's output an exit report shows.
const tailSize = 4 << 10

// service is a service the loop started, with every process it and its
// upgrades start: they share one process group. The loop's process becomes
// a child subreaper, so the processes an upgrade leaves behind (the old
// process exits once the new one took over) are its children too: it reaps
// them and can kill what is left.
type service struct {
	pid    int           // the process the loop started; also the group id
	done   chan struct{} // closed once no process of the group is left
	copied chan struct{} // closed once the output pipe reached EOF
	out    *tailWriter
}

// startProcess starts argv in a new process group, its output going to out.
func startProcess(dir string, argv []string, out io.Writer) (*service, error) {
	if err := becomeSubreaper(); err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start the service: %w", err)
	}
	s := &service{pid: cmd.Process.Pid, done: make(chan struct{}), copied: make(chan struct{}), out: &tailWriter{}}
	// The group is reaped below, by group id: the handle must not wait too.
	cmd.Process.Release()
	go func() {
		defer close(s.copied)
		defer r.Close()
		io.Copy(io.MultiWriter(s.out, out), r)
	}()
	go s.reap()
	return s, nil
}

// reap waits for every process of the group, until none is left.
func (s *service) reap() {
	defer close(s.done)
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(-s.pid, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil { // ECHILD: the group is empty
			return
		}
	}
}

// member reports whether pid belongs to the service's process group.
func (s *service) member(pid int) bool {
	pgid, err := syscall.Getpgid(pid)
	return err == nil && pgid == s.pid
}

// stop ends every process of the group: SIGTERM, then SIGKILL for what is
// left when half the time until ctx's deadline passed. It returns once
// none is left, or an error if some still are when ctx ends.
func (s *service) stop(ctx context.Context) error {
	syscall.Kill(-s.pid, syscall.SIGTERM)
	grace := time.Second
	if d, ok := ctx.Deadline(); ok {
		grace = time.Until(d) / 2
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		syscall.Kill(-s.pid, syscall.SIGKILL)
		select {
		case <-s.done:
		case <-ctx.Done():
			return fmt.Errorf("stop the service (process group %d): %w", s.pid, ctx.Err())
		}
	case <-ctx.Done():
		syscall.Kill(-s.pid, syscall.SIGKILL)
		return fmt.Errorf("stop the service (process group %d): %w", s.pid, ctx.Err())
	}
	select {
	case <-s.copied:
	case <-ctx.Done():
		// A process outside the group holds the output pipe open; it is
		// not the loop's to wait for.
	}
	return nil
}

func (s *service) tail() string { return s.out.String() }

// tailWriter keeps the last tailSize bytes written to it. It is safe for
// concurrent use.
type tailWriter struct {
	mu  sync.Mutex // protects buf
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if n := len(t.buf) - tailSize; n > 0 {
		t.buf = append(t.buf[:0], t.buf[n:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
