package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/fleet"
	"github.com/hotswapgo/hotswap/fleet/etcdnode"
)

// fleetFlags are the flags every fleet command shares: where etcd is and
// which group.
type fleetFlags struct {
	endpoints      []string
	cert, key, ca  string
	user, password string
	prefix, group  string
	writer         string
	dialTimeout    time.Duration
}

func (f *fleetFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringSliceVar(&f.endpoints, "etcd", []string{"http://127.0.0.1:2379"}, "etcd endpoints ($HOTSWAP_ETCD)")
	pf.StringVar(&f.cert, "etcd-cert", "", "client certificate for etcd (TLS)")
	pf.StringVar(&f.key, "etcd-key", "", "client key for etcd (TLS)")
	pf.StringVar(&f.ca, "etcd-ca", "", "CA bundle that signs etcd's certificates (TLS)")
	pf.StringVar(&f.user, "etcd-user", "", "etcd user (auth); the password is read from $HOTSWAP_ETCD_PASSWORD")
	pf.StringVar(&f.prefix, "prefix", fleet.DefaultPrefix, "key prefix of the fleet in etcd")
	pf.StringVar(&f.group, "group", "", "service group (required)")
	pf.StringVar(&f.writer, "writer", os.Getenv("USER"), "who asks, recorded in etcd and in every instance's audit log")
	pf.DurationVar(&f.dialTimeout, "dial-timeout", 5*time.Second, "how long to try to reach etcd")
}

func (f *fleetFlags) client() (*clientv3.Client, error) {
	eps := f.endpoints
	if env := os.Getenv("HOTSWAP_ETCD"); env != "" && len(eps) == 1 && eps[0] == "http://127.0.0.1:2379" {
		eps = strings.Split(env, ",")
	}
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: f.dialTimeout, Username: f.user, Password: os.Getenv("HOTSWAP_ETCD_PASSWORD")}
	if f.cert != "" || f.ca != "" {
		tls, err := transport.TLSInfo{CertFile: f.cert, KeyFile: f.key, TrustedCAFile: f.ca}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		cfg.TLS = tls
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", eps, err)
	}
	return cli, nil
}

// withGroup runs do with the group's handle.
func (f *fleetFlags) withGroup(cmd *cobra.Command, do func(ctx context.Context, cli *clientv3.Client, g *fleet.Group) error) error {
	if f.group == "" {
		return usageError{errors.New("--group is required")}
	}
	cli, err := f.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	g, err := fleet.OpenGroup(cli, f.prefix, f.group)
	if err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), f.dialTimeout+fleet.DefaultRequestTimeout)
	defer cancel()
	return do(ctx, cli, g)
}

func newFleetCmd() *cobra.Command {
	f := &fleetFlags{}
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Roll module and binary versions out to a group of instances through etcd",
		Long: `Desired state per service group lives in etcd. Every instance runs a fleet
agent that applies its assignment through its host's trust path and writes what
it applied under its lease; a leader-elected controller moves rollouts in waves
and halts and reverts the first wave that goes bad. See docs/fleet.md.`,
	}
	f.register(cmd)
	cmd.AddCommand(newFleetSetCmd(f, "set"), newFleetSetCmd(f, "rollout"),
		newFleetCommandCmd(f, fleet.Pause), newFleetCommandCmd(f, fleet.Resume), newFleetCommandCmd(f, fleet.Abort),
		newFleetStatusCmd(f), newFleetControllerCmd(f), newFleetAgentCmd(f), newFleetEtcdCmd(), newFleetPushCmd())
	return cmd
}

func newFleetSetCmd(f *fleetFlags, verb string) *cobra.Command {
	var (
		waves     []string
		timeout   time.Duration
		pins      []string
		reg       registryFlags
		bs        []string // MODULE=URL: B versions
		weights   []string // MODULE=PERCENT: B's weights
		noB       []string // modules whose B goes
		binary    string
		binaryPin string
	)
	short, defWaves := "Set the group's module and binary versions: every instance at once", []string{"100%"}
	if verb == "rollout" {
		short, defWaves = "Roll module and binary versions out to the group in waves, halting on the first bad one", fleet.DefaultWaves()
	}
	cmd := &cobra.Command{
		Use:   verb + " [MODULE=URL...] [--binary URL] [--pin MODULE=sha256:DIGEST] [--b MODULE=URL --weight MODULE=PERCENT] [--no-b MODULE]",
		Short: short,
		Long: short + `.

Each URL (file://, http:// or https://) names an artifact; its manifest is at
URL.manifest. An oci:// URL (printed by hotswap fleet push) names both in an OCI
registry. The digest pinned in etcd is the one the manifest states (read here,
not trusted: each instance verifies the signature itself), or the one given
with --pin (--binary-pin for the binary). Modules not named keep their desired
version, and the binary its desired version unless --binary is given. An
instance upgrades its binary first and loads the modules in the new process
(see docs/fleet.md).

--b MODULE=URL adds a B version beside the module's version (A) for a
fleet-wide A/B split: every instance runs both and sends a call with a
routing key to B when the key's hash falls below B's weight, the same hash
on every instance. --weight MODULE=PERCENT sets B's weight (0 to 100; a
change moves only the keys between the old and the new weight and reloads
nothing); --no-b MODULE ends the split. A B version's digest is pinned as
A's (--pin MODULE.b=sha256:DIGEST).`,
		Args: usageArgs(cobra.ArbitraryArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && binary == "" && len(bs) == 0 && len(weights) == 0 && len(noB) == 0 {
				return usageError{errors.New("name at least one MODULE=URL, or --binary, --b, --weight or --no-b")}
			}
			return f.withGroup(cmd, func(ctx context.Context, _ *clientv3.Client, g *fleet.Group) error {
				st, err := g.Status(ctx)
				if err != nil {
					return err
				}
				spec := fleet.Spec{Modules: map[string]fleet.ModuleSpec{}}
				if st.Desired != nil {
					maps.Copy(spec.Modules, st.Desired.Spec.Modules)
					spec.Binary = st.Desired.Spec.Binary
				}
				pinned := map[string]string{}
				for _, p := range pins {
					name, d, ok := strings.Cut(p, "=")
					if !ok {
						return usageError{fmt.Errorf("--pin %q: want MODULE=sha256:DIGEST", p)}
					}
					pinned[name] = d
				}
				for _, a := range args {
					name, url, ok := strings.Cut(a, "=")
					if !ok {
						return usageError{fmt.Errorf("%q: want MODULE=URL", a)}
					}
					m, err := moduleSpec(ctx, reg, url, pinned[name])
					if err != nil {
						return fmt.Errorf("%s %s: %w", verb, name, err)
					}
					m.B = spec.Modules[name].B // a new A keeps its B
					spec.Modules[name] = m
				}
				if err := setSplits(ctx, reg, spec, bs, weights, noB, pinned); err != nil {
					return err
				}
				if binary != "" {
					m, err := moduleSpec(ctx, reg, binary, binaryPin)
					if err != nil {
						return fmt.Errorf("%s binary: %w", verb, err)
					}
					spec.Binary = &fleet.BinarySpec{Version: m.Version, Digest: m.Digest, URL: m.URL}
				}
				w := waves
				if !cmd.Flags().Changed("waves") {
					w = defWaves
				}
				rev, err := g.Set(ctx, fleet.Desired{Spec: spec, Waves: w, WaveTimeout: timeout, Writer: f.writer})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rollout %d of group %s: spec %s, waves %v\n", rev, f.group, spec.ID(), w)
				return nil
			})
		},
	}
	cmd.Flags().StringSliceVar(&waves, "waves", defWaves, `wave sizes: a count ("1") or a share ("10%")`)
	cmd.Flags().DurationVar(&timeout, "wave-timeout", fleet.DefaultWaveTimeout, "halt a wave whose instances did not all ack in time")
	cmd.Flags().StringSliceVar(&pins, "pin", nil, "MODULE=sha256:DIGEST (MODULE.b=… for B): pin this digest instead of reading the manifest")
	cmd.Flags().StringSliceVar(&bs, "b", nil, "MODULE=URL: a B version beside the module's version, for a fleet-wide A/B split")
	cmd.Flags().StringSliceVar(&weights, "weight", nil, "MODULE=PERCENT: B's share of the keyed calls, 0 to 100")
	cmd.Flags().StringSliceVar(&noB, "no-b", nil, "MODULE: end the module's A/B split")
	reg.register(cmd)
	cmd.Flags().StringVar(&binary, "binary", "", "URL of the service binary every instance should run (its manifest at URL.manifest)")
	cmd.Flags().StringVar(&binaryPin, "binary-pin", "", "sha256:DIGEST: pin this binary digest instead of reading the manifest")
	return cmd
}

// setSplits applies the --b, --weight and --no-b flags to spec.
func setSplits(ctx context.Context, reg registryFlags, spec fleet.Spec, bs, weights, noB []string, pinned map[string]string) error {
	for _, b := range bs {
		name, url, ok := strings.Cut(b, "=")
		if !ok {
			return usageError{fmt.Errorf("--b %q: want MODULE=URL", b)}
		}
		m, ok := spec.Modules[name]
		if !ok {
			return usageError{fmt.Errorf("--b %s: the module has no version to split with: name it as MODULE=URL", name)}
		}
		bm, err := moduleSpec(ctx, reg, url, pinned[name+".b"])
		if err != nil {
			return fmt.Errorf("B of %s: %w", name, err)
		}
		var w float64
		if m.B != nil {
			w = m.B.Weight // a new B keeps the weight unless --weight says otherwise
		}
		m.B = &fleet.SplitSpec{Version: bm.Version, Digest: bm.Digest, URL: bm.URL, Weight: w}
		spec.Modules[name] = m
	}
	for _, arg := range weights {
		name, pct, ok := strings.Cut(arg, "=")
		w, err := strconv.ParseFloat(strings.TrimSuffix(pct, "%"), 64)
		if !ok || err != nil || !(w >= 0 && w <= 100) {
			return usageError{fmt.Errorf("--weight %q: want MODULE=PERCENT, 0 to 100", arg)}
		}
		m := spec.Modules[name]
		if m.B == nil {
			return usageError{fmt.Errorf("--weight %s: the module has no B version: give one with --b", name)}
		}
		b := *m.B
		b.Weight = w
		m.B = &b
		spec.Modules[name] = m
	}
	for _, name := range noB {
		m, ok := spec.Modules[name]
		if !ok || m.B == nil {
			return usageError{fmt.Errorf("--no-b %s: the module has no B version", name)}
		}
		m.B = nil
		spec.Modules[name] = m
	}
	return nil
}

// moduleSpec reads the manifest beside url for the digest and version to
// pin, unless pin is given.
func moduleSpec(ctx context.Context, reg registryFlags, url, pin string) (fleet.ModuleSpec, error) {
	m := fleet.ModuleSpec{URL: url, Digest: pin}
	if pin != "" {
		return m, nil
	}
	if strings.HasPrefix(url, fleet.OCIScheme) {
		src, err := reg.source()
		if err != nil {
			return m, err
		}
		return src.ResolveOCI(ctx, url)
	}
	path, ok := strings.CutPrefix(url, "file://")
	if !ok {
		return m, errors.New("only a file:// or oci:// URL's manifest is read here; pin the digest of another URL with --pin")
	}
	raw, err := os.ReadFile(artifact.ManifestPath(filepath.Clean(path)))
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	sm, err := artifact.ParseManifest(raw)
	if err != nil {
		return m, err
	}
	m.Digest, m.Version = sm.Manifest.Digest.String(), sm.Manifest.Version
	return m, ctx.Err()
}

func newFleetCommandCmd(f *fleetFlags, c fleet.Command) *cobra.Command {
	return &cobra.Command{
		Use:   string(c),
		Short: map[fleet.Command]string{fleet.Pause: "Hold the running rollout at its wave", fleet.Resume: "Resume a paused rollout", fleet.Abort: "Abort the running rollout and revert every instance it moved"}[c],
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.withGroup(cmd, func(ctx context.Context, _ *clientv3.Client, g *fleet.Group) error {
				r, err := g.Command(ctx, c, f.writer)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s sent to rollout %d (%s, wave %d)\n", c, r.Revision, r.Phase, r.Wave+1)
				return nil
			})
		},
	}
}

func newFleetStatusCmd(f *fleetFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the group's desired, rollout and applied state",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.withGroup(cmd, func(ctx context.Context, _ *clientv3.Client, g *fleet.Group) error {
				st, err := g.Status(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(st)
				}
				fmt.Fprint(cmd.OutOrStdout(), st)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newFleetControllerCmd(f *fleetFlags) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run a rollout controller for the group until interrupted (any number may run; one leads)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.group == "" {
				return usageError{errors.New("--group is required")}
			}
			cli, err := f.client()
			if err != nil {
				return err
			}
			defer cli.Close()
			if name == "" {
				host, _ := os.Hostname()
				name = fmt.Sprintf("%s-%d", host, os.Getpid())
			}
			c, err := fleet.NewController(fleet.ControllerOptions{Client: cli, Group: f.group, Prefix: f.prefix, Name: name})
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "controller %s of group %s: campaigning\n", name, f.group)
			if err := c.Run(cmd.Context()); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name in the election (defaults to host-pid)")
	return cmd
}

func newFleetAgentCmd(f *fleetFlags) *cobra.Command {
	var id, binaryDir string
	cmd := &cobra.Command{
		Use:   "agent --id INSTANCE [--socket PATH] [--binary-dir DIR]",
		Short: "Run a fleet agent beside a service (a sidecar), applying through its control socket, until interrupted",
		Long: `Run a fleet agent beside a service: it watches the instance's assignment in
etcd, fetches each artifact by digest, and hands it to the service over its
control socket (--socket), which verifies it through its own trust path. A
binary is written into --binary-dir (default: the socket's directory, which
the service must be able to read) for the service's upgrade. What it applied
is written under its lease in etcd. See docs/fleet.md.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.group == "" || id == "" {
				return usageError{errors.New("--group and --id are required")}
			}
			ctl := controlClient(cmd)
			if binaryDir == "" {
				binaryDir = filepath.Dir(ctl.Socket())
			}
			dir, err := filepath.Abs(binaryDir)
			if err != nil {
				return usageError{fmt.Errorf("--binary-dir: %w", err)}
			}
			cli, err := f.client()
			if err != nil {
				return err
			}
			defer cli.Close()
			a, err := fleet.NewAgent(fleet.AgentOptions{Client: cli, Service: fleet.SocketService(ctl, dir), Group: f.group,
				Instance: id, Prefix: f.prefix, Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))})
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "agent %s of group %s: service at %s\n", id, f.group, ctl.Socket())
			if err := a.Run(cmd.Context()); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "id", os.Getenv("HOTSWAP_FLEET_INSTANCE"), "instance name in the group ($HOTSWAP_FLEET_INSTANCE)")
	cmd.Flags().StringVar(&binaryDir, "binary-dir", "", "where a fetched binary is written for the service to verify (default: the socket's directory)")
	return cmd
}

func newFleetEtcdCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "etcd --dir DIR",
		Short: "Run a single-node etcd on loopback for a one-machine try-out, until interrupted",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError{errors.New("--dir is required")}
			}
			c, err := etcdnode.Start(cmd.Context(), etcdnode.Options{Dir: dir, Fsync: true})
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "etcd serves on %s\n", strings.Join(c.Endpoints(), ","))
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "data directory")
	return cmd
}
