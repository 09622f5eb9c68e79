package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/host"
)

// stateDirEnv overrides where the CLI keeps keys and trusted keys by default.
const stateDirEnv = host.StateDirEnv

// stateSubdir returns flagValue if set, else the named directory of the
// default state directory.
func stateSubdir(flagValue, name string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	dir, err := host.DefaultStateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

// usageArgs marks argument-count errors as usage errors (exit code 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func newKeygenCmd() *cobra.Command {
	var out, trust string
	cmd := &cobra.Command{
		Use:   "keygen [--out DIR] [--trust DIR]",
		Short: "Make an ed25519 signing key",
		Long: `Make an ed25519 key pair for signing artifacts. The private key is written
to DIR/ID.key (mode 0600, PEM PKCS #8) and the public key to DIR/ID.pub
(PEM), where ID is the key id that manifests name their signer by.

DIR defaults to keys/ in the state directory ($` + stateDirEnv + `, else
hotswap/ in the user configuration directory, e.g. ~/.config/hotswap).
With --trust, the public key is also copied into that trust directory, so
"hotswap verify --trust DIR" and services reading DIR accept its signatures.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := stateSubdir(out, "keys")
			if err != nil {
				return err
			}
			priv, err := artifact.GenerateKey(nil)
			if err != nil {
				return err
			}
			privPath, pubPath, err := artifact.WriteKeyPair(dir, priv)
			if err != nil {
				return err
			}
			signer, err := artifact.NewSigner(priv)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "key id:      %s\n", signer.KeyID())
			fmt.Fprintf(w, "private key: %s (keep it secret)\n", privPath)
			fmt.Fprintf(w, "public key:  %s\n", pubPath)
			if trust != "" {
				p, err := artifact.WritePublicKey(trust, signer.PublicKey())
				if err != nil {
					return errors.Join(fmt.Errorf("key pair written, but trusting it failed"), err)
				}
				fmt.Fprintf(w, "trusted in:  %s\n", p)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for the key pair (default: keys/ in the state directory)")
	cmd.Flags().StringVar(&trust, "trust", "", "also copy the public key into this trust directory")
	return cmd
}
