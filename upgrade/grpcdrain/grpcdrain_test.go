package grpcdrain_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hotswapgo/hotswap/examples/grpcecho/echo"
	"github.com/hotswapgo/hotswap/upgrade"
	"github.com/hotswapgo/hotswap/upgrade/grpcdrain"
)

// The test binary doubles as the new process of an upgrade.
const (
	envHelper = "GRPCDRAIN_HELPER" // set: serve as the new process
	envAddr   = "GRPCDRAIN_ADDR"   // the address the parent listened on
)

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) != "" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}

var self = strconv.Itoa(os.Getpid())

// serve serves the echo service, answering with this process's pid.
func serve(u *upgrade.Upgrader, addr string) (*grpcdrain.Server, net.Listener, error) {
	ln, err := u.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	s := grpcdrain.NewServer(grpcdrain.Options{})
	echo.Register(s, echo.Service{Name: strconv.Itoa(os.Getpid())})
	go s.Serve(ln)
	return s, ln, nil
}

func runHelper() int {
	u, err := upgrade.New(upgrade.Options{NoSignals: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	defer u.Close()
	s, _, err := serve(u, os.Getenv(envAddr))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := u.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	select {
	case <-u.Exit():
	case <-term:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Drain(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "helper: drain:", err)
	}
	return 0
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

func dial(t *testing.T, addr string) *echo.Client {
	t.Helper()
	// No retry policy: only what grpc-go does by itself for calls the
	// server never processed.
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return echo.NewClient(cc)
}

// isReconnect reports whether err is the status a draining server ends
// streams with.
func isReconnect(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.Unavailable && s.Message() == status.Convert(grpcdrain.ErrReconnect).Message()
}

// load runs unary callers and Chat streams until stop closes.
type load struct {
	unary, unaryFailed atomic.Int64
	reconnects, broken atomic.Int64
	mu                 sync.Mutex // protects errs and pids
	errs               []error
	pids               map[string]int // who answered, unary and streams
	stop               chan struct{}
	wg                 sync.WaitGroup
}

func startLoad(c *echo.Client, callers, streams int) *load {
	l := &load{pids: map[string]int{}, stop: make(chan struct{})}
	record := func(answer string, err error, broken *atomic.Int64) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			broken.Add(1)
			l.errs = append(l.errs, err)
			return
		}
		l.pids[strings.Fields(answer)[0]]++
	}
	for range callers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				l.unary.Add(1)
				answer, err := c.Unary(ctx, strconv.Itoa(i))
				cancel()
				record(answer, err, &l.unaryFailed)
			}
		}()
	}
	for range streams {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if !l.chat(c, record) {
					return
				}
				l.reconnects.Add(1)
			}
		}()
	}
	return l
}

// chat runs one stream until the server ends it (true: reconnect) or stop.
func (l *load) chat(c *echo.Client, record func(string, error, *atomic.Int64)) bool {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.Chat(ctx)
	if err != nil {
		record("", fmt.Errorf("open stream: %w", err), &l.broken)
		return true
	}
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			st.CloseSend()
			if _, err := st.Recv(); err != nil && !errors.Is(err, context.Canceled) && err.Error() != "EOF" {
				record("", fmt.Errorf("close stream: %w", err), &l.broken)
			}
			return false
		default:
		}
		if err := st.Send(wrapperspb.String(strconv.Itoa(i))); err != nil {
			// The server ended the stream; Recv says how.
			_, err = st.Recv()
			if !isReconnect(err) {
				record("", fmt.Errorf("stream ended by %v; want %v", err, grpcdrain.ErrReconnect), &l.broken)
			}
			return true
		}
		m, err := st.Recv()
		if err != nil {
			if !isReconnect(err) {
				record("", fmt.Errorf("stream ended by %v; want %v", err, grpcdrain.ErrReconnect), &l.broken)
			}
			return true
		}
		record(m.GetValue(), nil, &l.broken)
	}
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("load did not stop within 30s")
	}
	if n := l.unaryFailed.Load() + l.broken.Load(); n > 0 {
		t.Errorf("%d unary calls of %d failed, %d streams broke; first errors: %v",
			l.unaryFailed.Load(), l.unary.Load(), l.broken.Load(), l.errs[:min(5, len(l.errs))])
	}
}

// TestUpgradeUnderLoad upgrades a gRPC server that unary callers and
// streams use without a pause: no call fails, every stream that the old
// process held ends with ErrReconnect and opens again on the new process,
// and the old process's drain ends long before its deadline.
func TestUpgradeUnderLoad(t *testing.T) {
	fds := countFDs(t)
	t.Cleanup(func() { // after the client's cleanup
		// Connections close asynchronously once both sides are done.
		deadline := time.Now().Add(5 * time.Second)
		for countFDs(t) > fds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := countFDs(t); got > fds {
			t.Errorf("open descriptors = %d; want at most %d as before", got, fds)
		}
	})
	u, err := upgrade.New(upgrade.Options{NoSignals: true, Probation: 200 * time.Millisecond,
		Env: []string{envHelper + "=1", envAddr + "=127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	s, ln, err := serve(u, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Ready(); err != nil {
		t.Fatal(err)
	}
	l := startLoad(dial(t, ln.Addr().String()), 4, 2)
	time.Sleep(200 * time.Millisecond) // let the streams open on the old process

	res, err := u.Upgrade(context.Background())
	if err != nil {
		l.finish(t)
		t.Fatalf("Upgrade() = %v", err)
	}
	defer stopChild(t, res.PID)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Drain(ctx); err != nil {
		t.Errorf("Drain() = %v; want nil", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Drain() took %v; want well before the 20s deadline", d)
	}
	time.Sleep(300 * time.Millisecond) // calls after the hand-over
	l.finish(t)
	child := strconv.Itoa(res.PID)
	if l.pids[self] == 0 || l.pids[child] == 0 {
		t.Errorf("answers by pid: %v; want both %s (old) and %s (new)", l.pids, self, child)
	}
	if n := l.reconnects.Load(); n < 2 {
		t.Errorf("streams reopened %d times; want each of the 2 reopened after the drain", n)
	}
}

// blocking implements echo.Server with a Unary that waits for "slow" calls
// and a Chat that ignores the drain notice.
type blocking struct {
	release chan struct{} // closed: slow calls return
	honour  bool          // Chat returns when its context is cancelled
}

func (b blocking) Unary(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	if in.GetValue() == "slow" {
		<-b.release
	}
	return in, nil
}

func (b blocking) Chat(stream grpc.BidiStreamingServer[wrapperspb.StringValue, wrapperspb.StringValue]) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if err := stream.Send(wrapperspb.String("hi")); err != nil {
		return err
	}
	if b.honour {
		<-stream.Context().Done()
		return stream.Context().Err() // the interceptor turns this into ErrReconnect
	}
	<-b.release
	return nil
}

func startBlocking(t *testing.T, b blocking, opts grpcdrain.Options) (*grpcdrain.Server, *echo.Client) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpcdrain.NewServer(opts)
	echo.Register(s, b)
	go s.Serve(ln)
	return s, dial(t, ln.Addr().String())
}

// openChat opens a stream and waits for its first answer.
func openChat(t *testing.T, c *echo.Client) grpc.BidiStreamingClient[wrapperspb.StringValue, wrapperspb.StringValue] {
	t.Helper()
	st, err := c.Chat(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(wrapperspb.String("hello"))
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestDrainEndsStreamsBeforeDeadline: a stream whose handler ignores the
// notice is ended with ErrReconnect EndStreamsBefore the deadline, while a
// unary call in flight finishes normally.
func TestDrainEndsStreamsBeforeDeadline(t *testing.T) {
	b := blocking{release: make(chan struct{}), honour: true}
	s, c := startBlocking(t, b, grpcdrain.Options{EndStreamsBefore: 2 * time.Second})
	st := openChat(t, c)
	unary := make(chan error, 1)
	go func() {
		_, err := c.Unary(context.Background(), "slow")
		unary <- err
	}()
	time.Sleep(100 * time.Millisecond) // the slow call reaches the server

	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	start := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- s.Drain(ctx) }()
	_, err := st.Recv()
	if !isReconnect(err) {
		t.Errorf("stream ended by %v; want %v", err, grpcdrain.ErrReconnect)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("stream ended %v after the drain started; want about 500ms (2.5s deadline - 2s)", d)
	}
	close(b.release)
	if err := <-unary; err != nil {
		t.Errorf("unary call in flight during the drain = %v; want it to finish", err)
	}
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("Drain() = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain() did not return")
	}
}

// TestDrainDeadlineCutsCalls: calls that neither finish nor honour their
// context are cut at the deadline and counted.
func TestDrainDeadlineCutsCalls(t *testing.T) {
	b := blocking{release: make(chan struct{})}
	defer close(b.release)
	s, c := startBlocking(t, b, grpcdrain.Options{EndStreamsBefore: -1})
	openChat(t, c)
	go c.Unary(context.Background(), "slow")
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var de *grpcdrain.DrainError
	if err := s.Drain(ctx); !errors.As(err, &de) || de.Unary != 1 || de.Streams != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Drain() = %v; want a *DrainError counting 1 unary call and 1 stream", err)
	}
}

// TestNoticeInCallContext: handlers find the server's notice in their
// context.
func TestNoticeInCallContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpcdrain.NewServer(grpcdrain.Options{})
	got := make(chan *upgrade.DrainNotice, 1)
	echo.Register(s, noticeProbe{got})
	go s.Serve(ln)
	defer s.GRPC().Stop()
	if _, err := dial(t, ln.Addr().String()).Unary(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != s.Notice() {
		t.Errorf("NoticeFrom(call context) = %p; want the server's %p", n, s.Notice())
	}
}

type noticeProbe struct{ got chan *upgrade.DrainNotice }

func (p noticeProbe) Unary(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	p.got <- upgrade.NoticeFrom(ctx)
	return in, nil
}

func (noticeProbe) Chat(grpc.BidiStreamingServer[wrapperspb.StringValue, wrapperspb.StringValue]) error {
	return nil
}

func stopChild(t *testing.T, pid int) {
	t.Helper()
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still exists 15s after SIGTERM", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
