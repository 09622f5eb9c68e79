package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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
	c := startEtcd(t)
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

// TestFleetSetSplit drives the A/B flags of hotswap fleet set: --b adds a
// B version pinned from its manifest, --weight changes only its weight,
// --no-b ends it, and a weight out of range or without a B is a usage
// error.
func TestFleetSetSplit(t *testing.T) {
	c := startEtcd(t)
	dir, key, _, a := setupSigned(t)
	b := filepath.Join(dir, "pricing-b.wasm")
	if err := os.WriteFile(b, []byte("\x00asm\x01\x00\x00\x00pricing B"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code, err := runCLI(t, "sign", "--key", key, "--version", "1.5.0", "--abi", "1", b); code != 0 {
		t.Fatalf("sign = %v (exit %d)\n%s", err, code, out)
	}
	base := []string{"fleet", "--etcd", strings.Join(c.Endpoints(), ","), "--group", "pricing", "--writer", "alice"}
	desired := func() fleet.ModuleSpec {
		t.Helper()
		out, code, err := runCLI(t, append(base, "status", "--json")...)
		if code != 0 {
			t.Fatalf("fleet status = %v (exit %d)", err, code)
		}
		var st fleet.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.Desired == nil {
			t.Fatalf("fleet status --json: %v\n%s", err, out)
		}
		return st.Desired.Spec.Modules["pricing"]
	}

	if _, code, err := runCLI(t, append(base, "set", "pricing=file://"+a, "--b", "pricing=file://"+b, "--weight", "pricing=30")...); code != 0 {
		t.Fatalf("fleet set --b --weight = %v (exit %d); want exit 0", err, code)
	}
	m := desired()
	if m.Version != "1.4.2" || m.B == nil || m.B.Version != "1.5.0" || m.B.Weight != 30 || m.B.URL != "file://"+b ||
		!strings.HasPrefix(m.B.Digest, "sha256:") || m.B.Digest == m.Digest {
		t.Fatalf("desired pricing = %+v, B %+v; want A 1.4.2 and B 1.5.0 at 30%%", m, m.B)
	}
	if _, code, err := runCLI(t, append(base, "set", "--weight", "pricing=60")...); code != 0 {
		t.Fatalf("fleet set --weight = %v (exit %d); want exit 0", err, code)
	}
	if m2 := desired(); m2.Digest != m.Digest || m2.B == nil || m2.B.Digest != m.B.Digest || m2.B.Weight != 60 {
		t.Errorf("after --weight 60: pricing = %+v, B %+v; want the same A and B at 60%%", m2, m2.B)
	}
	for _, args := range [][]string{{"--weight", "pricing=101"}, {"--weight", "pricing"}, {"--b", "other=file://" + b}} {
		if _, code, err := runCLI(t, append(append(base, "set"), args...)...); code != 2 {
			t.Errorf("fleet set %v = %v (exit %d); want a usage error, exit 2", args, err, code)
		}
	}
	if _, code, err := runCLI(t, append(base, "set", "--no-b", "pricing")...); code != 0 {
		t.Fatalf("fleet set --no-b = %v (exit %d); want exit 0", err, code)
	}
	if m3 := desired(); m3.B != nil || m3.Digest != m.Digest {
		t.Errorf("after --no-b: pricing = %+v; want A alone", m3)
	}
	if _, code, err := runCLI(t, append(base, "set", "--weight", "pricing=10")...); code != 2 {
		t.Errorf("fleet set --weight without a B = %v (exit %d); want a usage error, exit 2", err, code)
	}
}

// startEtcd starts a single-member etcd, stopped when the test ends.
func startEtcd(t *testing.T) *etcdnode.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("etcdnode.Start() = %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
