package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// drainServer serves HTTP on 127.0.0.1 with an HTTPServer; /slow blocks
// until release is closed.
func drainServer(t *testing.T) (s *HTTPServer, addr string, release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "slow ok")
	})
	s = NewHTTPServer(&http.Server{Handler: mux}, HTTPOptions{Logger: testLogger(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.srv.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve() = %v; want nil after Drain", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve() did not return")
		}
	})
	return s, ln.Addr().String(), release
}

// waitStates waits until the server tracks want connections in each state.
func waitStates(t *testing.T, s *HTTPServer, want map[http.ConnState]int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := map[http.ConnState]int{}
		s.mu.Lock()
		for _, st := range s.conns {
			got[st]++
		}
		s.mu.Unlock()
		equal := len(got) == len(want)
		for k, v := range want {
			equal = equal && got[k] == v
		}
		if equal {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection states = %v; want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{c, bufio.NewReader(c)}
}

// get sends a request and reads the response; it reports whether the
// response said Connection: close.
func (c *rawConn) get(t *testing.T, path string) (body string, close bool) {
	t.Helper()
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatalf("write request: %v", err)
	}
	return c.read(t)
}

func (c *rawConn) read(t *testing.T) (string, bool) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b), resp.Close
}

// closedByServer reports whether the server closed the connection cleanly
// (EOF, not a reset) within a second.
func (c *rawConn) closedByServer() error {
	c.SetReadDeadline(time.Now().Add(time.Second))
	_, err := c.br.ReadByte()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		return errors.New("unexpected data")
	}
	return err
}

func TestHTTPDrainLetsEveryConnectionFinish(t *testing.T) {
	s, addr, release := drainServer(t)

	idle := dialRaw(t, addr)
	if _, close := idle.get(t, "/"); close {
		t.Fatal("response before drain says Connection: close")
	}
	fresh := dialRaw(t, addr) // accepted, no request yet (golang/go#75591)
	active := dialRaw(t, addr)
	io.WriteString(active, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	waitStates(t, s, map[http.ConnState]int{http.StateIdle: 1, http.StateNew: 1, http.StateActive: 1})

	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		drained <- s.Drain(ctx)
	}()

	// Nothing is closed under a client that may be writing.
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-drained:
		t.Fatalf("Drain() = %v before the connections finished", err)
	default:
	}
	waitStates(t, s, map[http.ConnState]int{http.StateIdle: 1, http.StateNew: 1, http.StateActive: 1})

	tests := []struct {
		name string
		do   func() (string, bool)
		want string
	}{
		{"in-flight request", func() (string, bool) { close(release); return active.read(t) }, "slow ok"},
		{"fresh connection", func() (string, bool) { return fresh.get(t, "/") }, "ok"},
		{"idle keep-alive connection", func() (string, bool) { return idle.get(t, "/") }, "ok"},
	}
	conns := []*rawConn{active, fresh, idle}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, close := tt.do()
			if body != tt.want || !close {
				t.Errorf("response = %q, Connection: close %v; want %q with Connection: close", body, close, tt.want)
			}
			if err := conns[i].closedByServer(); err != nil {
				t.Errorf("after the response: %v; want a clean close (EOF)", err)
			}
		})
	}
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("Drain() = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain() did not return after every connection finished")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial after Drain succeeded; want the listener closed")
	}
}

func TestHTTPDrainDeadline(t *testing.T) {
	s, addr, _ := drainServer(t)
	idle := dialRaw(t, addr)
	idle.get(t, "/")
	waitStates(t, s, map[http.ConnState]int{http.StateIdle: 1})

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Drain(ctx)
	var de *DrainError
	if !errors.As(err, &de) || de.Idle != 1 || de.Active+de.New != 0 {
		t.Fatalf("Drain() = %v; want a *DrainError with 1 idle connection", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Drain() = %v; want it to match context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Drain() took %v; want about 300ms", d)
	}
	if err := idle.closedByServer(); err != nil {
		t.Errorf("idle connection after the deadline: %v; want closed", err)
	}
}

// TestHTTPDrainNoticeReachesLongRequests: a streaming response and a
// hijacked connection learn that the drain started, with its deadline, and
// end themselves; Drain waits for both.
func TestHTTPDrainNoticeReachesLongRequests(t *testing.T) {
	deadline := time.Now().Add(20 * time.Second)
	hijackReturn := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		n := NoticeFrom(r.Context())
		io.WriteString(w, "data: hello\n\n")
		http.NewResponseController(w).Flush()
		<-n.Done()
		d, ok := n.Deadline()
		fmt.Fprintf(w, "retry: 100\ndata: deadline %v\n\n", ok && d.Equal(deadline))
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack() = %v", err)
			return
		}
		defer c.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		<-NoticeFrom(r.Context()).Done()
		<-hijackReturn
		rw.WriteString("1012 service restart\n")
		rw.Flush()
	})
	s := NewHTTPServer(&http.Server{Handler: mux}, HTTPOptions{Logger: testLogger(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	events := dialRaw(t, ln.Addr().String())
	io.WriteString(events, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(events.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := bufio.NewReader(resp.Body)
	if l, _ := body.ReadString('\n'); l != "data: hello\n" {
		t.Fatalf("first event = %q", l)
	}
	ws := dialRaw(t, ln.Addr().String())
	io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	if resp, err := http.ReadResponse(ws.br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade response = %v, %v", resp, err)
	}

	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- s.Drain(ctx) }()
	var events2 []string
	for len(events2) < 3 {
		l, err := body.ReadString('\n')
		if err != nil {
			t.Fatalf("read event stream after the drain started: %v", err)
		}
		events2 = append(events2, l)
	}
	if events2[0] != "\n" || events2[1] != "retry: 100\n" || events2[2] != "data: deadline true\n" {
		t.Errorf("events after the drain started = %q; want a retry hint and the drain's deadline", events2)
	}
	if _, err := io.ReadAll(body); err != nil {
		t.Fatalf("end of the event stream: %v", err)
	}
	// The event stream's header went out before the drain, so its
	// connection stays open; the client's reconnection on it gets the
	// retry hint at once, with Connection: close.
	io.WriteString(events, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err = http.ReadResponse(events.br, nil)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if !resp.Close || !strings.Contains(string(b), "retry: 100") {
		t.Errorf("reconnection during the drain = %q, Connection: close %v; want the retry hint and close", b, resp.Close)
	}
	select {
	case err := <-drained:
		t.Fatalf("Drain() = %v while a hijacked connection's handler runs", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(hijackReturn)
	if l, err := ws.br.ReadString('\n'); err != nil || l != "1012 service restart\n" {
		t.Errorf("hijacked connection got %q, %v; want the handler's goodbye", l, err)
	}
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("Drain() = %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Drain() did not return after the long requests ended")
	}
}

func TestHTTPDrainDeadlineCountsHijacked(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			defer c.Close()
		}
		<-release // ignores the notice
	})
	s := NewHTTPServer(&http.Server{Handler: mux}, HTTPOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	ws := dialRaw(t, ln.Addr().String())
	io.WriteString(ws, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
	waitStates(t, s, map[http.ConnState]int{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var de *DrainError
	if err := s.Drain(ctx); !errors.As(err, &de) || de.Hijacked != 1 {
		t.Errorf("Drain() = %v; want a *DrainError counting 1 hijacked connection", err)
	}
}
