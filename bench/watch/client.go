package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// failPause is how long a worker waits after a failed request before the
// next: a down service is then counted about 100 times a second per
// worker, not as fast as connections can be refused.
const failPause = 10 * time.Millisecond

// client sends GET /quote from several keep-alive connections until
// stopped. It is strict: it never retries, so a reset, a refused or closed
// connection, a short body or a status other than 200 is a failed request.
// It records when each module version and each service build first
// answered.
type client struct {
	addr          string
	calls, failed atomic.Int64
	broken        atomic.Int64 // answers from a version labelled "broken-…"
	lastOK        atomic.Int64 // unix nanoseconds of the last answer
	mu            sync.Mutex   // protects seen
	seen          map[string]time.Time
	done          chan struct{}
	wg            sync.WaitGroup
}

func startClient(addr string, workers int) *client {
	c := &client{addr: addr, seen: map[string]time.Time{}, done: make(chan struct{})}
	for range workers {
		c.wg.Go(c.worker)
	}
	return c
}

func (c *client) worker() {
	req := []byte("GET /quote HTTP/1.1\r\nHost: " + c.addr + "\r\n\r\n")
	var (
		conn net.Conn
		br   *bufio.Reader
	)
	closeConn := func() {
		if conn != nil {
			conn.Close()
			conn = nil
		}
	}
	defer closeConn()
	for {
		select {
		case <-c.done:
			return
		default:
		}
		if conn == nil {
			var err error
			if conn, err = net.DialTimeout("tcp", c.addr, 5*time.Second); err != nil {
				c.calls.Add(1)
				c.fail()
				continue
			}
			br = bufio.NewReader(conn)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		version, build, closeAfter, err := roundTrip(conn, br, req)
		c.calls.Add(1)
		if err != nil {
			closeConn()
			c.fail()
			continue
		}
		now := time.Now()
		c.lastOK.Store(now.UnixNano())
		if strings.HasPrefix(version, "broken-") {
			c.broken.Add(1)
		}
		c.mu.Lock()
		for _, k := range []string{"module " + version, "build " + build} {
			if _, ok := c.seen[k]; !ok {
				c.seen[k] = now
			}
		}
		c.mu.Unlock()
		if closeAfter {
			closeConn()
		}
	}
}

func (c *client) fail() {
	c.failed.Add(1)
	select {
	case <-c.done:
	case <-time.After(failPause):
	}
}

// roundTrip sends one request and reads its answer.
func roundTrip(conn net.Conn, br *bufio.Reader, req []byte) (version, build string, closeAfter bool, err error) {
	if _, err := conn.Write(req); err != nil {
		return "", "", false, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", "", false, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return "", "", false, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", false, fmt.Errorf("status %s: %s", resp.Status, body)
	}
	var p struct{ Version string }
	if err := json.Unmarshal(body, &p); err != nil {
		return "", "", false, fmt.Errorf("answer %q: %w", body, err)
	}
	return p.Version, resp.Header.Get("X-Build"), resp.Close, nil
}

// firstSeen returns when key ("module V" or "build B") first answered.
func (c *client) firstSeen(key string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.seen[key]
	return t, ok
}

// waitSeen waits until key answered, at most d.
func (c *client) waitSeen(key string, d time.Duration) (time.Time, error) {
	deadline := time.Now().Add(d)
	for {
		if t, ok := c.firstSeen(key); ok {
			return t, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s did not answer within %v", key, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stop stops the workers and returns the number of requests and failures.
func (c *client) stop() (calls, failed int64) {
	close(c.done)
	c.wg.Wait()
	return c.calls.Load(), c.failed.Load()
}
