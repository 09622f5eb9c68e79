package upgrade

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// handed is a socket or file that is passed to every new process.
type handed interface {
	syscallConn() (syscall.RawConn, error)
	// pause stops (true) or resumes (false) accepting or reading while a
	// new process is in probation.
	pause(bool)
}

// Listen returns a stream listener (tcp, tcp4, tcp6, unix) for addr: the one
// inherited under the name network+":"+addr if the parent passed it, else a
// new one. The listener is handed to every new process. ctx bounds the
// creation of a new listener only.
//
// Closing the listener closes this process's descriptor; a unix socket path
// is removed only when no new process owns the socket.
func (u *Upgrader) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	name := network + ":" + addr
	f, err := u.claim(name)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	var ln net.Listener
	if f != nil {
		ln, err = net.FileListener(f)
		f.Close()
	} else {
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	l := &listener{Listener: ln, u: u, name: name}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false) // the last owner unlinks, see forget
		l.unlink = unixPath(ul.Addr())
	}
	u.register(name, l)
	u.log.Debug("upgrade: listening", "name", name, "inherited", f != nil)
	return l, nil
}

// ListenPacket returns a packet socket (udp, udp4, udp6, unixgram) for addr:
// the one inherited under the name network+":"+addr, else a new one. While
// this process is in probation, ReadFrom blocks so that the new process
// receives the datagrams; it returns again if the upgrade rolls back.
func (u *Upgrader) ListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error) {
	name := network + ":" + addr
	f, err := u.claim(name)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	var pc net.PacketConn
	if f != nil {
		pc, err = net.FilePacketConn(f)
		f.Close()
	} else {
		var lc net.ListenConfig
		pc, err = lc.ListenPacket(ctx, network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	p := &packetConn{PacketConn: pc, u: u, name: name}
	if uc, ok := pc.(*net.UnixConn); ok {
		p.unlink = unixPath(uc.LocalAddr())
	}
	u.register(name, p)
	return p, nil
}

// File returns the file inherited under name, or else calls open and hands
// the file it returns to every new process. The caller owns the returned
// file; closing it stops handing it over. name may not start with "hotswap/".
func (u *Upgrader) File(name string, open func() (*os.File, error)) (*os.File, error) {
	f, err := u.claim(name)
	if err != nil {
		return nil, fmt.Errorf("file %s: %w", name, err)
	}
	if f == nil {
		if f, err = open(); err != nil {
			return nil, fmt.Errorf("file %s: %w", name, err)
		}
	}
	u.register(name, fileEntry{f})
	return f, nil
}

type fileEntry struct{ f *os.File }

func (e fileEntry) syscallConn() (syscall.RawConn, error) { return e.f.SyscallConn() }
func (fileEntry) pause(bool)                              {}

// claim takes the inherited file called name, if any, so that it is not
// closed by Ready.
func (u *Upgrader) claim(name string) (*os.File, error) {
	if name == "" || strings.HasPrefix(name, reservedPrefix) {
		return nil, fmt.Errorf("invalid name %q: empty or reserved prefix %q", name, reservedPrefix)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, ErrClosed
	}
	if _, ok := u.files[name]; ok {
		return nil, fmt.Errorf("%q is already registered", name)
	}
	f := u.inherited[name]
	delete(u.inherited, name)
	return f, nil
}

// register adds h to the files handed to every new process; a socket
// registered during probation starts paused.
func (u *Upgrader) register(name string, h handed) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.files[name] = h
	if u.attempt == PhaseProbation {
		h.pause(true)
	}
}

// pauseAll pauses or resumes every registered socket. u.mu is held.
func (u *Upgrader) pauseAll(paused bool) {
	for _, h := range u.files {
		h.pause(paused)
	}
}

// forget is called when a handed socket is closed. It unlinks path unless
// another process may own the socket: a successor that passed probation, a
// new process being started, or (in a new process) a parent in probation.
func (u *Upgrader) forget(name, path string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.files, name)
	switch {
	case path == "" || u.stage == stageSucceeded:
	case u.attempt != PhaseIdle || u.stage == stageChild:
		u.unlinks = append(u.unlinks, path)
	default:
		u.removeSocket(path)
	}
}

// flushUnlinks removes the socket paths closed while another process could
// own them, now that none does. u.mu is held.
func (u *Upgrader) flushUnlinks() {
	if u.stage != stageSucceeded {
		for _, p := range u.unlinks {
			u.removeSocket(p)
		}
	}
	u.unlinks = nil
}

// removeSocket unlinks a unix socket path. u.mu is held.
func (u *Upgrader) removeSocket(path string) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		u.log.Warn("upgrade: remove unix socket", logkey.Path, path, logkey.Err, err)
	}
}

func unixPath(a net.Addr) string {
	if a == nil || a.String() == "" || a.String()[0] == '@' {
		return "" // unnamed or abstract: nothing to unlink
	}
	return a.String()
}
