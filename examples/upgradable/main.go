// Command upgradable is a trivial HTTP server that replaces its own binary
// without a failed request. It embeds an upgrade.Upgrader: send it SIGHUP,
// or POST /upgrade on the admin socket, and a new process takes over the
// listening socket while this one drains.
//
//	upgradable -addr 127.0.0.1:8080 -admin /tmp/upgradable.sock -pidfile /tmp/upgradable.pid
//	curl http://127.0.0.1:8080/           # hello from pid N
//	kill -HUP $(cat /tmp/upgradable.pid)  # or:
//	curl --unix-socket /tmp/upgradable.sock -X POST http://admin/upgrade
//
// With -cert and -key it serves HTTPS (HTTP/1.1 and HTTP/2): HTTP/2
// connections are drained with GOAWAY, and the TLS session ticket keys go
// to the new process so that clients resume their sessions.
//
// bench/upgrade drives it.
package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/upgrade"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "upgradable:", err)
		os.Exit(1)
	}
}

// upgradeResult is what POST /upgrade answers and -results records.
type upgradeResult struct {
	Outcome string  `json:"outcome"`
	OldPID  int     `json:"old_pid"`
	PID     int     `json:"pid"`
	ReadyMS float64 `json:"ready_ms"`
	Trigger string  `json:"trigger"`
	Error   string  `json:"error,omitempty"`
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("upgradable", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "HTTP listen address")
	admin := fs.String("admin", "", "unix socket for the admin API (POST /upgrade); empty: none")
	pidfile := fs.String("pidfile", "", "pidfile to keep pointing at the serving process")
	results := fs.String("results", "", "append one JSON line per upgrade attempt to this file")
	probation := fs.Duration("probation", upgrade.DefaultProbation, "how long the old process keeps its sockets after the new one is ready")
	drain := fs.Duration("drain", time.Minute, "drain deadline for HTTP connections")
	cert := fs.String("cert", "", "TLS certificate (PEM); with -key, serve HTTPS (HTTP/1.1 and HTTP/2)")
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

	// The request counter survives upgrades through the state blob.
	var served atomic.Uint64
	var resultsMu sync.Mutex // serialises appends to the results file
	u, err := upgrade.New(upgrade.Options{
		PIDFile:   *pidfile,
		Probation: *probation,
		Logger:    log,
		Snapshot: func(context.Context) ([]byte, error) {
			return binary.BigEndian.AppendUint64(nil, served.Load()), nil
		},
		OnResult: func(r upgrade.Result) {
			if *results == "" {
				return
			}
			resultsMu.Lock()
			defer resultsMu.Unlock()
			if err := appendResult(*results, toJSON(r)); err != nil {
				log.Error("record upgrade result", "err", err)
			}
		},
	})
	if err != nil {
		return err
	}
	defer u.Close()
	if st := u.State(); len(st) == 8 {
		served.Store(binary.BigEndian.Uint64(st))
	}

	ln, err := u.Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.WriteString(w, "hello from pid "+pid+"\n")
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	web := upgrade.NewHTTPServer(hs, upgrade.HTTPOptions{Logger: log})
	servers := []*upgrade.HTTPServer{web}
	if *cert != "" {
		// Clients resume their TLS sessions with the next process too.
		hs.TLSConfig = &tls.Config{}
		if err := u.ShareSessionTickets(hs.TLSConfig); err != nil {
			return err
		}
		go web.ServeTLS(ln, *cert, *key)
	} else {
		go web.Serve(ln)
	}

	if *admin != "" {
		aln, err := u.Listen(ctx, "unix", *admin)
		if err != nil {
			return err
		}
		amux := http.NewServeMux()
		amux.HandleFunc("POST /upgrade", func(w http.ResponseWriter, r *http.Request) {
			res, _ := u.Upgrade(r.Context())
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(toJSON(res))
		})
		amux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `{"pid":%d,"served":%d}`+"\n", os.Getpid(), served.Load())
		})
		as := upgrade.NewHTTPServer(&http.Server{Handler: amux}, upgrade.HTTPOptions{Logger: log})
		servers = append(servers, as)
		go as.Serve(aln)
	}

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
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex // protects errs
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Drain(dctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	log.Info("drained; exiting")
	return errors.Join(append(errs, u.Close())...)
}

func toJSON(r upgrade.Result) upgradeResult {
	out := upgradeResult{
		Outcome: r.Outcome.String(),
		OldPID:  os.Getpid(),
		PID:     r.PID,
		ReadyMS: float64(r.Ready.Microseconds()) / 1000,
		Trigger: r.Trigger,
	}
	if r.Err != nil {
		out.Error = r.Err.Error()
	}
	return out
}

func appendResult(path string, r upgradeResult) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
