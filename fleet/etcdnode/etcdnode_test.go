package etcdnode_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hotswapgo/hotswap/fleet/etcdnode"
)

// TestClusterSurvivesMemberStop starts three members, stops one, writes
// through the two left, restarts it and reads the write from it.
func TestClusterSurvivesMemberStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir(), Members: 3})
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	defer c.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c.Stop(0)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put() with a member stopped = %v; want nil", err)
	}
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatalf("Restart(0) = %v", err)
	}
	one, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints()[:1], DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	resp, err := one.Get(ctx, "k")
	if err != nil {
		t.Fatalf("Get() from the restarted member = %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get(k) from the restarted member = %v; want v", resp.Kvs)
	}
}
