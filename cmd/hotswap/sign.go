package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/artifact"
)

func newSignCmd() *cobra.Command {
	var key, name, version, kind, abi string
	cmd := &cobra.Command{
		Use:   "sign --key KEY [--name N] [--version V] [--kind K] [--abi A] ARTIFACT",
		Short: "Sign an artifact: write its manifest beside it",
		Long: `Hash ARTIFACT, and write its signed manifest to ARTIFACT.manifest (replacing
any there). KEY is a private key file made by "hotswap keygen", or the id of a
key in keys/ of the state directory.

Defaults: --name is the file name without its extension, --kind follows the
extension (.wasm wasm, .so goplugin, .o/.bpf bpf, else binary), --version is
the first 12 hex digits of the payload's SHA-256, --abi is empty.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usageError{errors.New("sign: --key is required")}
			}
			k := artifact.Kind(kind)
			if kind != "" && !k.Valid() {
				return usageError{fmt.Errorf("sign: --kind %q: want %s, %s, %s or %s",
					kind, artifact.KindWasm, artifact.KindGoPlugin, artifact.KindBinary, artifact.KindBPF)}
			}
			keyPath, err := resolveKey(key)
			if err != nil {
				return err
			}
			priv, err := artifact.LoadPrivateKey(keyPath)
			if err != nil {
				return fmt.Errorf("sign: %w", err)
			}
			signer, err := artifact.NewSigner(priv)
			if err != nil {
				return err
			}
			sm, err := signer.SignFile(cmd.Context(), args[0], artifact.Manifest{Name: name, Version: version, Kind: k, ABI: abi})
			if err != nil {
				return err
			}
			m := sm.Manifest
			fmt.Fprintf(cmd.OutOrStdout(), "signed %s %s (%s, %d bytes, %s) with key %s\nwrote %s\n",
				m.Name, m.Version, m.Kind, m.Size, m.Digest, m.KeyID, artifact.ManifestPath(args[0]))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&key, "key", "", "private key file, or key id in the state directory's keys/ (required)")
	f.StringVar(&name, "name", "", "artifact name (default: file name without extension)")
	f.StringVar(&version, "version", "", "version label (default: digest prefix)")
	f.StringVar(&kind, "kind", "", "wasm, goplugin, binary or bpf (default: from the extension)")
	f.StringVar(&abi, "abi", "", "ABI version the artifact was built against")
	return cmd
}

// resolveKey returns key if it names a file, else the key file of that id in
// the state directory.
func resolveKey(key string) (string, error) {
	if _, err := os.Stat(key); err == nil || filepath.Base(key) != key {
		return key, nil
	}
	dir, err := stateSubdir("", "keys")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, key+artifact.PrivateKeySuffix)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("sign: --key %s: no such file, and no key with that id in %s", key, dir)
	}
	return p, nil
}
