package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A line protocol (one request line, one answer line) can move a live
// connection to the new process: the connection is registered with File,
// the old process stops reading it between two requests in Snapshot and
// hands over the bytes it had read ahead in the state blob, and the new
// process claims the connection and goes on.

const liveConnName = "conn:live"

// lineServer answers "pid line" to every line of c until paused.
type lineServer struct {
	c       net.Conn
	br      *bufio.Reader
	pause   chan chan []byte // a pause request; answered with the read-ahead bytes
	stopped chan struct{}
}

func serveLines(c net.Conn, readAhead []byte) *lineServer {
	s := &lineServer{c: c, br: bufio.NewReader(io.MultiReader(strings.NewReader(string(readAhead)), c)),
		pause: make(chan chan []byte, 1), stopped: make(chan struct{})}
	go s.loop()
	return s
}

func (s *lineServer) loop() {
	defer close(s.stopped)
	pid := strconv.Itoa(os.Getpid())
	for {
		line, err := s.br.ReadString('\n')
		if err == nil {
			fmt.Fprintf(s.c, "%s %s", pid, line)
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && line == "" {
			select {
			case ack := <-s.pause: // between two requests: hand over
				rest, _ := s.br.Peek(s.br.Buffered())
				ack <- rest
				return
			default:
			}
			continue
		}
		return
	}
}

// stop stops reading at a line boundary and returns the bytes read ahead.
func (s *lineServer) stop() ([]byte, error) {
	ack := make(chan []byte, 1)
	s.pause <- ack
	s.c.SetReadDeadline(time.Now()) // wakes a blocked read
	select {
	case rest := <-ack:
		return rest, nil
	case <-s.stopped:
		return nil, errors.New("line server ended before pausing")
	case <-time.After(5 * time.Second):
		return nil, errors.New("line server did not pause within 5s")
	}
}

// resumeLineHelper is the new process: it claims the live connection and
// answers on it.
func resumeLineHelper(u *Upgrader) int {
	f, err := u.File(liveConnName, func() (*os.File, error) { return nil, errors.New("no live connection handed over") })
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	s := serveLines(c, u.State())
	if err := u.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	<-s.stopped // the client hung up
	return 0
}

func TestLiveConnectionHandOver(t *testing.T) {
	var srv *lineServer
	u, err := New(Options{NoSignals: true, Probation: 100 * time.Millisecond, Env: []string{envHelper + "=resume-line"},
		Snapshot: func(context.Context) ([]byte, error) { return srv.stop() }})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	live, err := u.File(liveConnName, func() (*os.File, error) { return c.(*net.TCPConn).File() })
	if err != nil {
		t.Fatal(err)
	}
	srv = serveLines(c, nil)
	u.Ready()

	answers := bufio.NewReader(client)
	ask := func(line string) string {
		t.Helper()
		if _, err := io.WriteString(client, line+"\n"); err != nil {
			t.Fatalf("send %q: %v", line, err)
		}
		a, err := answers.ReadString('\n')
		if err != nil {
			t.Fatalf("answer to %q: %v", line, err)
		}
		return strings.TrimSpace(a)
	}
	if got := ask("one"); got != self+" one" {
		t.Errorf("before the upgrade: %q; want %q", got, self+" one")
	}
	res, err := u.Upgrade(context.Background())
	if err != nil {
		t.Fatalf("Upgrade() = %v", err)
	}
	// This process is done with the connection; closing its descriptors
	// does not end it, the new process holds another.
	live.Close()
	c.Close()
	if got, want := ask("two"), strconv.Itoa(res.PID)+" two"; got != want {
		t.Errorf("after the upgrade, on the same connection: %q; want %q", got, want)
	}
	client.Close()
	waitReaped(t, res.PID, 10*time.Second)
}
