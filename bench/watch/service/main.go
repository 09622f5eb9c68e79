// Command service is the pricing service bench/watch edits and rebuilds: the
// demo's stack (host, the WebAssembly module "pricing", binary upgrades, the
// control socket) in a small main whose own source the benchmark can edit.
// GET /quote answers with the pricing module's quote, and names this
// binary's build in the X-Build header.
//
// bench/watch copies this file into a temporary source tree and rewrites
// the build constant below for every edit of the service's own source.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// build names this build of the service.
const build = "b0"

func main() {
	state := flag.String("state", "", "state directory")
	devTrust := flag.String("dev-trust", "", "development trust root")
	socket := flag.String("socket", "", "control socket")
	addr := flag.String("addr", "127.0.0.1:8080", "HTTP address")
	module := flag.String("module", "", "load this pricing artifact at start, unless a version is current (the restart loop)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *state, *devTrust, *socket, *addr, *module); err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, state, devTrust, socket, addr, module string) error {
	b, err := wasm.New(wasm.Options{CacheDir: state + "/cache", Modules: map[string]wasm.ModuleConfig{
		"pricing": {Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"}},
	}})
	if err != nil {
		return err
	}
	h, err := host.New(host.Options{Backend: b, StateDir: state, DevTrustDir: devTrust, Service: "service",
		Upgrade: &upgrade.Options{Probation: 200 * time.Millisecond}})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		h.Close(cctx)
	}()
	if module != "" {
		if _, err := h.LoadFile(ctx, "pricing", module); err != nil {
			return err
		}
	} else if err := h.RestoreModules(ctx); err != nil {
		return err
	}
	up := h.Upgrader()
	ln, err := up.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	quote := []byte(`{"item":"apple","qty":12}`)
	srv := upgrade.NewHTTPServer(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Build", build)
			out, err := h.Module("pricing").Call(r.Context(), "quote", quote)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Write(out)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}, upgrade.HTTPOptions{})
	go srv.Serve(ln)
	cln, err := control.Listen(ctx, h, socket)
	if err != nil {
		return err
	}
	csrv, err := control.New(h, control.Options{})
	if err != nil {
		return err
	}
	go csrv.Serve(cln)
	if err := up.Ready(); err != nil {
		return err
	}
	select {
	case <-up.Exit():
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	csrv.Shutdown(sctx)
	return srv.Drain(sctx)
}
