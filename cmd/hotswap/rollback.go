package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newRollbackCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rollback MODULE",
		Short: "Make the previous version of a module serve again",
		Long: `Switch MODULE back to its previous version. That version is still warm, so
the switch is instant; after a restart of the service, the last-known-good
version is loaded from the service's store, verified again.

Exits 0 when the previous version serves. Otherwise the message says why
and which version keeps serving.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			res, err := controlClient(cmd).Rollback(cmd.Context(), name, progressPrinter(cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s serves again (sha256:%s, took %v)\n",
				name, res.Serving.Version, shortDigest(res.Serving.Digest), ms(res.TookMS))
			return nil
		},
	}
}
