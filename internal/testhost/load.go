package testhost

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Load sends GET requests to one URL path from several keep-alive
// connections until stopped. It is strict on purpose: it speaks HTTP/1.1
// over its own connections and never retries, so a connection the server
// closes under a request, a reset, a short body or a status other than 200
// is a failed request. (net/http's client retries idempotent requests on a
// reused connection that broke, which hides exactly the failures a test of
// zero-downtime swaps and upgrades must see.) A connection is redialed
// only after a response that said "Connection: close".
type Load struct {
	t             testing.TB
	calls, failed atomic.Int64
	mu            sync.Mutex // protects last
	last          []byte     // body of the last answer
	done          chan struct{}
	wg            sync.WaitGroup
	stopOnce      sync.Once
}

// StartLoad starts workers connections sending GET path to addr. The first
// few failures are reported with t.Errorf as they happen.
func StartLoad(t testing.TB, addr, path string, workers int) *Load {
	l := &Load{t: t, done: make(chan struct{})}
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n")
	for range workers {
		l.wg.Go(func() { l.worker(addr, req) })
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

func (l *Load) worker(addr string, req []byte) {
	var (
		conn net.Conn
		br   *bufio.Reader
	)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		select {
		case <-l.done:
			return
		default:
		}
		if conn == nil {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				l.fail(fmt.Errorf("dial: %w", err))
				continue
			}
			conn, br = c, bufio.NewReader(c)
		}
		body, closeAfter, err := roundTrip(conn, br, req)
		l.calls.Add(1)
		if err != nil {
			l.fail(err)
			conn.Close()
			conn = nil
			continue
		}
		l.mu.Lock()
		l.last = body
		l.mu.Unlock()
		if closeAfter {
			conn.Close()
			conn = nil
		}
	}
}

// roundTrip sends one request and reads its whole response; anything but a
// complete 200 is an error. It reports whether the server asked to close.
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (body []byte, closeAfter bool, err error) {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(req); err != nil {
		return nil, false, fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, false, fmt.Errorf("read response: %w", err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return nil, false, fmt.Errorf("read body: %w", err)
	case resp.StatusCode != http.StatusOK:
		return nil, false, fmt.Errorf("HTTP %s: %s", resp.Status, body)
	}
	return body, resp.Close, nil
}

func (l *Load) fail(err error) {
	if l.failed.Add(1) <= 5 {
		l.t.Errorf("load: %v", err)
	}
}

// Calls returns how many requests were answered or failed so far.
func (l *Load) Calls() int64 { return l.calls.Load() }

// Failed returns how many requests failed so far.
func (l *Load) Failed() int64 { return l.failed.Load() }

// Last returns the body of the last complete answer.
func (l *Load) Last() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// WaitCalls waits (at most 60 s) until n more requests completed.
func (l *Load) WaitCalls(n int64) {
	l.t.Helper()
	want := l.calls.Load() + n
	deadline := time.Now().Add(60 * time.Second)
	for l.calls.Load() < want {
		if time.Now().After(deadline) {
			l.t.Fatalf("load: %d more requests did not complete within 60s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop stops the load, waits (at most 30 s) for its connections to close,
// and returns how many requests were made and how many failed.
func (l *Load) Stop() (calls, failed int64) {
	l.stopOnce.Do(func() {
		close(l.done)
		done := make(chan struct{})
		go func() { l.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			l.t.Errorf("load: workers did not stop within 30s")
		}
	})
	return l.calls.Load(), l.failed.Load()
}

// WaitAnswer waits (at most 60 s) until an answer contains s.
func (l *Load) WaitAnswer(s string) {
	l.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		last := l.Last()
		if bytes.Contains(last, []byte(s)) {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("load: no answer containing %q within 60s; last answer %q", s, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
