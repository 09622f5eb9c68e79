package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/examples/pricing"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/logkey"
)

// demoGuests maps artifact names in demo/artifacts to the guest packages
// they are built from, with their link flags after a space.
var demoGuests = map[string]string{
	"v1":              "./examples/pricing/guests/v1",
	"v2":              "./examples/pricing/guests/v2",
	"broken-trapinit": "./examples/pricing/guests/broken/trapinit",
	"broken-loopinit": "./examples/pricing/guests/broken/loopinit",
	"broken-membomb":  "./examples/pricing/guests/broken/membomb",
	"broken-noexport": "./examples/pricing/guests/broken/noexport",
	"broken-abi2":     "./examples/pricing/guests/broken/abi2",
	"broken-trapcall": "./examples/pricing/guests/broken/trapcall",
	"broken-loopcall": "./examples/pricing/guests/broken/loopcall",
	// Passes every check and answers, but fails 10% of quotes: for a
	// canary to catch.
	"broken-flaky": "./examples/pricing/guests/canary -X main.label=broken-flaky -X main.failPerMille=100",
}

// demoArtifacts builds the example modules (cached by their sources) and
// signs them into demo/artifacts, plus "tampered": v2's manifest over a
// payload changed after signing. It returns each artifact's path by name.
func demoArtifacts(ctx context.Context, demoDir string, signer *artifact.Signer, log *slog.Logger) (map[string]string, error) {
	dir := filepath.Join(demoDir, "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	paths := make(map[string]string)
	for name, guest := range demoGuests {
		pkg, ldflags, _ := strings.Cut(guest, " ")
		built, err := guestbuild.Build(ctx, filepath.Join(demoDir, "build"), pkg, ldflags)
		if err != nil {
			return nil, fmt.Errorf("build the example modules (run the demo from the hotswap source tree): %w", err)
		}
		payload, err := os.ReadFile(built)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, "pricing-"+name+".wasm")
		if err := publish(ctx, path, payload, signer, artifact.Manifest{Name: pricing.Module, Version: name, Kind: artifact.KindWasm, ABI: "1"}); err != nil {
			return nil, err
		}
		paths[name] = path
	}
	// tampered: a payload that no longer matches its signed manifest.
	tampered := filepath.Join(dir, "pricing-tampered.wasm")
	v2, err := os.ReadFile(paths["v2"])
	if err != nil {
		return nil, err
	}
	manifest, err := os.ReadFile(artifact.ManifestPath(paths["v2"]))
	if err != nil {
		return nil, err
	}
	v2[len(v2)/2] ^= 0xff
	if err := os.WriteFile(tampered, v2, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(artifact.ManifestPath(tampered), manifest, 0o644); err != nil {
		return nil, err
	}
	paths["tampered"] = tampered
	log.Debug("example modules ready", logkey.Path, dir)
	return paths, nil
}

// publish writes payload to path and signs it, unless path already holds
// exactly payload with a manifest signed by signer.
func publish(ctx context.Context, path string, payload []byte, signer *artifact.Signer, m artifact.Manifest) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, payload) {
		if data, err := os.ReadFile(artifact.ManifestPath(path)); err == nil {
			if sm, err := artifact.ParseManifest(data); err == nil && sm.Manifest.KeyID == signer.KeyID() && sm.Manifest.Version == m.Version {
				return nil
			}
		}
	}
	if err := os.WriteFile(path, payload, 0o644); err != nil {
		return err
	}
	_, err := signer.SignFile(ctx, path, m)
	return err
}

// signSelf signs the demo's binary with the demo key so that a SIGHUP
// upgrade to it passes verification, unless it is already signed by that key
// for its current contents.
func signSelf(ctx context.Context, signer *artifact.Signer, exe string) error {
	payload, err := os.ReadFile(exe)
	if err != nil {
		return err
	}
	if data, err := os.ReadFile(artifact.ManifestPath(exe)); err == nil {
		if sm, err := artifact.ParseManifest(data); err == nil && sm.Manifest.KeyID == signer.KeyID() && sm.Manifest.Digest == artifact.DigestOf(payload) {
			return nil
		}
	}
	// A version label names one payload forever, so a rebuilt binary gets
	// a label of its own.
	version := "devel+" + artifact.DigestOf(payload).Short()
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		version = bi.Main.Version + "+" + artifact.DigestOf(payload).Short()
	}
	_, err = signer.SignFile(ctx, exe, artifact.Manifest{Name: demoService, Version: version, Kind: artifact.KindBinary})
	return err
}
