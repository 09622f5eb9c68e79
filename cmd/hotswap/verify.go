package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/artifact"
)

func newVerifyCmd() *cobra.Command {
	var trust, name, kind, abi string
	cmd := &cobra.Command{
		Use:   "verify [--trust DIR] [--name N] [--kind K] [--abi A] ARTIFACT",
		Short: "Verify an artifact against its manifest and the trusted keys",
		Long: `Verify ARTIFACT as a service would before loading it: its manifest
(ARTIFACT.manifest) must be signed by a key in the trust directory, and the
payload's size and SHA-256 must match it. --name, --kind and --abi, when
given, must match the manifest too. Signatures are always required here.

Exits 0 only when the artifact verifies; otherwise the message names the
failed check (manifest, policy, key, signature, name, kind, abi, payload or
digest). DIR defaults to trust/ in the state directory.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			k := artifact.Kind(kind)
			if kind != "" && !k.Valid() {
				return usageError{fmt.Errorf("verify: --kind %q: want %s, %s, %s or %s",
					kind, artifact.KindWasm, artifact.KindGoPlugin, artifact.KindBinary, artifact.KindBPF)}
			}
			dir, err := stateSubdir(trust, "trust")
			if err != nil {
				return err
			}
			ts, err := artifact.LoadTrustStore(dir)
			if err != nil {
				return err
			}
			v, err := artifact.NewVerifier(ts, artifact.VerifierOptions{})
			if err != nil {
				return err
			}
			vd, err := v.Verify(cmd.Context(), args[0], artifact.Expect{Name: name, Kind: k, ABI: abi})
			if err != nil {
				return err
			}
			m := vd.Manifest
			fmt.Fprintf(cmd.OutOrStdout(), "verified %s: %s %s (%s, %d bytes, %s) signed by key %s (trust=%s)\n",
				args[0], m.Name, m.Version, m.Kind, m.Size, m.Digest, m.KeyID, v.Mode())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&trust, "trust", "", "directory of trusted public keys (default: trust/ in the state directory)")
	f.StringVar(&name, "name", "", "expected artifact name")
	f.StringVar(&kind, "kind", "", "expected kind: wasm, goplugin, binary or bpf")
	f.StringVar(&abi, "abi", "", "expected ABI version")
	return cmd
}
