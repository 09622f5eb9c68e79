package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hotswapgo/hotswap/control"
)

func TestHistory(t *testing.T) {
	s := newService(t, serviceOptions{})
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV1, "pricing-v1.wasm", "v1"))
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV2, "pricing-v2.wasm", "v2"))
	ctl(t, s.socket, "load", "pricing", s.artifact(t, guestTrapInit, "pricing-v3.wasm", "v3"))
	mustCtl(t, s.socket, "rollback", "pricing")

	out := mustCtl(t, s.socket, "history", "pricing", "--limit", "10")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	actor := fmt.Sprintf("uid=%d pid=%d", os.Getuid(), os.Getpid())
	want := [][]string{
		{"TIME", "ACTOR", "ACTION"},
		{actor, "rollback", "pricing", "ok", "v2@sha256:", " → v1@sha256:"},
		{actor, "swap", "pricing", "refused", "v3@sha256:", "init check failed"},
		{actor, "swap", "pricing", "ok", "v1@sha256:", " → v2@sha256:"},
		{actor, "swap", "pricing", "ok", "- → v1@sha256:"},
	}
	if len(lines) != len(want) {
		t.Fatalf("hotswap history = %d lines; want %d:\n%s", len(lines), len(want), out)
	}
	for i, parts := range want {
		for _, p := range parts {
			if !strings.Contains(lines[i], p) {
				t.Errorf("hotswap history line %d = %q; want it to contain %q", i, lines[i], p)
			}
		}
	}

	out = mustCtl(t, s.socket, "history", "--limit", "1", "-o", "json")
	var h control.History
	if err := json.Unmarshal([]byte(out), &h); err != nil || !h.OK || len(h.Events) != 1 || h.Events[0].Action != "rollback" {
		t.Errorf("hotswap history -o json = %q (%v); want ok and the rollback only", out, err)
	}
	if out := mustCtl(t, s.socket, "history", "nosuch"); out != "no events\n" {
		t.Errorf("hotswap history nosuch = %q; want \"no events\"", out)
	}
}
