package wasm_test

import (
	"testing"

	"github.com/hotswapgo/hotswap/module/wasm"
)

func TestSmoke(t *testing.T) {
	for _, trusted := range []bool{true, false} {
		r := newRegistry(t, wasm.ModuleConfig{Trusted: trusted, Grants: []wasm.Capability{wasm.CapKV}})
		load(t, r, "m", "v1", echo(t, "v1"))
		if got := call(t, r, "m", "echo", "hi"); got != "hi" {
			t.Fatalf("echo = %q", got)
		}
		if got := call(t, r, "m", "version", ""); got != "v1" {
			t.Fatalf("version = %q", got)
		}
		load(t, r, "m", "v2", echo(t, "v2"))
		if got := call(t, r, "m", "version", ""); got != "v2" {
			t.Fatalf("version = %q", got)
		}
		t.Logf("%+v", r.Status())
	}
}
