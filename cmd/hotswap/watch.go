package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/devloop"
)

type watchOptions struct {
	modules     []string
	service     string
	serviceName string
	dir         string
	devDir      string
	debounce    time.Duration
	include     []string
	exclude     []string
	color       string
}

func newWatchCmd() *cobra.Command {
	var o watchOptions
	cmd := &cobra.Command{
		Use:   "watch [--module NAME=DIR]... [--service PKG] [-- COMMAND [ARG]...]",
		Short: "Rebuild what changed and swap it into the running service",
		Long: `Watch the source tree and, once a burst of saves has settled (--debounce):

  - a module's sources changed (a file under the DIR of --module NAME=DIR):
    build the guest (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared),
    sign it with the development key, and load it into the service through
    its control socket, like "hotswap load";
  - the service's own sources changed (any other watched file, with
    --service PKG): build PKG, sign it, and upgrade the service to it, like
    "hotswap upgrade --binary": its listeners are handed over.

A build error (with file:line), a failed self-test or a refused load or
upgrade is printed, and the last good version keeps serving. One line per
event:

  12:03:04 pricing  built 0.41s  loaded dev.7+ab12cd34 (sha256:ab12cd34ef56…) 23ms

With a COMMAND after --, watch starts the service itself and stops it, with
every process its upgrades started, when it ends (Ctrl-C). With --service,
COMMAND is the arguments of the built binary:

  hotswap watch --module pricing=./examples/pricing/guests/v1 \
      --service ./cmd/hotswap -- demo --dev-trust "$S/dev/trust"

Trust: watch signs with a development key kept in --dev-dir (default dev/ in
the state directory), whose public key it puts in DEV-DIR/trust, the
development trust root. It changes no other trust root: a service accepts
these builds only if it was started for development with that root (the
demo's --dev-trust DIR, host.Options.DevTrustDir), and "hotswap status"
then says so.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runWatch(cmd.Context(), cmd, o, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.modules, "module", nil, "NAME=DIR: the sources of module NAME are the guest package in DIR (repeatable)")
	f.StringVar(&o.service, "service", "", "the service's package (e.g. ./cmd/mysvc): rebuild and upgrade it when its sources change")
	f.StringVar(&o.serviceName, "service-name", "", "the name the service's binaries are signed with (default: the last element of --service)")
	f.StringVar(&o.dir, "dir", ".", "the source tree to watch and build in")
	f.StringVar(&o.devDir, "dev-dir", "", "where the development key and its trust root live (default: dev/ in the state directory)")
	f.DurationVar(&o.debounce, "debounce", devloop.DefaultDebounce, "how long the sources must stay unchanged before a build")
	f.StringArrayVar(&o.include, "include", nil, "base-name pattern of the files whose changes count (repeatable; default "+strings.Join(devloop.DefaultInclude, ", ")+")")
	f.StringArrayVar(&o.exclude, "exclude", nil, "pattern of files and directories to ignore, besides "+strings.Join(devloop.DefaultExclude, ", ")+" (repeatable)")
	f.StringVar(&o.color, "color", "auto", "colour the output: auto (on a terminal), always or never")
	return cmd
}

func runWatch(ctx context.Context, cmd *cobra.Command, o watchOptions, args []string, stdout, stderr io.Writer) error {
	var modules []devloop.Module
	for _, m := range o.modules {
		name, dir, ok := strings.Cut(m, "=")
		if !ok || name == "" || dir == "" {
			return usageError{fmt.Errorf("watch: --module %q: want NAME=DIR", m)}
		}
		modules = append(modules, devloop.Module{Name: name, Dir: dir})
	}
	if len(modules) == 0 && o.service == "" {
		return usageError{fmt.Errorf("watch: nothing to watch: give --module NAME=DIR or --service PKG")}
	}
	if o.debounce <= 0 {
		return usageError{fmt.Errorf("watch: --debounce %v: want a positive duration", o.debounce)}
	}
	var color bool
	switch o.color {
	case "auto":
		color = isTerminal(stdout) && os.Getenv("NO_COLOR") == ""
	case "always":
		color = true
	case "never":
	default:
		return usageError{fmt.Errorf("watch: --color %q: want auto, always or never", o.color)}
	}
	devDir, err := stateSubdir(o.devDir, "dev")
	if err != nil {
		return err
	}
	key, err := devloop.OpenDevKey(devDir)
	if err != nil {
		return err
	}
	client := controlClient(cmd)
	fmt.Fprintf(stdout, "watch: development key %s; development trust root %s\n", key.Signer.KeyID(), key.TrustDir)
	if len(args) == 0 {
		warnNotDevelopment(ctx, client, key.TrustDir, stdout)
	}

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	loop, err := devloop.New(devloop.Options{
		Dir:           o.dir,
		Modules:       modules,
		ServicePkg:    o.service,
		ServiceName:   o.serviceName,
		Run:           args,
		ServiceOutput: stderr,
		Client:        client,
		Signer:        key.Signer,
		BuildDir:      filepath.Join(devDir, "build"),
		Debounce:      o.debounce,
		Include:       o.include,
		Exclude:       o.exclude,
		Report:        func(ev devloop.Event) { fmt.Fprintln(stdout, devloop.Format(ev, color)) },
		Logger:        log,
	})
	if err != nil {
		return usageError{fmt.Errorf("watch: %w", err)}
	}
	if err := loop.Run(ctx); err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	fmt.Fprintln(stdout, "watch: stopped")
	return nil
}

// warnNotDevelopment says so when the service watch talks to would refuse
// what it signs: it was not started with the development trust root.
func warnNotDevelopment(ctx context.Context, client *control.Client, trustDir string, w io.Writer) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := client.Status(sctx)
	switch {
	case err != nil:
		fmt.Fprintf(w, "watch: no service answers on %s yet: start it with --dev-trust %s\n", client.Socket(), trustDir)
	case st.DevTrustDir == "":
		fmt.Fprintf(w, "watch: the service (pid %d) was not started for development and will refuse these builds; watch does not change its trust: restart it with --dev-trust %s\n", st.Process.PID, trustDir)
	case !sameDir(st.DevTrustDir, trustDir):
		fmt.Fprintf(w, "watch: the service (pid %d) trusts the development keys of %s, not %s: it will refuse these builds\n", st.Process.PID, st.DevTrustDir, trustDir)
	}
}

func sameDir(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
