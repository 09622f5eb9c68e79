package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRollback(t *testing.T) {
	s := newService(t, serviceOptions{})
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV1, "pricing-v1.wasm", "v1"))
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV2, "pricing-v2.wasm", "v2"))
	out := mustCtl(t, s.socket, "rollback", "pricing")
	if !strings.HasPrefix(out, "pricing@v1 serves again (sha256:") {
		t.Errorf("hotswap rollback output = %q; want \"pricing@v1 serves again …\"", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if v, err := s.quote(ctx); err != nil || v != "v1" {
		t.Errorf("quote after rollback = %q, %v; want v1", v, err)
	}
	_, _, code, err := ctl(t, s.socket, "rollback", "pricing")
	if code != 1 || !strings.HasPrefix(err.Error(), "rollback pricing refused: ") ||
		!strings.Contains(err.Error(), "no previous version") || !strings.HasSuffix(err.Error(), "; pricing@v1 keeps serving") {
		t.Errorf("second hotswap rollback = %v (exit %d); want exit 1, no previous version, pricing@v1 keeps serving", err, code)
	}
}
