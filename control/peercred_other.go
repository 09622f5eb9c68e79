//go:build !linux

package control

import (
	"errors"
	"net"
)

// peerCredentials fails outside Linux, so every request is refused: the
// allow-list cannot be checked.
func peerCredentials(net.Conn) (uid, pid int, err error) {
	return 0, 0, errors.New("peer credentials are only read on Linux")
}
