// Package etcdnode starts etcd members inside the process, on loopback, for
// a one-machine try-out of fleet mode, for tests and for benchmarks. A
// production fleet points at an existing etcd cluster instead.
package etcdnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// DefaultStartTimeout bounds how long Start waits for a member to serve.
const DefaultStartTimeout = 30 * time.Second

// Options configures a cluster of embedded members.
type Options struct {
	// Dir holds one data directory per member. Required.
	Dir string
	// Members is the cluster size. Defaults to 1.
	Members int
	// Host is the address members listen on. Defaults to 127.0.0.1.
	Host string
	// StartTimeout bounds how long Start waits for the cluster to serve.
	// Defaults to DefaultStartTimeout (30s).
	StartTimeout time.Duration
	// Fsync keeps etcd's fsyncs. Defaults to false: a try-out or test
	// cluster does not need its writes on disk before it answers.
	Fsync bool
}

// Cluster is a set of embedded etcd members. It is safe for concurrent
// use.
type Cluster struct {
	opts    Options
	members []*member
}

type member struct {
	name       string
	dir        string
	client     url.URL
	peer       url.URL
	mu         sync.Mutex // protects e
	e          *embed.Etcd
	initialCfg string
}

// Start starts a cluster of opts.Members members on free loopback ports
// and returns once every member serves, or fails (stopping those started)
// when ctx ends or Options.StartTimeout passed.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("etcdnode: Options.Dir is required")
	}
	opts.Members = max(opts.Members, 1)
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	c := &Cluster{opts: opts}
	var initial []string
	for i := range opts.Members {
		ports, err := freePorts(opts.Host, 2)
		if err != nil {
			return nil, fmt.Errorf("etcdnode: %w", err)
		}
		m := &member{
			name:   fmt.Sprintf("m%d", i),
			client: url.URL{Scheme: "http", Host: net.JoinHostPort(opts.Host, ports[0])},
			peer:   url.URL{Scheme: "http", Host: net.JoinHostPort(opts.Host, ports[1])},
		}
		m.dir = filepath.Join(opts.Dir, m.name)
		initial = append(initial, m.name+"="+m.peer.String())
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initialCfg = strings.Join(initial, ",")
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	// Members of a new cluster wait for each other: start them all, then
	// wait for each.
	for _, m := range c.members {
		if err := m.start(c.opts, true); err != nil {
			c.Close()
			return nil, err
		}
	}
	for _, m := range c.members {
		if err := m.ready(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// freePorts returns n ports free on host now. Another process may take
// one before etcd binds it; Start then fails and says which.
func freePorts(host string, n int) ([]string, error) {
	var ports []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ports = append(ports, port)
	}
	return ports, nil
}

func (m *member) start(opts Options, fresh bool) error {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenClientUrls = []url.URL{m.client}
	cfg.AdvertiseClientUrls = []url.URL{m.client}
	cfg.ListenPeerUrls = []url.URL{m.peer}
	cfg.AdvertisePeerUrls = []url.URL{m.peer}
	cfg.InitialCluster = m.initialCfg
	cfg.InitialClusterToken = "hotswap-etcdnode"
	cfg.ClusterState = embed.ClusterStateFlagNew
	if !fresh {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	// etcd logs through zap; a member of a try-out or a test logs nothing
	// (its errors reach the caller through Start, Restart and the client).
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = !opts.Fsync
	// etcd's defaults (100 ms, 1 s) on loopback, but a longer election
	// timeout: members that share a loaded machine with their clients
	// missed heartbeats and elected leaders over and over.
	cfg.TickMs, cfg.ElectionMs = 100, 2500
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcdnode: start member %s (client %s): %w", m.name, m.client.Host, err)
	}
	m.mu.Lock()
	m.e = e
	m.mu.Unlock()
	return nil
}

func (m *member) ready(ctx context.Context) error {
	m.mu.Lock()
	e := m.e
	m.mu.Unlock()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcdnode: member %s: %w", m.name, err)
	case <-ctx.Done():
		return fmt.Errorf("etcdnode: member %s not ready: %w", m.name, ctx.Err())
	}
}

// Endpoints returns the client URLs of every member, running or not.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.client.String())
	}
	return eps
}

// Size returns the number of members.
func (c *Cluster) Size() int { return len(c.members) }

// Stop stops member i (as a crash would, but letting it close its files);
// Restart brings it back with its data.
func (c *Cluster) Stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	e := m.e
	m.e = nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts member i again over its data directory and waits, bounded
// by ctx and Options.StartTimeout, until it serves. With the other members
// stopped too it serves once a quorum is back: restart them together.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	m := c.members[i]
	m.mu.Lock()
	running := m.e != nil
	m.mu.Unlock()
	if running {
		return fmt.Errorf("etcdnode: member %s is running", m.name)
	}
	if err := m.start(c.opts, false); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.StartTimeout)
	defer cancel()
	return m.ready(ctx)
}

// Close stops every member.
func (c *Cluster) Close() {
	for i := range c.members {
		c.Stop(i)
	}
}
