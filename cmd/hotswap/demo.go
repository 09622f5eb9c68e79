package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/examples/pricing"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/dropdir"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/internal/statedir"
	"github.com/hotswapgo/hotswap/module/goplugin"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/telemetry"
	"github.com/hotswapgo/hotswap/upgrade"
)

// DefaultDemoAddr is where the demo serves unless --addr says otherwise.
const DefaultDemoAddr = "127.0.0.1:8080"

// DefaultDemoAdminAddr is where the demo serves its status page, /metrics
// and /debug/pprof unless --admin says otherwise.
const DefaultDemoAdminAddr = "127.0.0.1:8081"

// demoService is the name the demo signs its own binary with, and so the
// name every binary that upgrades it must be signed with.
const demoService = "hotswap"

// demoBinaryEnv carries the path of the binary the user started down the
// chain of upgraded processes.
const demoBinaryEnv = "HOTSWAP_DEMO_BINARY"

type demoOptions struct {
	addr          string
	admin         string // "" for no admin listener
	dev           bool
	profileLabels bool
	traceCalls    float64 // share of module calls traced (host.Options.TraceCalls)
	devTrust      string
}

func newDemoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo [--addr 127.0.0.1:8080]",
		Short: "Run the pricing example service with hot-swappable modules",
		Long: `Run the pricing example: an HTTP service that answers price quotes through
the WebAssembly module "pricing", hot-swappable while it serves.

On first start it makes a signing key (keys/ and trust/ in the state
directory), builds the example modules and signs them into demo/artifacts/.
Then it serves, loading pricing v1 (or the version that was current before).

Drop an artifact (file.wasm with file.wasm.manifest) into demo/drop/ to load
it; send SIGHUP to upgrade the binary. The admin address serves a live status
page, Prometheus metrics at /metrics and profiles at /debug/pprof; traces go
to an OTLP endpoint when the OTEL_* environment names one. The state directory is
$` + host.StateDirEnv + `, else hotswap/ in the user configuration directory.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&o.addr, "addr", DefaultDemoAddr, "address to serve HTTP on")
	cmd.Flags().BoolVar(&o.dev, "dev", false, "development trust mode: accept unsigned artifacts")
	cmd.Flags().StringVar(&o.admin, "admin", DefaultDemoAdminAddr,
		"address of the status page, /metrics and /debug/pprof (loopback only: it exposes profiles); empty for none")
	cmd.Flags().BoolVar(&o.profileLabels, "profile-labels", false,
		"set pprof labels module and version around every module call")
	cmd.Flags().Float64Var(&o.traceCalls, "trace-calls", 0, fmt.Sprintf(
		"share of module calls without a parent span that get a span, when OTEL_* turns tracing on (e.g. %v); 0 for none", telemetry.DefaultTraceCalls))
	cmd.Flags().StringVar(&o.devTrust, "dev-trust", "", "development trust root: also trust the keys in DIR (made by hotswap watch)")
	return cmd
}

func runDemo(ctx context.Context, o demoOptions, stdout, stderr io.Writer) error {
	if o.devTrust != "" {
		abs, err := filepath.Abs(o.devTrust)
		if err != nil {
			return err
		}
		o.devTrust = abs
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	state, err := host.DefaultStateDir()
	if err != nil {
		return err
	}
	demoDir := filepath.Join(state, "demo")
	dropDir := filepath.Join(demoDir, "drop")
	cacheDir := filepath.Join(state, "cache", "wasm")
	pluginDir := filepath.Join(state, "cache", "goplugin")
	for _, dir := range []string{state, dropDir, cacheDir, pluginDir} {
		// Compiled code and artifacts decide what runs: only this user may
		// write where they live.
		if err := statedir.Ensure(dir); err != nil {
			return err
		}
	}

	signer, err := demoSigner(state, stdout)
	if err != nil {
		return err
	}
	arts, err := demoArtifacts(ctx, demoDir, signer, log)
	if err != nil {
		return err
	}

	backend, err := wasm.New(wasm.Options{CacheDir: cacheDir, Logger: log, Modules: map[string]wasm.ModuleConfig{
		pricing.Module: {
			Grants:           []wasm.Capability{wasm.CapKV},
			RequiredHandlers: []string{"quote"},
			MemoryLimit:      64 << 20,
			InitTimeout:      5 * time.Second,
			CallTimeout:      time.Second,
		},
	}})
	if err != nil {
		return err
	}
	// Go plugins of the pricing module (hotswap build --plugin) load too.
	plugins, err := goplugin.New(goplugin.Options{Dir: pluginDir, Logger: log, RequiredHandlers: []string{"quote"},
		InitTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	// Upgrades execute the binary the user started (verified and copied into
	// the store), not the store copy a previous upgrade runs from.
	binary := os.Getenv(demoBinaryEnv)
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return err
		}
		os.Setenv(demoBinaryEnv, binary)
	}
	tp, err := telemetry.NewTracerProvider(ctx)
	if err != nil {
		return err
	}
	hopts := host.Options{
		Backend:       backend,
		Plugins:       plugins,
		StateDir:      state,
		Development:   o.dev,
		DevTrustDir:   o.devTrust,
		Service:       demoService,
		Logger:        log,
		Upgrade:       &upgrade.Options{Binary: binary, PIDFile: filepath.Join(demoDir, "hotswap-demo.pid"), Logger: log},
		TimeCalls:     telemetry.DefaultTimeCalls,
		ProfileLabels: o.profileLabels,
	}
	if tp != nil {
		hopts.TracerProvider, hopts.TraceCalls = tp, o.traceCalls
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tp.Shutdown(sctx)
		}()
	}
	h, err := host.New(hopts)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		h.Close(cctx)
	}()
	up := h.Upgrader()
	if !up.HasParent() {
		if err := signSelf(ctx, signer, binary); err != nil {
			log.Warn("could not sign this binary; upgrades will be refused", logkey.Err, err)
		}
	}

	if err := h.RestoreModules(ctx); err != nil {
		log.Warn("restore modules", logkey.Err, err)
	}
	if h.Module(pricing.Module).Status().Active == nil {
		if _, err := h.LoadFile(host.WithActor(ctx, "demo"), pricing.Module, arts["v1"]); err != nil {
			return fmt.Errorf("load pricing v1: %w", err)
		}
	}

	ln, err := up.Listen(ctx, "tcp", o.addr)
	if err != nil {
		return err
	}
	srv := upgrade.NewHTTPServer(&http.Server{
		Handler:           pricing.Handler(h.Module(pricing.Module)),
		ReadHeaderTimeout: 10 * time.Second,
	}, upgrade.HTTPOptions{Logger: log})
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	// The admin listener, inherited across upgrades like the service's.
	var admin *upgrade.HTTPServer
	if o.admin != "" {
		aln, err := up.Listen(ctx, "tcp", o.admin)
		if err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		metrics := prometheus.NewRegistry()
		metrics.MustRegister(telemetry.NewCollector(h), collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		admin = upgrade.NewHTTPServer(&http.Server{
			Handler:           telemetry.AdminHandler(h, metrics),
			ReadHeaderTimeout: 10 * time.Second,
		}, upgrade.HTTPOptions{Logger: log})
		go func() {
			if err := admin.Serve(aln); err != nil {
				log.Warn("admin listener stopped", logkey.Err, err)
			}
		}()
	}

	// The control socket: the CLI's status, load, rollback, history and
	// upgrade talk to it. It comes from the upgrader, so it is inherited.
	cln, err := control.Listen(ctx, h, control.DefaultSocketPath())
	if err != nil {
		return err
	}
	csrv, err := control.New(h, control.Options{Logger: log})
	if err != nil {
		return err
	}
	go csrv.Serve(cln)
	defer func() {
		// Shutdown lets the caller of an upgrade read its answer.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		csrv.Shutdown(sctx)
	}()

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		err := dropdir.Watch(wctx, dropDir, ".wasm", 0, func(path string) {
			name := moduleOf(path)
			st, err := h.LoadFile(host.WithActor(wctx, "watch"), name, path)
			if err != nil {
				serving := "nothing"
				if a := h.Module(name).Status().Active; a != nil {
					serving = name + "@" + a.Version
				}
				fmt.Fprintf(stdout, "refused %s: %v\n  %s keeps serving\n", filepath.Base(path), err, serving)
				return
			}
			fmt.Fprintf(stdout, "%s@%s now serves (from %s)\n", name, st.Version, filepath.Base(path))
		})
		if err != nil {
			log.Error("drop directory watch stopped", logkey.Err, err)
		}
	}()

	if err := up.Ready(); err != nil {
		return err
	}
	if !up.HasParent() {
		printDemoHelp(stdout, o.addr, arts, dropDir, control.DefaultSocketPath(), h.Module(pricing.Module).Status().Active.Version, state)
		if o.admin != "" {
			fmt.Fprintf(stdout, "status page: http://%[1]s/   metrics: http://%[1]s/metrics   profiles: http://%[1]s/debug/pprof/\n\n", o.admin)
		}
	} else {
		fmt.Fprintf(stdout, "hotswap demo: pid %d took over http://%s\n", os.Getpid(), o.addr)
	}

	select {
	case <-up.Exit():
		log.Info("a new process took over; draining")
	case <-ctx.Done():
		log.Info("stopping; draining")
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
	stopWatch()
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Drain(dctx); err != nil {
		log.Warn("drain", logkey.Err, err)
	}
	if admin != nil {
		if err := admin.Drain(dctx); err != nil {
			log.Warn("drain admin listener", logkey.Err, err)
		}
	}
	return nil
}

func printDemoHelp(w io.Writer, addr string, arts map[string]string, dropDir, socket, serving, state string) {
	pid := os.Getpid()
	fmt.Fprintf(w, `hotswap demo: pricing service on http://%[1]s (pid %[2]d), module pricing@%[7]s
control socket: %[8]s
state:          %[9]s

  quote:     curl 'http://%[1]s/quote?item=apple&qty=12'
  status:    hotswap status
  swap:      hotswap load pricing %[3]s        (or: cp %[3]s* %[4]s/)
  refused:   hotswap load pricing %[5]s        (traps in init: refused, the serving version stays)
  tampered:  hotswap load pricing %[6]s        (digest mismatch)
  rollback:  hotswap rollback pricing
  canary:    hotswap canary pricing %[3]s --interval 10s   (1%%, 5%%, 25%%, 50%% of the calls, then promoted)
  aborted:   hotswap canary pricing %[10]s   (fails 10%% of quotes: aborted)
  history:   hotswap history pricing
  upgrade:   hotswap upgrade                   (or: kill -HUP %[2]d; listeners and module state carry over)

`, addr, pid, arts["v2"], dropDir, arts["broken-trapinit"], arts["tampered"], serving, socket, state, arts["broken-flaky"])
}

// moduleOf names the module an artifact is for: its manifest's name, else
// the file name up to the first '-' or '.'.
func moduleOf(path string) string {
	if data, err := os.ReadFile(artifact.ManifestPath(path)); err == nil {
		if sm, err := artifact.ParseManifest(data); err == nil {
			return sm.Manifest.Name
		}
	}
	base := filepath.Base(path)
	if i := strings.IndexAny(base, "-."); i > 0 {
		return base[:i]
	}
	return base
}

// demoSigner returns the demo's signing key, making one (trusted by the
// state directory's trust/) on first start.
func demoSigner(state string, stdout io.Writer) (*artifact.Signer, error) {
	keys := filepath.Join(state, "keys")
	matches, _ := filepath.Glob(filepath.Join(keys, "*"+artifact.PrivateKeySuffix))
	var priv []byte
	if len(matches) > 0 {
		k, err := artifact.LoadPrivateKey(matches[0])
		if err != nil {
			return nil, fmt.Errorf("demo key: %w", err)
		}
		priv = k
	} else {
		k, err := artifact.GenerateKey(nil)
		if err != nil {
			return nil, err
		}
		privPath, _, err := artifact.WriteKeyPair(keys, k)
		if err != nil {
			return nil, fmt.Errorf("demo key: %w", err)
		}
		fmt.Fprintf(stdout, "made signing key %s (first start)\n", privPath)
		priv = k
	}
	signer, err := artifact.NewSigner(priv)
	if err != nil {
		return nil, err
	}
	if _, err := artifact.WritePublicKey(filepath.Join(state, "trust"), signer.PublicKey()); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("trust demo key: %w", err)
	}
	return signer, nil
}
