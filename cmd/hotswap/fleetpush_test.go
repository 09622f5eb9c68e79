package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
	"github.com/hotswapgo/hotswap/internal/testregistry"
)

// TestFleetPushCommand pushes a signed artifact to a real registry with
// hotswap fleet push, then sets the printed URL: fleet set pins the
// payload's digest and the manifest's version read from the registry.
func TestFleetPushCommand(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	_, _, _, wasm := setupSigned(t)
	payload, err := os.ReadFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	out, code, err := runCLI(t, "fleet", "push", wasm, "oci://"+reg.Host+"/team/pricing:1.4.2")
	if code != 0 {
		t.Fatalf("fleet push = %v (exit %d); want exit 0", err, code)
	}
	m := regexp.MustCompile(`(?m)^url +(oci://\S+)\ndigest +(\S+)\nversion +1\.4\.2$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("fleet push output = %q; want url, digest and version 1.4.2", out)
	}
	if want := artifact.DigestOf(payload).String(); m[2] != want {
		t.Errorf("fleet push digest = %s; want the payload's %s", m[2], want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := etcdnode.Start(ctx, etcdnode.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("etcdnode.Start() = %v", err)
	}
	defer c.Close()
	base := []string{"fleet", "--etcd", strings.Join(c.Endpoints(), ","), "--group", "pricing"}
	if _, code, err := runCLI(t, append(base, "set", "pricing="+m[1])...); code != 0 {
		t.Fatalf("fleet set pricing=%s = %v (exit %d); want exit 0", m[1], err, code)
	}
	out, code, err = runCLI(t, append(base, "status", "--json")...)
	if code != 0 {
		t.Fatalf("fleet status = %v (exit %d)", err, code)
	}
	var st fleet.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Desired == nil {
		t.Fatalf("fleet status --json = %v\n%s", err, out)
	}
	if got := st.Desired.Spec.Modules["pricing"]; got.URL != m[1] || got.Digest != m[2] || got.Version != "1.4.2" {
		t.Errorf("desired pricing = %+v; want %s pinned at %s, version 1.4.2", got, m[1], m[2])
	}

	bare := filepath.Join(t.TempDir(), "bare.wasm")
	os.WriteFile(bare, payload, 0o644)
	if _, code, err := runCLI(t, "fleet", "push", bare, "oci://"+reg.Host+"/bare"); code != 1 {
		t.Errorf("fleet push (no manifest) = %v (exit %d); want exit 1", err, code)
	}
	if out, code, err := runCLI(t, "fleet", "push", "--unsigned", bare, "oci://"+reg.Host+"/bare"); code != 0 || !strings.Contains(out, "unsigned") {
		t.Errorf("fleet push --unsigned = %q, %v (exit %d); want exit 0, unsigned", out, err, code)
	}
	for _, ref := range []string{"https://" + reg.Host + "/bare", "oci://" + reg.Host + "/bare@" + m[2]} {
		if _, code, err := runCLI(t, "fleet", "push", wasm, ref); code != 2 {
			t.Errorf("fleet push %s = %v (exit %d); want a usage error, exit 2", ref, err, code)
		}
	}
}
