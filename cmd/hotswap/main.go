// Command hotswap runs the demo service and operates hotswap-enabled services.
//
// Exit codes (see docs/cli.md):
//
//	0  success
//	1  the requested action was refused or failed; the message says what
//	   failed (the artifact or binary and the failed check) and what still
//	   serves
//	2  usage error; nothing was asked
//	3  the service's control socket could not be reached, or its answer
//	   could not be read
//	4  canceled (interrupted, or the service answered that the change was
//	   canceled) before the change took effect
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hotswap:", err)
		os.Exit(exitCode(err))
	}
}

// run is the whole CLI; main only wires it to the process so tests can drive
// it in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
