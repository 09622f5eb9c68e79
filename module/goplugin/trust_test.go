package goplugin_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module/goplugin"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// TestTrustSameAsWasm runs the same trust cases for a Go plugin and for a
// WebAssembly module through a host that runs both, and wants the same
// outcome for each: a signed artifact loads, an unsigned one loads only in
// development mode, a tampered or untrusted one is refused, and every
// refusal is audited while the active version keeps serving.
func TestTrustSameAsWasm(t *testing.T) {
	p := plugins(t)
	// One WebAssembly guest serves as v1 and v2: the trust path does not
	// care, and each extra guest costs a compile under -race.
	wasmGuest := testhost.Guest(t, testhost.V1)
	kinds := []struct {
		kind    artifact.Kind
		ext     string
		v1, v2  []byte
		handler string
	}{
		{artifact.KindWasm, ".wasm", wasmGuest, wasmGuest, "quote"},
		{artifact.KindGoPlugin, ".so", p.echoA, p.echoB, "echo"},
	}
	untrusted := testhost.Signer(t, 99)
	for _, k := range kinds {
		// A subtest per host: its cleanup closes the host, so the next host
		// may bind the same plugin to its own state.
		t.Run(string(k.kind), func(t *testing.T) {
			f := testhost.NewFixture(t)
			h := pluginHost(t, f, false)
			v1 := f.Sign(t, f.Trusted, "v1"+k.ext, k.v1, artifact.Manifest{Version: "v1", Kind: k.kind})
			if _, err := h.LoadFile(context.Background(), "pricing", v1); err != nil {
				t.Fatalf("LoadFile(v1) = %v", err)
			}
			other := artifact.KindWasm
			if k.kind == artifact.KindWasm {
				other = artifact.KindGoPlugin
			}
			for _, tc := range []struct {
				name string
				// write writes v2 as the artifact under test and returns its path.
				write func(file string) string
				want  error
			}{
				{"unsigned", func(file string) string { return f.Write(t, file, k.v2) }, artifact.ErrUnsigned},
				{"tampered", func(file string) string {
					path := f.Sign(t, f.Trusted, file, k.v2, artifact.Manifest{Version: "v2", Kind: k.kind})
					tampered := append([]byte(nil), k.v2...)
					tampered[len(tampered)/2] ^= 0xff
					if err := os.WriteFile(path, tampered, 0o644); err != nil {
						t.Fatal(err)
					}
					return path
				}, artifact.ErrDigestMismatch},
				{"untrusted key", func(file string) string {
					return f.Sign(t, untrusted, file, k.v2, artifact.Manifest{Version: "v2", Kind: k.kind})
				}, artifact.ErrUnknownKey},
				{"other kind", func(file string) string {
					return f.Sign(t, f.Trusted, file, k.v2, artifact.Manifest{Version: "v2", Kind: other})
				}, artifact.ErrKindMismatch},
				{"signed", func(file string) string {
					return f.Sign(t, f.Trusted, file, k.v2, artifact.Manifest{Version: "v2", Kind: k.kind})
				}, nil},
			} {
				_, err := h.LoadFile(context.Background(), "pricing", tc.write(tc.name+k.ext))
				if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
					t.Errorf("%s: LoadFile(v2) = %v; want %v", tc.name, err, tc.want)
				}
				wantActive, wantResult := "v1", audit.ResultRefused
				if tc.want == nil {
					wantActive, wantResult = "v2", audit.ResultOK
				}
				if active := h.Module("pricing").Status().Active; active == nil || active.Version != wantActive {
					t.Errorf("%s: active version = %+v; want %s", tc.name, active, wantActive)
				}
				if _, err := h.Module("pricing").Call(context.Background(), k.handler, []byte(`{"item":"apple","qty":1}`)); err != nil {
					t.Errorf("%s: Call() = %v; want the active version serving", tc.name, err)
				}
				events, err := h.History(context.Background(), audit.Filter{})
				if err != nil || len(events) == 0 {
					t.Fatalf("History() = %d events, %v", len(events), err)
				}
				if events[0].Result != wantResult {
					t.Errorf("%s: last audit event %+v; want result %s", tc.name, events[0], wantResult)
				}
			}
		})
		t.Run(string(k.kind)+"/development", func(t *testing.T) {
			dev := testhost.NewFixture(t)
			hd := pluginHost(t, dev, true)
			if _, err := hd.LoadFile(context.Background(), "pricing", dev.Write(t, "unsigned"+k.ext, k.v2)); err != nil {
				t.Errorf("LoadFile(unsigned) in development mode = %v; want it loaded", err)
			}
		})
	}
}

// pluginHost returns a host over f that runs WebAssembly modules and Go
// plugins.
func pluginHost(t *testing.T, f *testhost.Fixture, dev bool) *host.Host {
	t.Helper()
	pb, _ := newBackend(t, goplugin.Options{})
	return f.Host(t, testhost.HostOptions{Dev: dev, Module: &wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}},
		Options: func(o *host.Options) { o.Plugins = pb }})
}
