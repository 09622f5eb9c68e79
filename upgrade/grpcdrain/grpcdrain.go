// Package grpcdrain drains a gRPC server across a binary upgrade with no
// failed call: unary calls and streams in flight finish on the old process,
// new ones go to the new process, and long-lived streams end with a status
// the client retries (codes.Unavailable) instead of a broken connection.
//
// It is a separate package so that services without gRPC do not link it.
//
//	u, _ := upgrade.New(upgrade.Options{})
//	ln, _ := u.Listen(ctx, "tcp", ":50051")      // handed over as any listener
//	s := grpcdrain.NewServer(grpcdrain.Options{}) // grpc.ServerOption...s may follow
//	pb.RegisterEchoServer(s, impl)                // s is a grpc.ServiceRegistrar
//	go s.Serve(ln)
//	u.Ready()
//	<-u.Exit()
//	s.Drain(ctxWithDeadline)
//
// # What Drain guarantees
//
// Drain stops accepting (the new process holds the same socket, so no
// connection is refused) and calls grpc.Server.GracefulStop, which sends
// every connection a GOAWAY in two steps: first one that promises to
// process every stream, then, once the client acknowledged a ping, one
// naming the last stream taken. A client (grpc-go, and the other official
// implementations) opens its next calls on a new connection, to the new
// process; calls it started before it saw the GOAWAY are processed by the
// old one, so none is refused. In-flight unary calls and streams run to
// their end.
//
// Streams that would outlive the drain are told through Notice (and
// upgrade.NoticeFrom on the stream's context) that the drain started and
// when it ends; a handler should end its stream with ErrReconnect, which
// the client sees as codes.Unavailable and answers by opening the stream
// again. Handlers that do not listen are ended for them
// Options.EndStreamsBefore the deadline: their context is cancelled and,
// whatever they return, the stream ends with ErrReconnect. When ctx ends,
// what is still running is cut (grpc.Server.Stop) and Drain returns a
// *DrainError counting it; handlers that ignore their context may still
// be running then.
package grpcdrain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/upgrade"
)

// DefaultEndStreamsBefore is Options.EndStreamsBefore's default.
const DefaultEndStreamsBefore = time.Second

// ErrReconnect is the status a stream ends with when the server drains:
// codes.Unavailable, which gRPC defines as transient — the client should
// open the stream again, and will reach the new process.
var ErrReconnect = status.Error(codes.Unavailable, "server restarting for an upgrade: reconnect")

// errEnded is the cause of a stream context cancelled by the drain.
var errEnded = errors.New("stream ended by the drain")

// Options configure a Server. The zero value is usable.
type Options struct {
	// EndStreamsBefore is how long before the drain deadline the streams
	// still running are ended with ErrReconnect, so that they end with a
	// status before the connections are cut. Defaults to
	// DefaultEndStreamsBefore (1s); a negative value never ends them.
	EndStreamsBefore time.Duration
	// Logger receives a line when a drain starts and ends. Defaults to nil
	// (discard).
	Logger *slog.Logger
}

// Server is a *grpc.Server that can be drained. Create it with NewServer,
// register services on it (it is a grpc.ServiceRegistrar), serve with
// Serve and call Drain when the Upgrader's Exit channel closes. A Server is
// safe for concurrent use.
type Server struct {
	grpc   *grpc.Server
	log    *slog.Logger
	notice *upgrade.DrainNotice
	endAt  time.Duration // EndStreamsBefore

	mu      sync.Mutex // protects streams, unary and ended
	streams map[*stream]struct{}
	unary   int  // unary calls running
	ended   bool // streams are being ended: new ones end at once
}

// NewServer creates the gRPC server with sopts and interceptors of its
// own: they count the calls in flight, put Notice in every call's context
// and end streams when the drain says so.
func NewServer(opts Options, sopts ...grpc.ServerOption) *Server {
	if opts.EndStreamsBefore == 0 {
		opts.EndStreamsBefore = DefaultEndStreamsBefore
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:     log,
		notice:  upgrade.NewDrainNotice(),
		endAt:   opts.EndStreamsBefore,
		streams: make(map[*stream]struct{}),
	}
	ours := []grpc.ServerOption{grpc.ChainUnaryInterceptor(s.unaryInterceptor), grpc.ChainStreamInterceptor(s.streamInterceptor)}
	s.grpc = grpc.NewServer(append(ours, sopts...)...)
	return s
}

// GRPC returns the underlying server, for what needs a *grpc.Server. Do not
// call its Stop or GracefulStop: Drain does.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// RegisterService implements grpc.ServiceRegistrar.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
}

// Notice fires when Drain starts; every call's context carries it too
// (upgrade.NoticeFrom).
func (s *Server) Notice() *upgrade.DrainNotice { return s.notice }

// Serve serves ln until Drain (then it returns nil) or ln fails.
func (s *Server) Serve(ln net.Listener) error { return s.grpc.Serve(ln) }

// DrainError reports calls that were still running when the drain
// deadline passed and were cut. It unwraps to the context's error.
type DrainError struct {
	Unary   int
	Streams int
	Err     error
}

func (e *DrainError) Error() string {
	return fmt.Sprintf("grpc drain: cut %d unary calls and %d streams at the deadline: %v", e.Unary, e.Streams, e.Err)
}

func (e *DrainError) Unwrap() error { return e.Err }

// Drain stops accepting, fires Notice with ctx's deadline and waits until
// every call finished; see the package documentation. Drain ends the
// server: call it once.
func (s *Server) Drain(ctx context.Context) error {
	start := time.Now()
	s.notice.Start(ctx)
	s.mu.Lock()
	s.log.Info("grpc drain: started", "unary", s.unary, "streams", len(s.streams))
	s.mu.Unlock()

	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	var endStreams <-chan time.Time
	if d, ok := ctx.Deadline(); ok && s.endAt > 0 {
		t := time.NewTimer(time.Until(d.Add(-s.endAt)))
		defer t.Stop()
		endStreams = t.C
	}
wait:
	for {
		select {
		case <-stopped:
			s.log.Info("grpc drain: done", "after", time.Since(start))
			return nil
		case <-endStreams:
			endStreams = nil
			s.endStreams()
		case <-ctx.Done():
			break wait
		}
	}
	s.mu.Lock()
	de := &DrainError{Unary: s.unary, Streams: len(s.streams), Err: ctx.Err()}
	s.mu.Unlock()
	// Stop closes the connections; GracefulStop returns once the handlers
	// that ignore their context returned too, which Drain does not wait for.
	s.grpc.Stop()
	s.log.Warn("grpc drain: deadline passed", logkey.Err, de, "after", time.Since(start))
	return de
}

// endStreams cancels the context of every stream, and of those that start
// from now on.
func (s *Server) endStreams() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	s.log.Info("grpc drain: ending streams", "streams", len(s.streams))
	for st := range s.streams {
		st.cancel(errEnded)
	}
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.mu.Lock()
	s.unary++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.unary--
		s.mu.Unlock()
	}()
	return handler(upgrade.WithNotice(ctx, s.notice), req)
}

// stream is a server stream whose context the drain can cancel.
type stream struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (st *stream) Context() context.Context { return st.ctx }

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancelCause(upgrade.WithNotice(ss.Context(), s.notice))
	defer cancel(nil)
	st := &stream{ServerStream: ss, ctx: ctx, cancel: cancel}
	s.mu.Lock()
	s.streams[st] = struct{}{}
	if s.ended {
		cancel(errEnded)
	}
	s.mu.Unlock()
	err := handler(srv, st)
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
	if errors.Is(context.Cause(ctx), errEnded) {
		return ErrReconnect
	}
	return err
}
