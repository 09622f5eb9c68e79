package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/host"
)

// SocketEnv names the environment variable that overrides the default
// control socket path.
const SocketEnv = "HOTSWAP_SOCKET"

// SocketMode is the permission of the control socket file. Connecting needs
// write permission, so only the owner (and root) get past the file system;
// the peer-credential check then applies the allow-list.
const SocketMode = 0o600

// DefaultSocketPath returns $HOTSWAP_SOCKET, or hotswap.sock in the host's
// default state directory (see host.DefaultStateDir), or "" when there is
// no default state directory either (Listen and the client then say what to
// set).
func DefaultSocketPath() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	dir, err := host.DefaultStateDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "hotswap.sock")
}

// errNoSocket is the error of an empty socket path.
var errNoSocket = errors.New("no control socket path: pass one (--socket), or set $" + SocketEnv + " or $" + host.StateDirEnv)

// Listen returns the control socket at path for Server.Serve. When h has an
// upgrader the socket comes from it: a process started by a binary upgrade
// inherits the socket of the process it replaces, so the path never
// disappears and never refuses connections during an upgrade. Otherwise, or
// in a process started fresh, Listen creates the socket (and its directory,
// mode 0700): a socket file left by a process that died is replaced, a
// socket someone answers on is not. The socket's mode is SocketMode.
//
// ctx bounds the creation of the socket.
func Listen(ctx context.Context, h *host.Host, path string) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("control: %w", errNoSocket)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control: listen %s: %w", path, err)
	}
	listen := func() (net.Listener, error) {
		if up := h.Upgrader(); up != nil {
			return up.Listen(ctx, "unix", path)
		}
		var lc net.ListenConfig
		return lc.Listen(ctx, "unix", path)
	}
	ln, err := listen()
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		if rerr := removeStale(ctx, path); rerr != nil {
			return nil, fmt.Errorf("control: listen %s: %w", path, rerr)
		}
		ln, err = listen()
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	// The mode is set after bind(2): a fresh socket is briefly as open as
	// the umask allows. The peer-credential check, not the mode, is what
	// refuses other users.
	if err := os.Chmod(path, SocketMode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: listen %s: %w", path, err)
	}
	return ln, nil
}

// removeStale removes the socket file at path if no process answers on it.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("another process serves %s", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check whether %s is in use: %w", path, err)
	}
	return os.Remove(path)
}
