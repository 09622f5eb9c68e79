package main

import (
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/module/goplugin"
)

// pluginABI is the manifest ABI of a plugin built by `hotswap build`: the
// SDK protocol and a digest of the build identity.
func pluginABI(id goplugin.Identity) string {
	return fmt.Sprintf("goplugin%d-%s", goplugin.PluginABI, id.Digest())
}

func newBuildCmd() *cobra.Command {
	var plugin, out, hostBin, key, name, version string
	cmd := &cobra.Command{
		Use:   "build --plugin DIR -o OUT [--host BINARY] [--key KEY [--name N] [--version V]]",
		Short: "Build a module as a Go plugin for a host binary",
		Long: `Build the module whose main package is DIR (the same source that builds to
WebAssembly) as a Go plugin, OUT (a .so file), that the host BINARY can open:
with BINARY's Go version and build flags (-race, -trimpath, -tags, -gcflags,
CGO_ENABLED, GOOS, GOARCH, GOAMD64, ...), -buildmode=plugin, and fresh import
paths for DIR's packages and its copy of package guest, so that every build,
even of unchanged source, loads as a new plugin. The module's sources are
not modified.

OUT.build.json records the plugin's build identity (Go version, settings,
module versions and sums). With --key the plugin is signed like any
artifact (kind goplugin, ABI naming the identity's digest); else sign it
with "hotswap sign".

--host defaults to this hotswap binary (what "hotswap demo" runs). The go
command on PATH must be the host's Go version. See docs/goplugin.md.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if plugin == "" || out == "" {
				return usageError{errors.New("build: --plugin DIR and -o OUT are required")}
			}
			var hostInfo *debug.BuildInfo
			if hostBin != "" {
				info, err := buildinfo.ReadFile(hostBin)
				if err != nil {
					return fmt.Errorf("build: read the build info of host %s: %w", hostBin, err)
				}
				hostInfo = info
			}
			b, err := goplugin.Build(cmd.Context(), goplugin.BuildOptions{Dir: plugin, Out: out, Host: hostInfo, Name: name})
			if err != nil {
				return err
			}
			idJSON, err := json.MarshalIndent(b.Identity, "", "  ")
			if err != nil {
				return err
			}
			if err := os.WriteFile(out+".build.json", append(idJSON, '\n'), 0o644); err != nil {
				return fmt.Errorf("build: %w", err)
			}
			abi := pluginABI(b.Identity)
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "built %s (%s, %s)\nwrote %s.build.json\n", out, b.ImportPath, b.Identity.GoVersion, out)
			if key == "" {
				fmt.Fprintf(w, "sign it: hotswap sign --key KEY --kind goplugin --abi %s %s\n", abi, out)
				return nil
			}
			keyPath, err := resolveKey(key)
			if err != nil {
				return err
			}
			priv, err := artifact.LoadPrivateKey(keyPath)
			if err != nil {
				return fmt.Errorf("build: %w", err)
			}
			signer, err := artifact.NewSigner(priv)
			if err != nil {
				return err
			}
			sm, err := signer.SignFile(cmd.Context(), out, artifact.Manifest{Name: name, Version: version, Kind: artifact.KindGoPlugin, ABI: abi})
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "signed %s %s (%s) with key %s\nwrote %s\n", sm.Manifest.Name, sm.Manifest.Version, sm.Manifest.Digest,
				sm.Manifest.KeyID, artifact.ManifestPath(out))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&plugin, "plugin", "", "the module's main package directory (required)")
	f.StringVarP(&out, "output", "o", "", "the .so file to write (required)")
	f.StringVar(&hostBin, "host", "", "the service binary the plugin is for (default: this binary)")
	f.StringVar(&key, "key", "", "sign with this private key file, or key id in the state directory's keys/")
	f.StringVar(&name, "name", "", "artifact name when signing (default: file name without extension)")
	f.StringVar(&version, "version", "", "version label when signing (default: digest prefix)")
	return cmd
}
