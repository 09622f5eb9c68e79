package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/control"
)

// socketFlag names the persistent flag with the control socket's path.
const socketFlag = "socket"

// controlClient returns a client for the socket the --socket flag names.
func controlClient(cmd *cobra.Command) *control.Client {
	path, _ := cmd.Flags().GetString(socketFlag)
	if path == "" {
		path = control.DefaultSocketPath()
	}
	return control.NewClient(path)
}

func newStatusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status [-o table|json]",
		Short: "Show what a running service serves",
		Long: `Show the service's modules (active, previous and draining versions, calls in
flight, instances, guest memory), its process (pid, generation, the process
it replaced, upgrade state) and its trust mode.

-o json prints the status document described in docs/cli.md; its fields are
stable. On failure it prints {"ok": false, "error": {...}} and exits non-zero.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("status: -o %q: want table or json", output)}
			}
			st, err := controlClient(cmd).Status(cmd.Context())
			return writeAnswer(cmd.OutOrStdout(), output, st, err, func(w io.Writer) { printStatus(w, st) })
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// writeAnswer prints an answer as indented JSON (output "json", also when
// err says it failed), or else with table when err is nil; it returns err.
func writeAnswer(w io.Writer, output string, answer any, err error, table func(io.Writer)) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if eerr := enc.Encode(answer); eerr != nil {
			return errors.Join(err, eerr)
		}
		return err
	}
	if err != nil {
		return err
	}
	table(w)
	return nil
}

// stateLine describes where the modules' state is kept, e.g. "window 20ms,
// /var/lib/hotswap/state.db (1234 commits)".
func stateLine(s control.StateStatus) string {
	if s.Durability == "memory" || s.Path == "" {
		return s.Durability + " (lost with the process)"
	}
	line := s.Durability
	if s.Durability == "window" {
		line += fmt.Sprintf(" %dms", s.CommitWindowMS)
	}
	line += fmt.Sprintf(", %s (%d commits", s.Path, s.Commits)
	if s.Failures > 0 {
		line += fmt.Sprintf(", %d failed", s.Failures)
	}
	line += ")"
	if s.TakingOver {
		line += "; taking the file over from the previous process"
	}
	if s.LastError != "" {
		line += "; last error: " + firstLine(s.LastError)
	}
	return line
}

func printStatus(w io.Writer, st *control.Status) {
	p := st.Process
	fmt.Fprintf(w, "process  pid %d, generation %d", p.PID, p.Generation)
	if p.ParentPID != 0 {
		fmt.Fprintf(w, " (replaced pid %d)", p.ParentPID)
	}
	fmt.Fprintf(w, ", up since %s\n", p.StartedAt.Format(time.RFC3339))
	switch b := p.Binary; {
	case b.Digest != "":
		version := b.Version
		if version == "" {
			version = "(no signed manifest)"
		}
		fmt.Fprintf(w, "binary   %s sha256:%.12s\n", version, b.Digest)
	case b.Error != "":
		fmt.Fprintf(w, "binary   unknown: %s\n", b.Error)
	}
	fmt.Fprintf(w, "upgrade  %s", p.Upgrade.State)
	if ph := p.Upgrade.Phase; ph != "" && ph != p.Upgrade.State {
		fmt.Fprintf(w, " (%s", ph)
		if p.Upgrade.PhasePID != 0 {
			fmt.Fprintf(w, ", pid %d", p.Upgrade.PhasePID)
		}
		fmt.Fprint(w, ")")
	}
	if p.TakingOver {
		fmt.Fprint(w, " (taking over: the process it replaced may still resume)")
	}
	if l := p.Upgrade.Last; l != nil {
		fmt.Fprintf(w, "; last attempt %s: %s", l.StartedAt.Format(time.RFC3339), l.Outcome)
		if l.PID != 0 {
			fmt.Fprintf(w, ", new pid %d", l.PID)
		}
		if l.Error != "" {
			fmt.Fprintf(w, ": %s", firstLine(l.Error))
		}
	}
	fmt.Fprintln(w)
	trust := st.TrustMode
	if trust == "development" {
		trust += " (unsigned artifacts are accepted)"
	}
	if st.DevTrustDir != "" {
		trust += "; development mode: keys of " + st.DevTrustDir + " are trusted (hotswap watch)"
	}
	fmt.Fprintf(w, "trust    %s\n", trust)
	fmt.Fprintf(w, "state    %s\n", stateLine(st.State))
	if p := st.Plugins; p != nil {
		fmt.Fprintf(w, "plugins  %d of at most %d retained, %.1f MiB mapped (never unloaded; an upgrade sheds them)\n",
			len(p.Versions), p.Max, float64(p.MappedBytes)/(1<<20))
		for _, v := range p.Versions {
			use := "retired"
			if v.InUse {
				use = "in use"
			}
			fmt.Fprintf(w, "         %s@%s %s %.1f MiB %s\n", v.Module, v.Version, shortDigest(v.Digest), float64(v.MappedBytes)/(1<<20), use)
		}
	}
	fmt.Fprintln(w)
	if len(st.Modules) == 0 {
		fmt.Fprintln(w, "no modules loaded")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODULE\tACTIVE\tDIGEST\tIN FLIGHT\tINSTANCES\tMEMORY\tCALLS\tFAILURES\tPREVIOUS\tDRAINING")
	for _, m := range st.Modules {
		a := m.Active
		if a == nil {
			a = &control.VersionStatus{Version: "-"}
		}
		prev := "-"
		if m.Previous != nil {
			prev = m.Previous.Version
		}
		draining := "-"
		if len(m.Draining) > 0 {
			var vs []string
			for _, d := range m.Draining {
				vs = append(vs, fmt.Sprintf("%s (%d in flight)", d.Version, d.InFlight))
			}
			draining = strings.Join(vs, ", ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d (%d idle)\t%s\t%d\t%d\t%s\t%s\n", m.Name, a.Version, shortDigest(a.Digest),
			a.InFlight, a.Instances, a.IdleInstances, bytesString(a.MemoryBytes), a.Calls, a.Failures, prev, draining)
	}
	tw.Flush()
	for _, m := range st.Modules {
		if m.Canary != nil {
			fmt.Fprintln(w)
			printCanary(w, m.Name, m.Canary)
		}
	}
}

func shortDigest(hex string) string {
	if len(hex) > 12 {
		return hex[:12]
	}
	if hex == "" {
		return "-"
	}
	return hex
}

func bytesString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}
