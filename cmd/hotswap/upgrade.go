package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"
)

func newUpgradeCmd() *cobra.Command {
	var binary string
	cmd := &cobra.Command{
		Use:   "upgrade [--binary PATH]",
		Short: "Replace a running service's binary without a failed request",
		Long: `Ask the service to replace its binary with PATH (a path on the service's
machine; default: the binary the service was configured with). The service
verifies the binary (signed, unless it runs in development mode), copies it
into its store, starts it with its listeners, control socket and state, waits
until it is ready and through probation, and answers with the new PID.

Exits 0 when the new process serves. Otherwise the message says why (with
the tail of the new process's standard error) and which process keeps
serving.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if binary != "" {
				// The service resolves paths in its own working directory:
				// send it the one the caller means.
				abs, err := filepath.Abs(binary)
				if err != nil {
					return usageError{fmt.Errorf("upgrade: --binary %s: %w", binary, err)}
				}
				binary = abs
			}
			res, err := controlClient(cmd).Upgrade(cmd.Context(), binary, progressPrinter(cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			a := res.Attempt
			fmt.Fprintf(cmd.OutOrStdout(), "upgraded: pid %d serves (was pid %d), ready in %v, binary %s\n",
				res.ServingPID, res.PID, ms(a.ReadyMS), a.Binary)
			return nil
		},
	}
	cmd.Flags().StringVar(&binary, "binary", "", "new binary, a path on the service's machine (default: the service's own)")
	return cmd
}
