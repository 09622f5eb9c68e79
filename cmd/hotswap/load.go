package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/control"
)

func newLoadCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "load MODULE ARTIFACT",
		Short: "Load a new version of a module into a running service",
		Long: `Send ARTIFACT and its manifest (ARTIFACT.manifest) to the service, which
verifies them (digest, signature, policy), keeps them in its store, compiles,
validates and pre-warms the version, and only then switches new calls to it.
The version it replaces stays warm for "hotswap rollback". Each step is shown
on standard error as it starts.

Exits 0 when the new version serves. Otherwise the message names the failed
check and the version that keeps serving.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, path := args[0], args[1]
			res, err := controlClient(cmd).LoadFile(cmd.Context(), name, path, progressPrinter(cmd.ErrOrStderr()))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s serves (sha256:%s, %d instances warm, took %v)",
				name, res.Serving.Version, shortDigest(res.Serving.Digest), res.Serving.Instances, ms(res.TookMS))
			if res.Previous != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "; %s@%s is kept warm for rollback", name, res.Previous.Version)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
}

// stepNotes says what the long steps do.
var stepNotes = map[string]string{
	"prepare":   " (compile, validate, pre-warm)",
	"hand over": " (start the new process, wait until it is ready, probation)",
}

// progressPrinter returns a function that writes one line per step.
func progressPrinter(w io.Writer) func(control.Progress) {
	return func(p control.Progress) {
		fmt.Fprintf(w, "%7.3fs  %-9s %s%s\n", float64(p.ElapsedMS)/1000, p.Step, shortRef(p.Detail), stepNotes[p.Step])
	}
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
