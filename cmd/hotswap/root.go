package main

import (
	"context"
	"errors"
	"io"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/control"
)

// usageError marks errors caused by how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var u usageError
	switch {
	case errors.As(err, &u):
		return 2
	case errors.Is(err, control.ErrUnreachable):
		return 3
	case errors.Is(err, control.ErrCanceled), errors.Is(err, context.Canceled):
		return 4
	}
	return 1
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "hotswap",
		Short:         "Change a Go service's code while it serves",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().String(socketFlag, control.DefaultSocketPath(),
		"control socket of the service ($"+control.SocketEnv+")")
	root.AddCommand(
		// Verbs are added here, one constructor per file.
		newKeygenCmd(),
		newSignCmd(),
		newVerifyCmd(),
		newDemoCmd(),
		newStatusCmd(),
		newLoadCmd(),
		newRollbackCmd(),
		newHistoryCmd(),
		newUpgradeCmd(),
		newCanaryCmd(),
		newBPFCmd(),
		newBuildCmd(),
		newWatchCmd(),
		newFleetCmd(),
	)
	return root
}
