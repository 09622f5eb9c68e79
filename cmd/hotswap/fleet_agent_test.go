package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// TestFleetAgentCommand runs `hotswap fleet agent` beside a service
// served on a real control socket: `hotswap fleet set` pins a signed
// module (and a binary, shown by status); the agent loads the module
// through the socket and acks, and the binary, which this service cannot
// upgrade to, is refused with check upgrade.
func TestFleetAgentCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("etcdnode.Start() = %v", err)
	}
	defer c.Close()
	fix := testhost.NewFixture(t)
	h := fix.Host(t, testhost.HostOptions{Module: &wasm.ModuleConfig{}})
	socket, _ := testhost.Serve(t, h, "", control.Options{})
	payload, err := guestbuild.CBytes("guest/c/echo.c")
	if err != nil {
		t.Fatal(err)
	}
	echo := fix.Sign(t, fix.Trusted, "echo.wasm", payload, artifact.Manifest{Name: "echo", Version: "1.0.0"})
	bin := fix.Sign(t, fix.Trusted, "svc-2", []byte("#!/bin/sh\nexit 0\n"), artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindBinary})
	base := []string{"fleet", "--etcd", strings.Join(c.Endpoints(), ","), "--group", "g", "--writer", "alice"}

	actx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	var agentErr bytes.Buffer
	go func() {
		ran <- run(actx, append(base, "agent", "--id", "side-0", "--socket", socket, "--binary-dir", t.TempDir()), &bytes.Buffer{}, &agentErr)
	}()
	defer func() {
		stop()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("fleet agent = %v; want nil once interrupted", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("fleet agent did not stop")
		}
	}()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	g, _ := fleet.OpenGroup(cli, "", "g")
	until := func(what string, ok func(fleet.Status) bool) fleet.Status {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			st, err := g.Status(ctx)
			if err == nil && ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within a minute; last status (err %v):\n%s\nagent:\n%s", what, err, st, agentErr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	until("agent registered", func(st fleet.Status) bool { return len(st.Applied) == 1 })
	ctl, err := fleet.NewController(fleet.ControllerOptions{Client: cli, Group: "g", Name: "c", Tick: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cstop := context.WithCancel(ctx)
	cdone := make(chan struct{})
	go func() { ctl.Run(cctx); close(cdone) }()
	defer func() { cstop(); <-cdone }()

	if _, code, err := runCLI(t, append(base, "set", "echo=file://"+echo)...); code != 0 {
		t.Fatalf("fleet set = %v (exit %d)", err, code)
	}
	st := until("echo acked", func(st fleet.Status) bool { return st.Rollout != nil && st.Rollout.Phase == fleet.Done })
	if m := st.Applied[0].Modules["echo"]; m.Version != "1.0.0" || m.Result != fleet.ResultOK || st.Applied[0].PID != os.Getpid() {
		t.Errorf("applied = %+v; want echo 1.0.0 ok from this service (pid %d)", st.Applied[0], os.Getpid())
	}

	if _, code, err := runCLI(t, append(base, "rollout", "--waves", "1", "--binary", "file://"+bin)...); code != 0 {
		t.Fatalf("fleet rollout --binary = %v (exit %d)", err, code)
	}
	st = until("binary halted", func(st fleet.Status) bool { return st.Rollout != nil && st.Rollout.Phase == fleet.Halted })
	if !strings.Contains(st.Rollout.Reason, "binary refused (check upgrade)") {
		t.Errorf("halt reason = %q; want the binary refused: this service runs without upgrades", st.Rollout.Reason)
	}
	out, code, err := runCLI(t, append(base, "status", "--json")...)
	if code != 0 {
		t.Fatalf("fleet status = %v (exit %d)", err, code)
	}
	var js fleet.Status
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatal(err)
	}
	if b := js.Desired.Spec.Binary; b == nil || b.Version != "2" || !strings.HasPrefix(b.Digest, "sha256:") || b.URL != "file://"+bin ||
		js.Desired.Spec.Modules["echo"].Version != "1.0.0" {
		t.Errorf("desired = %+v; want echo kept and binary 2 with the manifest's digest", js.Desired.Spec)
	}
	text, _, _ := runCLI(t, append(base, "status")...)
	if !strings.Contains(text, "binary=2@") {
		t.Errorf("fleet status = %q; want the desired binary shown", text)
	}
}
