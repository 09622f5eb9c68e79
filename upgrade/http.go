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
)

// HTTPOptions configure an HTTPServer. The zero value is usable.
type HTTPOptions struct {
	// Logger receives a line when a drain starts and ends. Defaults to nil
	// (discard).
	Logger *slog.Logger
}

// HTTPServer serves an *http.Server so that it can be drained with no
// failed request: every HTTP/1.x connection ends right after a complete
// response marked "Connection: close", and no connection is closed while
// its client may be sending a request on it, unless the drain deadline
// passes.
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
//   - HTTP/2 connections are not drained this way: the header is
//     meaningless there. Serve HTTP/1.1 (the default without TLS), or rely
//     on http.Server.Shutdown's GOAWAY for HTTP/2.
//   - Hijacked connections (WebSocket) are the handler's to close.
//   - The server's own timeouts (IdleTimeout, ReadTimeout) still apply and
//     close connections as they always do.
type HTTPServer struct {
	srv      *http.Server
	log      *slog.Logger
	handler  http.Handler
	connHook func(net.Conn, http.ConnState)
	// draining is set once by Drain; the handler reads it on every request.
	draining atomic.Bool

	mu        sync.Mutex // protects conns, listeners, serving and changed
	conns     map[net.Conn]http.ConnState
	listeners []net.Listener
	serving   int           // Serve calls running
	changed   chan struct{} // closed and replaced whenever conns or serving shrink
}

// NewHTTPServer prepares srv for draining: it wraps srv.Handler (nil means
// http.DefaultServeMux) and srv.ConnState (which is still called). Do not
// change either afterwards.
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
		conns:    make(map[net.Conn]http.ConnState),
		changed:  make(chan struct{}),
	}
	if s.handler == nil {
		s.handler = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(s.serveHTTP)
	srv.ConnState = s.connState
	return s
}

func (s *HTTPServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	dw := &drainWriter{ResponseWriter: w, draining: &s.draining}
	s.handler.ServeHTTP(dw, r)
	// A handler that wrote nothing: net/http writes the header after we
	// return, so it can still say Connection: close.
	dw.mark()
}

// drainWriter adds "Connection: close" to a response whose header is
// written after the drain began. It is used by one handler goroutine.
type drainWriter struct {
	http.ResponseWriter
	draining *atomic.Bool
	marked   bool // the header was written (or about to be)
}

func (w *drainWriter) mark() {
	if w.marked {
		return
	}
	w.marked = true
	if w.draining.Load() {
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

// Hijack implements http.Hijacker.
func (w *drainWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
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
// nil) or ln fails.
func (s *HTTPServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return fmt.Errorf("serve %v: %w", ln.Addr(), http.ErrServerClosed)
	}
	s.listeners = append(s.listeners, ln)
	s.serving++
	s.mu.Unlock()
	err := s.srv.Serve(ln)
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
	Active int // a request was in flight
	Idle   int // between requests
	New    int // accepted, no request yet
	Err    error
}

func (e *DrainError) Error() string {
	return fmt.Sprintf("drain: closed %d connections at the deadline (%d active, %d idle, %d new): %v",
		e.Active+e.Idle+e.New, e.Active, e.Idle, e.New, e.Err)
}

func (e *DrainError) Unwrap() error { return e.Err }

// Drain stops accepting and waits until every connection has ended after a
// response marked "Connection: close"; see the type's documentation for the
// exact guarantees. When ctx is done first, it closes what is left and
// returns a *DrainError. Drain ends the server: call it once.
func (s *HTTPServer) Drain(ctx context.Context) error {
	start := time.Now()
	s.mu.Lock()
	s.draining.Store(true)
	lns := s.listeners
	s.listeners = nil
	n := len(s.conns)
	s.mu.Unlock()
	s.log.Info("http drain: started", "conns", n)

	var errs []error
	for _, ln := range lns {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close listener %v: %w", ln.Addr(), err))
		}
	}

	for {
		s.mu.Lock()
		// Wait for Serve to return too: a connection accepted just before
		// the listener closed is tracked only once Serve saw it.
		if s.serving == 0 && len(s.conns) == 0 {
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
		de := &DrainError{Err: ctx.Err()}
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
		s.log.Warn("http drain: deadline passed", "err", de, "after", time.Since(start))
		if len(errs) > 0 {
			return errors.Join(append(errs, de)...)
		}
		return de
	}
	s.srv.Close() // nothing left; releases the server's state
	s.log.Info("http drain: done", "after", time.Since(start))
	return errors.Join(errs...)
}
