package upgrade

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// http2Drain sends GOAWAY to the HTTP/2 connections of one http.Server.
//
// net/http's HTTP/2 server sends a graceful GOAWAY to its connections only
// from Server.Shutdown (through RegisterOnShutdown), and Shutdown also
// closes idle HTTP/1 connections under clients that may be sending on them
// — the failure HTTPServer exists to avoid. So the HTTP/2 server is
// installed from a second http.Server, trigger, that never serves a
// listener: it is primed once so that net/http configures HTTP/2 on it,
// and its TLSNextProto handlers (which serve each connection with the
// configuration of the server that calls them) are copied into the served
// server. The GOAWAY hook is then registered on trigger, whose Shutdown
// has no listener and no connection of its own to close: calling it sends
// GOAWAY to every HTTP/2 connection and returns.
type http2Drain struct {
	trigger *http.Server
	log     *slog.Logger

	mu sync.Mutex // protects conns
	// conns are the HTTP/2 connections being served, keyed as ConnState
	// sees them; true once the HTTP/2 server reported a state for it,
	// which it does only after registering it for GOAWAY.
	conns map[net.Conn]bool
}

// installHTTP2 installs net/http's HTTP/2 server on srv as described on
// http2Drain. It returns nil, leaving srv alone, if srv.TLSNextProto is
// already set (by the caller or x/net/http2), srv.Protocols leaves out
// HTTP/2, or net/http does not configure HTTP/2 (GODEBUG=http2server=0).
func installHTTP2(srv *http.Server, log *slog.Logger) *http2Drain {
	if srv.TLSNextProto != nil {
		return nil
	}
	if p := srv.Protocols; p != nil && !p.HTTP2() && !p.UnencryptedHTTP2() {
		return nil
	}
	var both http.Protocols
	both.SetHTTP2(true)
	both.SetUnencryptedHTTP2(true)
	d := &http2Drain{trigger: &http.Server{Protocols: &both}, log: log, conns: make(map[net.Conn]bool)}
	// Serve configures HTTP/2 before it accepts; the listener fails at once.
	d.trigger.Serve(primeListener{})
	if len(d.trigger.TLSNextProto) == 0 {
		log.Warn("http drain: net/http did not configure HTTP/2; serving without it")
		return nil
	}
	srv.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler), len(d.trigger.TLSNextProto))
	for proto, serve := range d.trigger.TLSNextProto {
		srv.TLSNextProto[proto] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
			key := connKey(c)
			d.mu.Lock()
			d.conns[key] = false
			d.mu.Unlock()
			defer func() {
				d.mu.Lock()
				delete(d.conns, key)
				d.mu.Unlock()
			}()
			serve(hs, c, h) // returns when the connection closed
		}
	}
	return d
}

// connKey is the net.Conn under which net/http reports an HTTP/2
// connection's states: the *tls.Conn, or for cleartext HTTP/2 the
// connection inside the stand-in *tls.Conn net/http passes.
func connKey(c *tls.Conn) net.Conn {
	if u, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn }); ok {
		return u.UnencryptedNetConn()
	}
	return c
}

// connState notes that the HTTP/2 server registered c, and sends it a
// GOAWAY if a drain started before that.
func (d *http2Drain) connState(c net.Conn, st http.ConnState, draining bool) {
	d.mu.Lock()
	registered, ok := d.conns[c]
	if ok && !registered {
		d.conns[c] = true
	}
	d.mu.Unlock()
	if ok && !registered && draining {
		d.goAway()
	}
}

// goAway sends a graceful GOAWAY to every registered HTTP/2 connection
// that has not had one; those that are idle close at once, the others
// after their last stream.
func (d *http2Drain) goAway() {
	if err := d.trigger.Shutdown(context.Background()); err != nil {
		d.log.Warn("http drain: send GOAWAY", logkey.Err, err)
	}
}

// primeListener fails every Accept, so that Serve returns as soon as it has
// configured HTTP/2.
type primeListener struct{}

func (primeListener) Accept() (net.Conn, error) { return nil, errPrimed }
func (primeListener) Close() error              { return nil }
func (primeListener) Addr() net.Addr            { return &net.TCPAddr{} }

var errPrimed = errors.New("only configuring HTTP/2")
