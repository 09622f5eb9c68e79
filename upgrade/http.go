package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// HTTPOptions configure an HTTPServer. The zero value is usable.
type HTTPOptions struct {
	// Logger receives a line when a drain starts and ends. Defaults to nil
	// (discard).
	Logger *slog.Logger
}

// HTTPServer serves an *http.Server so that it can be drained with no
// failed request: every HTTP/1.x connection ends right after a complete
// response marked "Connection: close", every HTTP/2 connection (over TLS or
// cleartext h2c) is sent a graceful GOAWAY, and no connection is closed
// while its client may be sending a request on it, unless the drain
// deadline passes.
//
// Create it with NewHTTPServer before serving, serve with Serve, and call
// Drain when the Upgrader's Exit channel closes (or to shut down). An
// HTTPServer is safe for concurrent use.
//
// # What Drain guarantees
//
// Drain first closes the listeners given to Serve. With an Upgrader the new
// process holds the same sockets, so no connection is refused and none
// waiting in the accept queue is lost. Then:
//
//   - A connection with a request in flight finishes it; if the handler had
//     not yet written the response header when the drain began, the
//     response carries "Connection: close" and the server closes the
//     connection after it.
//   - An idle keep-alive connection is left open until its client sends the
//     next request, which is answered with "Connection: close". It is not
//     closed: a client may be writing a request at that very moment, and
//     closing would fail that request (HTTP/1.1 has no way to tell a client
//     to stop before it sends).
//   - A connection accepted but with no request yet (golang/go#75591, which
//     http.Server.Shutdown closes without a reply) is treated the same way:
//     its request is served, with "Connection: close".
//
// Drain returns nil once every connection ended by itself.
//
// # What it cannot guarantee
//
//   - When ctx is done, connections still open are closed and Drain returns
//     a *DrainError counting them. A client idle longer than the drain
//     deadline, or one whose request is still running then, may see a
//     reset or EOF if it sends at that moment. Give the drain a deadline
//     longer than your clients' idle keep-alive time (Go's Transport: 90s)
//     or make clients retry idempotent requests on a fresh connection.
//   - A response whose header the handler wrote before the drain began
//     carries no "Connection: close"; that connection ends after its next
//     request instead.
//   - A client that pipelines a second request before reading the
//     "Connection: close" response loses the second one. Browsers and Go
//     clients do not pipeline.
//   - An HTTP/2 connection (ServeTLS, or h2c when srv.Protocols enables
//     unencrypted HTTP/2) is sent a GOAWAY frame when the drain starts,
//     naming the last stream the server took: its streams in flight
//     finish, and the client opens its next streams on a new connection,
//     served by the new process. A stream the client opened while the
//     GOAWAY was on its way was never processed, and the GOAWAY says so:
//     conforming clients (Go's, grpc-go, browsers, nghttp2) retry it on the
//     new connection by themselves. The connection closes once its last
//     stream ended. This needs net/http's own HTTP/2 server: if srv's
//     TLSNextProto is set before NewHTTPServer (x/net/http2), connections
//     get their GOAWAY only with their next response.
//   - Long-lived requests (server-sent events, streaming bodies, hijacked
//     WebSocket connections) cannot finish by themselves: their handlers
//     learn that a drain started, and its deadline, from Notice or
//     NoticeFrom(r.Context()), and should tell their client to reconnect
//     and return. Drain waits for them, hijacked ones included, until ctx
//     ends; hijacked connections are the handler's to close.
//   - The server's own timeouts (IdleTimeout, ReadTimeout) still apply and
//     close connections as they always do.
type HTTPServer struct {
	srv      *http.Server
	log      *slog.Logger
	handler  http.Handler
	connHook func(net.Conn, http.ConnState)
	notice   *DrainNotice
	h2       *http2Drain // nil if net/http's HTTP/2 server is not in use
	// draining is set once by Drain; the handler reads it on every request.
	draining atomic.Bool

	mu        sync.Mutex // protects conns, listeners, serving, hijacked and changed
	conns     map[net.Conn]http.ConnState
	listeners []net.Listener
	serving   int           // Serve calls running
	hijacked  int           // handlers running on a hijacked connection
	changed   chan struct{} // closed and replaced whenever conns, serving or hijacked shrink
}

// NewHTTPServer prepares srv for draining: it wraps srv.Handler (nil means
// http.DefaultServeMux), srv.ConnState (which is still called) and
// srv.BaseContext (to put Notice in every request's context), and, unless
// srv.TLSNextProto is already set, installs net/http's HTTP/2 server in a
// way Drain can send GOAWAY through. Do not change these fields afterwards.
func NewHTTPServer(srv *http.Server, opts HTTPOptions) *HTTPServer {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &HTTPServer{
		srv:      srv,
		log:      log,
		handler:  srv.Handler,
		connHook: srv.ConnState,
		notice:   NewDrainNotice(),
		conns:    make(map[net.Conn]http.ConnState),
		changed:  make(chan struct{}),
	}
	if s.handler == nil {
		s.handler = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(s.serveHTTP)
	srv.ConnState = s.connState
	base := srv.BaseContext
	srv.BaseContext = func(ln net.Listener) context.Context {
		ctx := context.Background()
		if base != nil {
			ctx = base(ln)
		}
		return WithNotice(ctx, s.notice)
	}
	s.h2 = installHTTP2(srv, log)
	return s
}

// Notice fires when Drain starts. Every request's context carries it too
// (NoticeFrom).
func (s *HTTPServer) Notice() *DrainNotice { return s.notice }

func (s *HTTPServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	dw := &drainWriter{ResponseWriter: w, s: s}
	defer dw.done()
	s.handler.ServeHTTP(dw, r)
	// A handler that wrote nothing: net/http writes the header after we
	// return, so it can still say Connection: close.
	dw.mark()
}

// drainWriter adds "Connection: close" to a response whose header is
// written after the drain began. It is used by one handler goroutine.
type drainWriter struct {
	http.ResponseWriter
	s        *HTTPServer
	marked   bool // the header was written (or about to be)
	hijacked bool // counted in s.hijacked until the handler returns
}

// done stops counting a hijacked connection once its handler returned.
func (w *drainWriter) done() {
	if !w.hijacked {
		return
	}
	w.s.mu.Lock()
	w.s.hijacked--
	w.s.signal()
	w.s.mu.Unlock()
}

func (w *drainWriter) mark() {
	if w.marked {
		return
	}
	w.marked = true
	if w.s.draining.Load() {
		w.ResponseWriter.Header().Set("Connection", "close")
	}
}

func (w *drainWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.mark() // 1xx informational headers may precede the real one
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *drainWriter) Write(b []byte) (int, error) {
	w.mark()
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps io.Copy's sendfile path.
func (w *drainWriter) ReadFrom(r io.Reader) (int64, error) {
	w.mark()
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

// Flush implements http.Flusher.
func (w *drainWriter) Flush() {
	w.mark()
	http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker. Drain waits for the handler of a
// hijacked connection to return.
func (w *drainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && !w.hijacked {
		w.hijacked = true
		w.s.mu.Lock()
		w.s.hijacked++
		w.s.mu.Unlock()
	}
	return c, rw, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *drainWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *HTTPServer) connState(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
		s.signal()
	default:
		s.conns[c] = st
	}
	s.mu.Unlock()
	if s.h2 != nil && st != http.StateNew {
		s.h2.connState(c, st, s.draining.Load())
	}
	if s.connHook != nil {
		s.connHook(c, st)
	}
}

// signal wakes Drain. s.mu is held.
func (s *HTTPServer) signal() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Serve serves connections from ln until Drain closes it (then it returns
// nil) or ln fails. With a listener of *tls.Conn (tls.NewListener) whose
// configuration offers "h2", clients may speak HTTP/2.
func (s *HTTPServer) Serve(ln net.Listener) error {
	return s.serve(ln, func() error { return s.srv.Serve(ln) })
}

// ServeTLS is Serve over TLS, as http.Server.ServeTLS: HTTP/2 is offered
// unless srv.Protocols leaves it out. certFile and keyFile may be empty if
// srv.TLSConfig has a certificate. Use Upgrader.ShareSessionTickets on
// srv.TLSConfig so that clients resume their sessions after an upgrade.
func (s *HTTPServer) ServeTLS(ln net.Listener, certFile, keyFile string) error {
	return s.serve(ln, func() error { return s.srv.ServeTLS(ln, certFile, keyFile) })
}

func (s *HTTPServer) serve(ln net.Listener, serve func() error) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return fmt.Errorf("serve %v: %w", ln.Addr(), http.ErrServerClosed)
	}
	s.listeners = append(s.listeners, ln)
	s.serving++
	s.mu.Unlock()
	err := serve()
	s.mu.Lock()
	s.serving--
	s.signal()
	s.mu.Unlock()
	if s.draining.Load() {
		return nil
	}
	return err
}

// DrainError reports connections that were still open when the drain
// deadline passed and were closed. It unwraps to the context's error.
type DrainError struct {
	Active int // a request was in flight (HTTP/2: a stream was)
	Idle   int // between requests
	New    int // accepted, no request yet
	// Hijacked counts handlers of hijacked connections still running; the
	// drain cannot close those connections.
	Hijacked int
	Err      error
}

func (e *DrainError) Error() string {
	s := fmt.Sprintf("drain: closed %d connections at the deadline (%d active, %d idle, %d new)",
		e.Active+e.Idle+e.New, e.Active, e.Idle, e.New)
	if e.Hijacked > 0 {
		s += fmt.Sprintf("; %d hijacked connections still open", e.Hijacked)
	}
	return s + ": " + e.Err.Error()
}

func (e *DrainError) Unwrap() error { return e.Err }

// Drain stops accepting, fires Notice with ctx's deadline, sends every
// HTTP/2 connection a GOAWAY and waits until every connection has ended
// (HTTP/1.x: after a response marked "Connection: close") and every
// handler of a hijacked connection returned; see the type's documentation
// for the exact guarantees. When ctx is done first, it closes what is left
// and returns a *DrainError. Drain ends the server: call it once.
func (s *HTTPServer) Drain(ctx context.Context) error {
	start := time.Now()
	s.mu.Lock()
	s.draining.Store(true)
	lns := s.listeners
	s.listeners = nil
	n := len(s.conns)
	s.mu.Unlock()
	s.notice.Start(ctx)
	s.log.Info("http drain: started", "conns", n)

	var errs []error
	for _, ln := range lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close listener %v: %w", ln.Addr(), err))
		}
	}
	if s.h2 != nil {
		s.h2.goAway()
	}

	for {
		s.mu.Lock()
		// Wait for Serve to return too: a connection accepted just before
		// the listener closed is tracked only once Serve saw it.
		if s.serving == 0 && len(s.conns) == 0 && s.hijacked == 0 {
			s.mu.Unlock()
			break
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
			continue
		case <-ctx.Done():
		}
		s.mu.Lock()
		de := &DrainError{Hijacked: s.hijacked, Err: ctx.Err()}
		for _, st := range s.conns {
			switch st {
			case http.StateNew:
				de.New++
			case http.StateIdle:
				de.Idle++
			default:
				de.Active++
			}
		}
		s.mu.Unlock()
		s.srv.Close()
		s.log.Warn("http drain: deadline passed", logkey.Err, de, "after", time.Since(start))
		if len(errs) > 0 {
			return errors.Join(append(errs, de)...)
		}
		return de
	}
	s.srv.Close() // nothing left; releases the server's state
	s.log.Info("http drain: done", "after", time.Since(start))
	return errors.Join(errs...)
}
