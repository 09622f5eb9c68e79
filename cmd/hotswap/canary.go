package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/control"
)

func newCanaryCmd() *cobra.Command {
	var (
		p      control.CanaryPolicy
		steps  []float64
		every  time.Duration
		floor  time.Duration
		detach bool
	)
	cmd := &cobra.Command{
		Use:   "canary MODULE ARTIFACT [--steps 1,5,25,50] [--interval 1m] [--detach]",
		Short: "Try a new version of a module on a share of the calls, then promote or abort it",
		Long: `Send ARTIFACT (with ARTIFACT.manifest) to the service, which verifies, stores,
compiles, validates and pre-warms it as for a load, then makes it serve the
first step's share of MODULE's calls beside the active version. Calls with a
routing key stick to one version; widening keeps them there.

At each step the service compares the canary with the stable version over the
same calls: failures, and latencies from --latency-weight on. It aborts as
soon as a sequential test has the evidence, after --min-calls calls of each
version in the step; at the end of each --interval the step passes (the next
weight, or the promotion after the last) or holds for want of calls. Every
verdict is in the audit log (hotswap history MODULE) with its numbers.

The command follows the canary and prints every verdict. It exits 0 when the
canary was promoted and 1 when it was aborted, saying why. With --detach it
returns once the canary serves. Interrupting it stops following only: the
canary goes on (hotswap canary status|pause|resume|freeze|promote|abort).
See docs/canary.md.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, path := args[0], args[1]
			p.Steps, p.IntervalMS, p.LatencyFloorNS = steps, every.Milliseconds(), int64(floor)
			started := false
			show := canaryPrinter(cmd.ErrOrStderr())
			res, err := controlClient(cmd).CanaryFile(cmd.Context(), name, path, p, !detach, func(pr control.Progress) {
				started = started || pr.Step == "canary"
				show(pr)
			})
			if err != nil {
				if started && errors.Is(err, control.ErrCanceled) {
					return fmt.Errorf("canary %s: stopped following; the canary goes on in the service "+
						"(hotswap canary status %s, hotswap canary abort %s): %w", name, name, name, err)
				}
				return err
			}
			w, c := cmd.OutOrStdout(), res.Canary
			if detach {
				fmt.Fprintf(w, "%s@%s serves %v%% beside %s@%s (step %d of %d, canary %s); follow it: hotswap canary status %s --follow\n",
					name, c.Version.Version, c.Weight, name, c.Stable, c.Step, len(c.Steps), c.ID, name)
				return nil
			}
			fmt.Fprintf(w, "%s@%s serves (canary promoted after %s, took %v); %s@%s is kept warm for rollback\n",
				name, res.Serving.Version, stepsDone(c), ms(res.TookMS), name, c.Stable)
			return nil
		},
	}
	f := cmd.Flags()
	f.Float64SliceVar(&steps, "steps", nil, "weights in percent of the calls, increasing; a last 100 is the promotion (default 1,5,25,50)")
	f.DurationVar(&every, "interval", 0, fmt.Sprintf("length of a step's window (default %v)", canary.DefaultInterval))
	f.IntVar(&p.MinCalls, "min-calls", 0, fmt.Sprintf("calls of each version in a step before any verdict (default %d)", canary.DefaultMinCalls))
	f.IntVar(&p.MaxEmptyWindows, "max-empty-windows", 0, fmt.Sprintf("windows in a row without enough calls before an abort (default %d)", canary.DefaultMaxEmptyWindows))
	f.Float64Var(&p.FalseAbortRate, "false-abort-rate", 0, fmt.Sprintf("bound on aborting a canary as good as the stable version (default %v)", canary.DefaultFalseAbortRate))
	f.Float64Var(&p.ErrorRatio, "error-ratio", 0, fmt.Sprintf("failure rate relative to the stable one the test detects (default %v)", canary.DefaultErrorRatio))
	f.Float64Var(&p.ErrorFloor, "error-floor", 0, fmt.Sprintf("least excess failure rate that may abort, 0.001 = 0.1 point (default %v)", canary.DefaultErrorFloor))
	f.Float64Var(&p.LatencyRatio, "latency-ratio", 0, fmt.Sprintf("tolerated slowdown of p50 (default %v)", canary.DefaultLatencyRatio))
	f.Float64Var(&p.TailRatio, "tail-ratio", 0, fmt.Sprintf("tolerated slowdown of p99 (default %v)", canary.DefaultTailRatio))
	f.DurationVar(&floor, "latency-floor", 0, fmt.Sprintf("least slowdown that may abort (default %v)", canary.DefaultLatencyFloor))
	f.Float64Var(&p.LatencyWeight, "latency-weight", 0, fmt.Sprintf("weight in percent from which latencies are compared (default %v)", canary.DefaultLatencyWeight))
	f.BoolVar(&detach, "detach", false, "return once the canary serves instead of following it")
	cmd.AddCommand(newCanaryStatusCmd())
	for _, c := range []struct{ name, short string }{
		{"pause", "Stop a canary's steps from advancing (it is still aborted on a regression)"},
		{"resume", "Resume a paused or frozen canary's automatic decisions"},
		{"freeze", "Keep a canary at its weight with no automatic decision at all"},
		{"promote", "Promote a canary now: it becomes the active version"},
		{"abort", "Abort a canary now: the stable version serves every call"},
	} {
		cmd.AddCommand(newCanaryCommandCmd(c.name, c.short))
	}
	return cmd
}

func newCanaryCommandCmd(name, short string) *cobra.Command {
	return &cobra.Command{
		Use:   name + " MODULE",
		Short: short,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := controlClient(cmd).CanaryCommand(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			c, w := res.Canary, cmd.OutOrStdout()
			switch c.State {
			case string(canary.Promoted):
				fmt.Fprintf(w, "%s@%s serves (canary promoted); %s@%s is kept warm for rollback\n", args[0], c.Version.Version, args[0], c.Stable)
			case string(canary.Aborted):
				fmt.Fprintf(w, "canary %s@%s aborted; %s@%s serves every call\n", args[0], c.Version.Version, args[0], c.Stable)
			default:
				fmt.Fprintf(w, "canary %s@%s %s at step %d of %d (%v%%)\n", args[0], c.Version.Version, c.State, c.Step, len(c.Steps), c.Weight)
			}
			return nil
		},
	}
}

func newCanaryStatusCmd() *cobra.Command {
	var (
		output string
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "status MODULE [-o table|json] [--follow]",
		Short: "Show a module's canary: running, or the last one",
		Long: `Show MODULE's canary: its versions, state, step and weight, both versions'
numbers in the current step, the evidence of the sequential tests and the last
verdict. --follow prints every verdict of a running canary until it ends and
exits as "hotswap canary" does. -o json prints {"ok", "error", "module",
"canary", "serving", "previous", "took_ms"} (see docs/canary.md).`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("canary status: -o %q: want table or json", output)}
			}
			var progress func(control.Progress)
			if follow {
				progress = canaryPrinter(cmd.ErrOrStderr())
			}
			res, err := controlClient(cmd).CanaryStatus(cmd.Context(), args[0], follow, progress)
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return errors.Join(err, enc.Encode(res))
			}
			if res != nil && res.Canary != nil {
				printCanary(cmd.OutOrStdout(), args[0], res.Canary)
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&follow, "follow", false, "print every verdict until the canary ends")
	return cmd
}

// canaryPrinter prints progress lines, and a verdict with its numbers.
func canaryPrinter(w io.Writer) func(control.Progress) {
	plain := progressPrinter(w)
	return func(p control.Progress) {
		if p.Verdict == nil {
			p.Detail = shortRefs(p.Detail)
			plain(p)
			return
		}
		fmt.Fprintf(w, "%7.3fs  %-9s %s\n", float64(p.ElapsedMS)/1000, p.Step, p.Detail)
		if p.Verdict.Decision != string(canary.Begin) {
			fmt.Fprintf(w, "          %s\n", windowLine(p.Verdict.Window))
		}
	}
}

func printCanary(w io.Writer, module string, c *control.CanaryStatus) {
	fmt.Fprintf(w, "canary    %s@%s beside %s@%s: %s", module, c.Version.Version, module, c.Stable, c.State)
	if c.EndedAt == nil {
		fmt.Fprintf(w, ", step %d of %d at %v%% (steps %s, window %v)", c.Step, len(c.Steps), c.Weight, percents(c.Steps), ms(c.IntervalMS))
	} else {
		fmt.Fprintf(w, " at %s", c.EndedAt.Local().Format(time.DateTime))
	}
	fmt.Fprintf(w, "\nstep      %s\n", windowLine(c.Window))
	if v := c.LastVerdict; v != nil {
		fmt.Fprintf(w, "last      %s (%s)\n", v.Text, v.Time.Local().Format(time.DateTime))
	}
	fmt.Fprintf(w, "audit     hotswap history %s (id %s)\n", module, c.ID)
}

func windowLine(win control.CanaryWindow) string {
	n := func(x control.CanaryNumbers) string {
		return fmt.Sprintf("%d calls, %.2f%% failed, p50 %v, p99 %v", x.Calls, 100*x.FailureRate,
			canary.Round(time.Duration(x.P50NS)), canary.Round(time.Duration(x.P99NS)))
	}
	e := win.Evidence
	return fmt.Sprintf("canary %s; stable %s; evidence failures %.1f, p50 %.1f, p99 %.1f (abort at %.1f)",
		n(win.Canary), n(win.Stable), e.Failures, e.P50, e.P99, e.Bound)
}

func percents(steps []float64) string {
	s := make([]string, len(steps))
	for i, w := range steps {
		s[i] = fmt.Sprintf("%v%%", w)
	}
	return strings.Join(s, ",")
}

// stepsDone says how far a promoted canary went.
func stepsDone(c *control.CanaryStatus) string {
	if c.LastVerdict != nil && c.LastVerdict.By != "" {
		return fmt.Sprintf("step %d of %d, by %s", c.Step, len(c.Steps), c.LastVerdict.By)
	}
	return fmt.Sprintf("%d steps", len(c.Steps))
}

// shortRefs shortens every "@sha256:<64 hex>" in s as shortRef does.
func shortRefs(s string) string {
	words := strings.Split(s, " ")
	for i, w := range words {
		words[i] = shortRef(w)
	}
	return strings.Join(words, " ")
}
