// Package vethpair makes two network namespaces joined by a veth pair, for
// tests and benchmarks of programs attached to a network interface. It runs
// the ip(8) command of iproute2.
package vethpair

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hotswapgo/hotswap/internal/netns"
)

// Addresses of the two ends.
var (
	SenderAddr   = netip.MustParseAddr("10.199.0.1")
	ReceiverAddr = netip.MustParseAddr("10.199.0.2")
)

// Interface names inside the namespaces.
const (
	SenderIf   = "hsveth0"
	ReceiverIf = "hsveth1"
)

// cmdTimeout bounds one ip(8) command.
const cmdTimeout = 10 * time.Second

// Pair is two network namespaces, the sender's and the receiver's, joined
// by a veth pair: SenderIf (SenderAddr) in one, ReceiverIf (ReceiverAddr)
// in the other. Close removes both namespaces and with them the pair.
type Pair struct {
	Sender, Receiver string // namespace names, under /run/netns
}

// New makes a pair with namespace names starting with prefix and a random
// suffix, so concurrent pairs do not collide.
func New(ctx context.Context, prefix string) (*Pair, error) {
	var b [4]byte
	rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	p := &Pair{Sender: prefix + "s" + suffix, Receiver: prefix + "r" + suffix}
	steps := [][]string{
		{"netns", "add", p.Sender},
		{"netns", "add", p.Receiver},
		{"-n", p.Sender, "link", "add", SenderIf, "type", "veth", "peer", "name", ReceiverIf, "netns", p.Receiver},
		{"-n", p.Sender, "addr", "add", SenderAddr.String() + "/24", "dev", SenderIf},
		{"-n", p.Receiver, "addr", "add", ReceiverAddr.String() + "/24", "dev", ReceiverIf},
		{"-n", p.Sender, "link", "set", SenderIf, "up"},
		{"-n", p.Receiver, "link", "set", ReceiverIf, "up"},
		{"-n", p.Sender, "link", "set", "lo", "up"},
		{"-n", p.Receiver, "link", "set", "lo", "up"},
	}
	for _, args := range steps {
		if err := ip(ctx, args...); err != nil {
			return nil, errors.Join(err, p.Close())
		}
	}
	return p, nil
}

// SenderPath and ReceiverPath are the namespaces' files, for netns.Do and
// for options that take a namespace path.
func (p *Pair) SenderPath() string   { return filepath.Join("/run/netns", p.Sender) }
func (p *Pair) ReceiverPath() string { return filepath.Join("/run/netns", p.Receiver) }

// Listen opens a UDP socket on ReceiverAddr:port in the receiver's
// namespace.
func (p *Pair) Listen(port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := netns.Do(p.ReceiverPath(), func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ReceiverAddr, port)))
		return err
	})
	return c, err
}

// Dial opens a UDP socket in the sender's namespace, connected to
// ReceiverAddr:port.
func (p *Pair) Dial(port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := netns.Do(p.SenderPath(), func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ReceiverAddr, port)))
		return err
	})
	return c, err
}

// Close deletes both namespaces; the veth pair goes with them.
func (p *Pair) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*cmdTimeout)
	defer cancel()
	var errs []error
	for _, ns := range []string{p.Sender, p.Receiver} {
		if err := ip(ctx, "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func ip(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RoundTrip sends n datagrams to ReceiverAddr:port from the sender's
// namespace and returns how many a socket on that port received, waiting at
// most a second for each.
func (p *Pair) RoundTrip(port uint16, n int) (int, error) {
	rx, err := p.Listen(port)
	if err != nil {
		return 0, err
	}
	defer rx.Close()
	tx, err := p.Dial(port)
	if err != nil {
		return 0, err
	}
	defer tx.Close()
	msg := []byte("hotswap")
	for range n {
		if _, err := tx.Write(msg); err != nil {
			return 0, err
		}
	}
	buf := make([]byte, 64)
	got := 0
	for got < n {
		rx.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := rx.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return got, nil
			}
			return got, err
		}
		got++
	}
	return got, nil
}
