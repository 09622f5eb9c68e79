// Command grpcecho is a gRPC service that replaces its own binary under
// load without a failed call. It embeds an upgrade.Upgrader and serves
// through grpcdrain: on SIGHUP a new process takes over the listening
// socket, the old one sends its connections a GOAWAY, finishes the calls in
// flight and ends its Chat streams with codes.Unavailable, which tells
// clients to open them again (on the new process).
//
//	grpcecho -addr 127.0.0.1:50051 -pidfile /tmp/grpcecho.pid
//	kill -HUP $(cat /tmp/grpcecho.pid)
//
// With -cert and -key it serves over TLS, sharing its session ticket keys
// with the process that replaces it so that clients resume their sessions.
// bench/upgrade -mode grpc drives it.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hotswapgo/hotswap/examples/grpcecho/echo"
	"github.com/hotswapgo/hotswap/upgrade"
	"github.com/hotswapgo/hotswap/upgrade/grpcdrain"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "grpcecho:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("grpcecho", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:50051", "gRPC listen address")
	pidfile := fs.String("pidfile", "", "pidfile to keep pointing at the serving process")
	results := fs.String("results", "", "append one JSON line per upgrade attempt to this file")
	probation := fs.Duration("probation", upgrade.DefaultProbation, "how long the old process keeps its sockets after the new one is ready")
	drain := fs.Duration("drain", time.Minute, "drain deadline")
	cert := fs.String("cert", "", "TLS certificate (PEM); with -key, serve over TLS")
	key := fs.String("key", "", "TLS private key (PEM)")
	verbose := fs.Bool("v", false, "log every upgrade step")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("self", os.Getpid())

	var resultsMu sync.Mutex // serialises appends to the results file
	u, err := upgrade.New(upgrade.Options{
		PIDFile:   *pidfile,
		Probation: *probation,
		Logger:    log,
		OnResult: func(r upgrade.Result) {
			if *results == "" {
				return
			}
			resultsMu.Lock()
			defer resultsMu.Unlock()
			if err := appendResult(*results, r); err != nil {
				log.Error("record upgrade result", "err", err)
			}
		},
	})
	if err != nil {
		return err
	}
	defer u.Close()

	var sopts []grpc.ServerOption
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			return err
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{pair}}
		if err := u.ShareSessionTickets(cfg); err != nil {
			return err
		}
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	ln, err := u.Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	srv := grpcdrain.NewServer(grpcdrain.Options{Logger: log}, sopts...)
	echo.Register(srv, echo.Service{Name: strconv.Itoa(os.Getpid())})
	go srv.Serve(ln)

	if err := u.Ready(); err != nil {
		return err
	}
	log.Info("serving", "addr", ln.Addr(), "parent", u.HasParent())
	select {
	case <-u.Exit(): // a new process took over
	case <-ctx.Done(): // SIGTERM: shut down
	}
	dctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	err = srv.Drain(dctx)
	log.Info("drained; exiting")
	return errors.Join(err, u.Close())
}

// appendResult records an upgrade attempt as a JSON line, as
// examples/upgradable does.
func appendResult(path string, r upgrade.Result) error {
	line := struct {
		Outcome string  `json:"outcome"`
		OldPID  int     `json:"old_pid"`
		PID     int     `json:"pid"`
		ReadyMS float64 `json:"ready_ms"`
		Trigger string  `json:"trigger"`
		Error   string  `json:"error,omitempty"`
	}{r.Outcome.String(), os.Getpid(), r.PID, float64(r.Ready.Microseconds()) / 1000, r.Trigger, ""}
	if r.Err != nil {
		line.Error = r.Err.Error()
	}
	b, err := json.Marshal(line)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	return errors.Join(err, f.Close())
}
