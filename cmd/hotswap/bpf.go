package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/kernel"
)

func newBPFCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bpf",
		Short: "Replace eBPF programs of a running service (the kernel level)",
		Long: `The service attaches eBPF programs to network interfaces through slots, one
per attach point (see docs/ebpf.md). "hotswap bpf load" replaces a slot's
program in one atomic link update, keeping its maps; "hotswap bpf rollback"
puts the previous program back; "hotswap bpf status" lists the slots.`,
	}
	cmd.AddCommand(newBPFLoadCmd(), newBPFStatusCmd(), newBPFRollbackCmd())
	return cmd
}

func newBPFLoadCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "load SLOT OBJECT",
		Short: "Swap a new version of an eBPF program into a slot",
		Long: `Send OBJECT (an eBPF ELF object) and its manifest (OBJECT.manifest, kind
"bpf", named for SLOT) to the service, which verifies them (digest,
signature, policy), checks the program's type and that the maps the serving
version keeps state in are declared the same, loads it into the kernel with
those maps, and replaces the attached program in one link update. The
replaced version stays loaded for "hotswap bpf rollback". If the service
gave the slot a health check, a new version that fails it is rolled back
automatically.

Exits 0 when the new version serves. Otherwise the message names the failed
check (with the tail of the kernel verifier's log when the kernel refused
the program) and the version that keeps serving.`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			slot, path := args[0], args[1]
			res, err := controlClient(cmd).BPFLoadFile(cmd.Context(), slot, path)
			if err != nil {
				return err
			}
			v := res.Serving
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s serves (sha256:%s, program %d, link update %v, took %v)",
				slot, v.Version, shortDigest(v.Digest), v.ProgramID, v.Switch, ms(res.TookMS))
			if res.Previous != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "; %s@%s is kept loaded for rollback", slot, res.Previous.Version)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
}

func newBPFRollbackCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rollback SLOT",
		Short: "Put the previous eBPF program of a slot back",
		Long: `Replace SLOT's program by the version it replaced, still loaded, in one link
update. The version rolled back from is unloaded.

Exits 0 when the previous version serves. Otherwise the message says why and
which version keeps serving.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			slot := args[0]
			res, err := controlClient(cmd).BPFRollback(cmd.Context(), slot)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s@%s serves again (sha256:%s, program %d, took %v)\n",
				slot, res.Serving.Version, shortDigest(res.Serving.Digest), res.Serving.ProgramID, ms(res.TookMS))
			return nil
		},
	}
}

func newBPFStatusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status [-o table|json]",
		Short: "List a service's eBPF slots and their versions",
		Long: `Show every eBPF slot of the service: its program, attach point, interface
and network namespace, and its active and previous versions with their
kernel program ids and trust mode.

-o json prints {"ok": true, "slots": [...]} (see docs/ebpf.md).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("bpf status: -o %q: want table or json", output)}
			}
			st, err := controlClient(cmd).BPFStatus(cmd.Context())
			return writeAnswer(cmd.OutOrStdout(), output, st, err, func(w io.Writer) { printBPFStatus(w, st) })
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func printBPFStatus(w io.Writer, st *control.BPFStatus) {
	if len(st.Slots) == 0 {
		fmt.Fprintln(w, "no eBPF slots")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPROGRAM\tATTACH\tINTERFACE\tACTIVE\tPROG ID\tPREVIOUS\tTRUST")
	for _, s := range st.Slots {
		iface := s.Interface
		if s.Netns != "" {
			iface += " (netns " + s.Netns + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Program, s.Attach, iface,
			bpfVersion(s.Active), bpfProgID(s.Active), bpfVersion(s.Previous), s.Trust)
	}
	tw.Flush()
}

func bpfVersion(v *kernel.VersionStatus) string {
	if v == nil {
		return "-"
	}
	return v.Version + " (" + shortDigest(v.Digest) + ")"
}

func bpfProgID(v *kernel.VersionStatus) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprint(v.ProgramID)
}
