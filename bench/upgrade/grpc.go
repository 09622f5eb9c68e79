package main

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hotswapgo/hotswap/examples/grpcecho/echo"
	"github.com/hotswapgo/hotswap/upgrade/grpcdrain"
)

type grpcResult struct {
	Unary              int64 `json:"unary"`
	UnaryFailed        int64 `json:"unary_failed"`
	Streams            int64 `json:"streams"`
	StreamMessages     int64 `json:"stream_messages"`
	StreamsReconnected int64 `json:"streams_reconnected"`
	StreamsBroken      int64 `json:"streams_broken"`
	upgradeCounts
}

// grpcLoad runs unary callers and bidirectional streams against the
// example gRPC server, each worker on a connection of its own, with
// grpc-go's defaults: no service config, so no retry policy.
type grpcLoad struct {
	tally   // unary failures and broken streams
	unary   atomic.Int64
	unaryKO atomic.Int64
	streams atomic.Int64
	msgs    atomic.Int64
	reconn  atomic.Int64
	broken  atomic.Int64
	quit    chan struct{}
	wg      sync.WaitGroup
	conns   []*grpc.ClientConn
}

func startGRPCLoad(addr string, callers, streams int, maxRequests int64) (*grpcLoad, error) {
	l := &grpcLoad{quit: make(chan struct{})}
	dial := func() (*echo.Client, error) {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		l.conns = append(l.conns, cc)
		return echo.NewClient(cc), nil
	}
	for range callers {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		l.wg.Add(1)
		go l.call(c, maxRequests)
	}
	for range streams {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		l.wg.Add(1)
		go l.stream(c, maxRequests)
	}
	return l, nil
}

func (l *grpcLoad) stopped(maxRequests int64) bool {
	select {
	case <-l.quit:
		return true
	default:
		return l.unary.Load()+l.msgs.Load() >= maxRequests
	}
}

func (l *grpcLoad) call(c *echo.Client, maxRequests int64) {
	defer l.wg.Done()
	for i := 0; !l.stopped(maxRequests); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		l.unary.Add(1)
		_, err := c.Unary(ctx, strconv.Itoa(i))
		cancel()
		if err != nil {
			l.unaryKO.Add(1)
			l.fail("unary", err)
		}
	}
}

// stream opens a stream, exchanges messages one at a time, and opens
// another when the server ends it with its drain status.
func (l *grpcLoad) stream(c *echo.Client, maxRequests int64) {
	defer l.wg.Done()
	for !l.stopped(maxRequests) {
		l.streams.Add(1)
		l.chat(c, maxRequests)
	}
}

func (l *grpcLoad) chat(c *echo.Client, maxRequests int64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.Chat(ctx)
	if err != nil {
		l.brokenBy("open stream", err)
		return
	}
	ended := func(err error) {
		if isDrainStatus(err) {
			l.reconn.Add(1)
			return
		}
		l.brokenBy("stream", err)
	}
	for i := 0; ; i++ {
		if l.stopped(maxRequests) {
			st.CloseSend()
			if _, err := st.Recv(); !errors.Is(err, io.EOF) && !isDrainStatus(err) {
				l.brokenBy("close stream", err)
			}
			return
		}
		if err := st.Send(wrapperspb.String(strconv.Itoa(i))); err != nil {
			_, err = st.Recv() // the stream ended: Recv says how
			ended(err)
			return
		}
		if _, err := st.Recv(); err != nil {
			ended(err)
			return
		}
		l.msgs.Add(1)
	}
}

func (l *grpcLoad) brokenBy(stage string, err error) {
	l.broken.Add(1)
	l.fail(stage, err)
}

// isDrainStatus reports whether err is the status grpcdrain ends streams
// with: codes.Unavailable with its message, sent by the server (not a
// transport error, which has another message).
func isDrainStatus(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.Unavailable && s.Message() == status.Convert(grpcdrain.ErrReconnect).Message()
}

func (l *grpcLoad) stop(timeout time.Duration) (grpcResult, error) {
	if err := stopWorkers(l.quit, &l.wg, timeout); err != nil {
		return grpcResult{}, err
	}
	for _, cc := range l.conns {
		cc.Close()
	}
	return grpcResult{
		Unary:              l.unary.Load(),
		UnaryFailed:        l.unaryKO.Load(),
		Streams:            l.streams.Load(),
		StreamMessages:     l.msgs.Load(),
		StreamsReconnected: l.reconn.Load(),
		StreamsBroken:      l.broken.Load(),
	}, nil
}
