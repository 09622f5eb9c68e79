package upgrade

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// gate blocks Accept (or ReadFrom) while this process is in probation: the
// new process accepts on the shared socket, this one keeps its descriptor so
// it can resume if the new process dies.
type gate struct {
	mu     sync.Mutex    // protects paused, resume and closed
	paused bool          // Accept must wait on resume
	resume chan struct{} // closed when paused turns false or the gate closes
	closed bool
}

// wait blocks while the gate is paused. It returns net.ErrClosed once the gate
// is closed.
func (g *gate) wait() error {
	for {
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			return net.ErrClosed
		}
		if !g.paused {
			g.mu.Unlock()
			return nil
		}
		c := g.resume
		g.mu.Unlock()
		<-c
	}
}

// set pauses or resumes the gate; interrupt is called under the lock after
// the state changed, so an Accept that started before a pause is woken.
func (g *gate) set(paused bool, interrupt func(paused bool)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.paused == paused {
		return
	}
	if paused {
		g.paused = true
		g.resume = make(chan struct{})
		interrupt(true)
		return
	}
	interrupt(false)
	g.paused = false
	close(g.resume)
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	if g.paused {
		close(g.resume)
	}
}

// deadliner is implemented by *net.TCPListener and *net.UnixListener.
type deadliner interface {
	SetDeadline(time.Time) error
}

// listener wraps a stream listener registered with an Upgrader. While paused,
// Accept blocks without calling accept(2), so the new process gets every
// connection; the descriptor stays open so the old process can resume.
//
// A paused Accept already blocked in the poller is woken by setting the
// listener's deadline to now; the resulting timeout is swallowed. The wrapper
// does not expose SetDeadline, so every timeout it sees is its own.
type listener struct {
	net.Listener
	g      gate
	u      *Upgrader
	name   string
	unlink string // unix socket path to remove when the last owner closes it
	once   sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		if err := l.g.wait(); err != nil {
			return nil, err
		}
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue // interrupted by pause; wait on the gate again
		}
		return nil, err
	}
}

func (l *listener) pause(p bool) {
	l.g.set(p, func(p bool) {
		d, ok := l.Listener.(deadliner)
		if !ok {
			return
		}
		if p {
			d.SetDeadline(time.Now())
		} else {
			d.SetDeadline(time.Time{})
		}
	})
}

// Close closes this process's descriptor. The socket lives on in a successor.
// A unix socket path is removed only when no successor owns the socket.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		l.g.close()
		err = l.Listener.Close()
		l.u.forget(l.name, l.unlink)
	})
	return err
}

func (l *listener) syscallConn() (syscall.RawConn, error) {
	sc, ok := l.Listener.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("listener %T has no file descriptor", l.Listener)
	}
	return sc.SyscallConn()
}

// packetConn wraps a packet socket registered with an Upgrader. While paused,
// ReadFrom blocks without reading, so datagrams stay in the shared socket for
// the new process. Read deadlines set by the caller are honoured.
type packetConn struct {
	net.PacketConn
	g      gate
	u      *Upgrader
	name   string
	unlink string
	once   sync.Once

	mu       sync.Mutex // protects deadline
	deadline time.Time  // the caller's read deadline
}

func (p *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		if err := p.g.wait(); err != nil {
			return 0, nil, err
		}
		n, addr, err := p.PacketConn.ReadFrom(b)
		if err == nil {
			return n, addr, nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			p.mu.Lock()
			d := p.deadline
			p.mu.Unlock()
			if !d.IsZero() && !time.Now().Before(d) {
				return n, addr, err // the caller's deadline
			}
			continue // interrupted by pause
		}
		return n, addr, err
	}
}

func (p *packetConn) SetDeadline(t time.Time) error {
	if err := p.SetReadDeadline(t); err != nil {
		return err
	}
	return p.PacketConn.SetWriteDeadline(t)
}

func (p *packetConn) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	p.deadline = t
	p.mu.Unlock()
	p.g.mu.Lock()
	defer p.g.mu.Unlock()
	if p.g.paused {
		return nil // applied on resume
	}
	return p.PacketConn.SetReadDeadline(t)
}

func (p *packetConn) pause(paused bool) {
	p.g.set(paused, func(paused bool) {
		if paused {
			p.PacketConn.SetReadDeadline(time.Now())
			return
		}
		p.mu.Lock()
		d := p.deadline
		p.mu.Unlock()
		p.PacketConn.SetReadDeadline(d)
	})
}

func (p *packetConn) Close() error {
	var err error
	p.once.Do(func() {
		p.g.close()
		err = p.PacketConn.Close()
		p.u.forget(p.name, p.unlink)
	})
	return err
}

func (p *packetConn) syscallConn() (syscall.RawConn, error) {
	sc, ok := p.PacketConn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("packet conn %T has no file descriptor", p.PacketConn)
	}
	return sc.SyscallConn()
}
