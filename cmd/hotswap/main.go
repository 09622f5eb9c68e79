// Command hotswap runs the demo service and operates hotswap-enabled services.
//
// Exit codes: 0 on success, 1 when the requested action failed (the message
// says what failed and what still serves), 2 on a usage error.
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
