package upgrade

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// parentLink is a new process's end of the hand-over: the control socket
// to the process that started it.
type parentLink struct {
	conn    *net.UnixConn
	version Version  // the parent's
	stderr  *os.File // the parent's standard error, or nil
}

// ready points this process's standard error at the parent's and tells the
// parent this process is ready. A write error means the parent is gone;
// the link reader then makes this process the main one.
func (p *parentLink) ready(log *slog.Logger) {
	if p.stderr != nil {
		// From now on our stderr goes where the parent's goes, not into the
		// pipe the parent reads during init (which closes when it exits).
		if err := syscall.Dup3(int(p.stderr.Fd()), 2, 0); err != nil {
			log.Warn("upgrade: redirect stderr", logkey.Err, err)
		}
		p.closeStderr()
	}
	if err := writeFrame(p.conn, protocolVersion, msgReady, nil); err != nil {
		log.Warn("upgrade: tell parent ready", logkey.Err, err)
	}
}

func (p *parentLink) closeStderr() {
	if p.stderr != nil {
		p.stderr.Close()
	}
}

// attachParent reads the parent's hello on descriptor 3 and takes the
// inherited descriptors.
func (u *Upgrader) attachParent() error {
	syscall.CloseOnExec(controlFD)
	cf := os.NewFile(controlFD, "hotswap-control")
	fc, err := net.FileConn(cf)
	cf.Close()
	if err != nil {
		return fmt.Errorf("attach to parent: control socket: %w", err)
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return fmt.Errorf("attach to parent: control socket is a %T", fc)
	}
	refuse := func(err error) error {
		writeFrame(conn, protocolVersion, msgRefuse, []byte(err.Error()))
		conn.Close()
		return fmt.Errorf("attach to parent: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(u.opts.UpgradeTimeout))
	f, err := readFrame(conn)
	if err != nil {
		conn.Close()
		return fmt.Errorf("attach to parent: read hello: %w", err)
	}
	conn.SetReadDeadline(time.Time{})
	if f.version.Major != ProtocolMajor {
		return refuse(&VersionError{Local: protocolVersion, Remote: f.version})
	}
	if f.typ != msgHello {
		return refuse(fmt.Errorf("%w: got %s, want hello", ErrProtocol, f.typ))
	}
	h, err := decodeHello(f.payload)
	if err != nil {
		return refuse(err)
	}
	link := &parentLink{conn: conn, version: f.version}
	for i, name := range h.names {
		fd := firstFileFD + i
		if _, err := fcntl(fd, syscall.F_GETFD); err != nil {
			return refuse(fmt.Errorf("%w: file %q: descriptor %d: %v", ErrProtocol, name, fd, err))
		}
		syscall.CloseOnExec(fd)
		file := os.NewFile(uintptr(fd), name)
		if name == stderrName {
			link.stderr = file
			continue
		}
		u.inherited[name] = file
	}
	u.parent = link
	u.stage = stageChild
	u.state = h.state
	u.sections = h.sections
	u.wg.Add(1)
	go u.readParent()
	u.log.Info("upgrade: started by parent", "ppid", h.parentPID, "files", len(u.inherited), "state_bytes", len(h.state))
	return nil
}

// readParent waits for the parent's commit, or for the parent to go away,
// and makes this process the main one.
func (u *Upgrader) readParent() {
	defer u.wg.Done()
	f, err := readFrame(u.parent.conn)
	for err == nil && f.typ != msgCommit {
		// Nothing else is defined after ready; a newer minor version may
		// send more, which we ignore.
		f, err = readFrame(u.parent.conn)
	}
	committed := err == nil
	u.mu.Lock()
	u.stage = stageMain
	ready, closed := u.ready, u.closed
	if u.attempt == PhaseIdle { // an attempt of ours flushes them itself
		u.flushUnlinks()
	}
	u.mu.Unlock()
	if committed {
		u.parent.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if err := writeFrame(u.parent.conn, protocolVersion, msgCommitted, nil); err != nil {
			u.log.Warn("upgrade: acknowledge commit", logkey.Err, err)
		}
	}
	u.parent.conn.Close()
	switch {
	case committed:
		u.log.Info("upgrade: parent committed; this process serves alone")
	case closed:
	case ready:
		// The parent went away during probation without committing: it
		// crashed. We serve, so we are the main process now.
		u.log.Warn("upgrade: parent went away before commit; taking over", logkey.Err, err)
		if err := u.becomeMain(); err != nil {
			u.log.Error("upgrade: take over", logkey.Err, err)
		}
	default:
		u.log.Warn("upgrade: parent went away before ready", logkey.Err, err)
	}
}
