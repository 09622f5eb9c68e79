package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/audit"
)

func newHistoryCmd() *cobra.Command {
	var (
		limit  int
		output string
	)
	cmd := &cobra.Command{
		Use:   "history [MODULE] [--limit N] [-o table|json]",
		Short: "Show the changes a service made and refused, newest first",
		Long: `Show the service's audit log, newest first: every load, swap, rollback and
upgrade, who asked for it (uid and pid on the control socket), and every
refusal with its reason. MODULE selects one target ("process" for binary
upgrades, "control" for refused connections).`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("history: -o %q: want table or json", output)}
			}
			if limit < 0 {
				return usageError{fmt.Errorf("history: --limit %d: want a positive number", limit)}
			}
			var module string
			if len(args) == 1 {
				module = args[0]
			}
			h, err := controlClient(cmd).History(cmd.Context(), module, limit)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(h)
			}
			if len(h.Events) == 0 {
				fmt.Fprintln(w, "no events")
				return nil
			}
			// One line per change: the record of its start is shown only
			// while no outcome follows it (in progress, or cut short by a
			// crash).
			ended := make(map[string]bool)
			for _, ev := range h.Events {
				if ev.ID != "" && ev.Result != audit.ResultStarted {
					ended[ev.ID] = true
				}
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tACTOR\tACTION\tTARGET\tRESULT\tCHANGE")
			for _, ev := range h.Events {
				if ev.Result == audit.ResultStarted && ended[ev.ID] {
					continue
				}
				change := ""
				switch {
				case ev.From != "" || ev.To != "":
					change = dash(shortRef(ev.From)) + " → " + dash(shortRef(ev.To))
				case ev.Artifact != "":
					change = filepath.Base(ev.Artifact)
				}
				if note := cmp.Or(ev.Error, ev.Detail); note != "" {
					change = strings.TrimPrefix(change+": ", ": ") + firstLine(note)
				}
				actor := ev.Actor
				if actor == "" {
					actor = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ev.Time.Local().Format(time.DateTime), actor, ev.Action, ev.Target, ev.Result, change)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 20, "show at most N events")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// shortRef shortens "v2@sha256:<64 hex>" to "v2@sha256:<12 hex>"; other
// text is returned as it is.
func shortRef(ref string) string {
	if i := strings.Index(ref, "@sha256:"); i >= 0 && len(ref) == i+8+64 {
		return ref[:i+8+12]
	}
	return ref
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
