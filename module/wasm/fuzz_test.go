package wasm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// FuzzGuestBoundary sends arbitrary bytes across the guest ABI both ways: as
// a handler's input and output (echo) and as a handler's error text (fail).
// Whatever the bytes and size, they must arrive unchanged and the instance
// must stay healthy.
func FuzzGuestBoundary(f *testing.F) {
	r := newRegistry(f, wasm.ModuleConfig{Grants: kv, MinInstances: 1, MaxInput: 1 << 20})
	load(f, r, "m", "v1", echo(f, "v1"))
	m := r.Module("m")
	f.Add([]byte{})
	f.Add([]byte("hello"))
	f.Add(bytes.Repeat([]byte{0xff, 0, '\n'}, 10000)) // larger than the initial exchange buffer
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx := context.Background()
		out, err := m.Call(ctx, "echo", in)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("echo of %d bytes = %d bytes, %v; want the input back", len(in), len(out), err)
		}
		_, err = m.Call(ctx, "fail", in)
		var ce *module.CallError
		if !errors.As(err, &ce) || !errors.Is(err, module.ErrGuest) || ce.Detail != "refused: "+string(in) {
			t.Fatalf("fail = %v; want ErrGuest carrying the input", err)
		}
		if st := m.Status().Active; st.Discarded != 0 {
			t.Fatalf("%d instances discarded; want none", st.Discarded)
		}
	})
}
