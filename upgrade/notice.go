package upgrade

import (
	"context"
	"sync"
	"time"
)

// DrainNotice tells the code serving long-lived connections (streams,
// WebSockets, server-sent events, raw TCP sessions) that a drain started
// and by when their connections must end, so that each can hand its client
// over in its protocol's words: WebSocket close code 1012 "service
// restart", an SSE "retry:" line and the end of the stream, a gRPC stream
// ended with codes.Unavailable. The client then reconnects, to the new
// process. docs/upgrade.md has one recipe per protocol.
//
// Servers own one notice each (HTTPServer.Notice, grpcdrain's
// Server.Notice) and put it in the context of every request or call they
// serve (NoticeFrom). Per connection, a handler waits on Done; per server,
// a loop over the server's own connections does. A nil *DrainNotice never
// fires. A DrainNotice is safe for concurrent use.
type DrainNotice struct {
	once     sync.Once
	done     chan struct{}
	deadline time.Time // set before done is closed, never after
}

// NewDrainNotice returns a notice that has not fired. Servers of this
// package make their own; a server of another protocol can make one and
// fire it with Start when it drains.
func NewDrainNotice() *DrainNotice {
	return &DrainNotice{done: make(chan struct{})}
}

// Done is closed when the drain starts.
func (n *DrainNotice) Done() <-chan struct{} {
	if n == nil {
		return nil
	}
	return n.done
}

// Deadline returns when the drain closes what is still open, and false if
// the drain has no deadline or has not started.
func (n *DrainNotice) Deadline() (time.Time, bool) {
	if n == nil {
		return time.Time{}, false
	}
	select {
	case <-n.done:
		return n.deadline, !n.deadline.IsZero()
	default:
		return time.Time{}, false
	}
}

// Start fires the notice with the deadline of ctx (none if ctx has none).
// Later calls do nothing.
func (n *DrainNotice) Start(ctx context.Context) {
	n.once.Do(func() {
		n.deadline, _ = ctx.Deadline()
		close(n.done)
	})
}

type noticeKey struct{}

// WithNotice returns a copy of ctx that carries n, for NoticeFrom.
func WithNotice(ctx context.Context, n *DrainNotice) context.Context {
	return context.WithValue(ctx, noticeKey{}, n)
}

// NoticeFrom returns the drain notice of the server that serves the
// request or call whose context is ctx, or nil (a notice that never
// fires) if there is none.
func NoticeFrom(ctx context.Context) *DrainNotice {
	n, _ := ctx.Value(noticeKey{}).(*DrainNotice)
	return n
}
