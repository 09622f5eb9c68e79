package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
)

// TestFleetSetStatusCommands drives hotswap fleet against a real etcd:
// set pins the digest the manifest states and records the writer; status
// shows it; pause with no rollout running fails with exit 1; a bad
// argument is a usage error.
func TestFleetSetStatusCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("etcdnode.Start() = %v", err)
	}
	defer c.Close()
	_, _, _, wasm := setupSigned(t)
	base := []string{"fleet", "--etcd", strings.Join(c.Endpoints(), ","), "--group", "pricing", "--writer", "alice"}

	out, code, err := runCLI(t, append(base, "rollout", "pricing=file://"+wasm)...)
	if code != 0 {
		t.Fatalf("fleet rollout = %v (exit %d); want exit 0", err, code)
	}
	if !strings.Contains(out, "waves [1 10% 50% 100%]") {
		t.Errorf("fleet rollout output = %q; want the default waves", out)
	}
	out, code, err = runCLI(t, append(base, "status", "--json")...)
	if code != 0 {
		t.Fatalf("fleet status = %v (exit %d)", err, code)
	}
	var st fleet.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("fleet status --json: %v\n%s", err, out)
	}
	if st.Desired == nil || st.Desired.Writer != "alice" {
		t.Fatalf("desired = %+v; want one written by alice", st.Desired)
	}
	m := st.Desired.Spec.Modules["pricing"]
	if m.Version != "1.4.2" || !strings.HasPrefix(m.Digest, "sha256:") || m.URL != "file://"+wasm {
		t.Errorf("desired pricing = %+v; want version 1.4.2 and the manifest's digest", m)
	}

	// No controller runs: no rollout record, so nothing to pause.
	_, code, err = runCLI(t, append(base, "pause")...)
	if code != 1 || !errors.Is(err, fleet.ErrNoRollout) {
		t.Errorf("fleet pause = %v (exit %d); want ErrNoRollout, exit 1", err, code)
	}
	_, code, err = runCLI(t, append(base, "set", "pricing")...)
	if code != 2 {
		t.Errorf("fleet set pricing = %v (exit %d); want a usage error, exit 2", err, code)
	}
}
