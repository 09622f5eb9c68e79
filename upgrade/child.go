package upgrade

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// waitDelay bounds how long reaping a new process waits for its stderr pipe
// to close after the process exited (a grandchild may hold it).
const waitDelay = time.Second

// child is a new process started by an upgrade, seen from the parent.
type child struct {
	cmd   *exec.Cmd
	pid   int
	conn  *net.UnixConn
	msgs  chan frame    // frames from the child; closed when the socket is
	quit  chan struct{} // closed by close: the reader stops delivering
	once  sync.Once     // closes quit and conn
	done  chan struct{} // closed once the process was reaped
	err   error         // cmd.Wait's result; read only after done is closed
	tail  *tailBuffer
	names []string // handed files, in descriptor order
	ppid  int
}

// startChild starts bin with the control socket as descriptor 3 and the
// handed files from descriptor 4 on.
func (u *Upgrader) startChild(bin string) (*child, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "hotswap-control")
	theirs := os.NewFile(uintptr(fds[1]), "hotswap-control")
	defer theirs.Close()
	fc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	conn := fc.(*net.UnixConn)

	names, files, err := u.handedFiles()
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer closeAll(files)

	tail := &tailBuffer{max: u.opts.StderrTail, mirror: os.Stderr}
	env := append(os.Environ(), u.opts.Env...)
	env = append(env, envParent+"="+strconv.Itoa(os.Getpid()))
	cmd := &exec.Cmd{
		Path:       bin,
		Args:       append([]string{bin}, u.opts.Args...),
		Env:        env,
		Stdout:     os.Stdout,
		Stderr:     tail,
		ExtraFiles: append([]*os.File{theirs}, files...),
		WaitDelay:  waitDelay,
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &child{
		cmd:   cmd,
		pid:   cmd.Process.Pid,
		conn:  conn,
		msgs:  make(chan frame, 4),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
		tail:  tail,
		names: names,
		ppid:  os.Getpid(),
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	go func() {
		defer close(c.msgs)
		for {
			f, err := readFrame(conn)
			if err != nil {
				return
			}
			select {
			case c.msgs <- f:
			case <-c.quit:
				return
			}
			if f.typ == msgRefuse {
				return
			}
		}
	}()
	return c, nil
}

// close closes the control socket, which ends the reader.
func (c *child) close() {
	c.once.Do(func() {
		close(c.quit)
		c.conn.Close()
	})
}

func (c *child) sendHello(state []byte, sections map[string][]byte) error {
	p, err := encodeHello(hello{parentPID: c.ppid, names: c.names, state: state, sections: sections})
	if err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	defer c.conn.SetWriteDeadline(time.Time{})
	if err := writeFrame(c.conn, protocolVersion, msgHello, p); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	return nil
}

// commit tells the child it serves alone and waits (bounded) until it
// acknowledged, so that once the pidfile names it, it can upgrade in turn.
func (c *child) commit() error {
	defer c.close()
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if err := writeFrame(c.conn, protocolVersion, msgCommit, nil); err != nil {
		return fmt.Errorf("send commit: %w", err)
	}
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case f, ok := <-c.msgs:
			if !ok {
				return errors.New("wait for commit acknowledgement: control socket closed")
			}
			if f.typ == msgCommitted {
				return nil
			}
		case <-t.C:
			return errors.New("wait for commit acknowledgement: timed out after 2s")
		}
	}
}

// kill gives the process grace to exit by itself, then kills it, and
// waits until it was reaped.
func (c *child) kill(grace time.Duration) {
	defer c.close()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.done:
		return
	case <-t.C:
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done // bounded: SIGKILL cannot be caught and Wait gives up on stderr after waitDelay
}

// error builds the ChildError for a failure at stage. If the process has
// exited, the error says how and carries the complete stderr tail.
func (c *child) error(stage string, err error) *ChildError {
	e := &ChildError{PID: c.pid, Binary: c.cmd.Path, Stage: stage, Err: err}
	select {
	case <-c.done:
		var ee *exec.ExitError
		if errors.As(c.err, &ee) {
			e.Exit = ee.ProcessState.String()
		} else if c.err != nil {
			e.Exit = c.err.Error()
		} else {
			e.Exit = c.cmd.ProcessState.String()
		}
	default:
	}
	e.Stderr = c.tail.String()
	return e
}

// tailBuffer keeps the last max bytes written to it and mirrors every write.
type tailBuffer struct {
	mirror io.Writer
	max    int
	mu     sync.Mutex // protects buf
	buf    []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	if t.mirror != nil {
		t.mirror.Write(p) // best effort: our own stderr
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
