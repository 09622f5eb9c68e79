package upgrade_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/upgrade"
)

// A service that upgrades itself on SIGHUP (or on u.Upgrade) without a failed
// request. Compile-only: it needs a port and signals.
func Example() {
	u, err := upgrade.New(upgrade.Options{
		PIDFile: "/run/myservice.pid",
		Logger:  slog.Default(),
	})
	if err != nil {
		log.Fatal(err) // e.g. the parent speaks another protocol major version
	}
	defer u.Close()

	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:8080") // inherited after an upgrade
	if err != nil {
		log.Fatal(err)
	}
	srv := upgrade.NewHTTPServer(&http.Server{Handler: http.DefaultServeMux}, upgrade.HTTPOptions{})
	go srv.Serve(ln)

	if err := u.Ready(); err != nil { // tells the parent, or systemd
		log.Fatal(err)
	}

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	select {
	case <-u.Exit(): // a new process took over
	case <-term:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := srv.Drain(ctx); err != nil {
		log.Print(err)
	}
}

// Upgrade reports what happened; callers branch on the sentinel errors.
// Compile-only: it starts a process.
func ExampleUpgrader_Upgrade() {
	u, err := upgrade.New(upgrade.Options{NoSignals: true, Probation: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	res, err := u.Upgrade(context.Background())
	var ce *upgrade.ChildError
	switch {
	case err == nil:
		fmt.Printf("pid %d took over after %v\n", res.PID, res.Ready)
	case errors.Is(err, upgrade.ErrUpgradeInProgress):
		fmt.Println("try again later")
	case errors.As(err, &ce):
		fmt.Printf("still serving; new process failed during %s: %v\nits stderr ended with:\n%s", ce.Stage, ce.Err, ce.Stderr)
	default:
		fmt.Println(err)
	}
}

func ExampleChildError() {
	err := fmt.Errorf("upgrade: %w", &upgrade.ChildError{
		PID:    4242,
		Binary: "/usr/local/bin/svc",
		Stage:  "init",
		Exit:   "exit status 1",
		Stderr: "open /etc/svc.conf: permission denied\n",
		Err:    upgrade.ErrChildExited,
	})
	fmt.Println(errors.Is(err, upgrade.ErrChildExited), errors.Is(err, upgrade.ErrRolledBack))
	fmt.Println(err)
	// Output:
	// true false
	// upgrade: new process /usr/local/bin/svc (pid 4242) failed during init: new process exited before it was ready (exit status 1); stderr tail: "open /etc/svc.conf: permission denied\n"
}

func ExampleVersionError() {
	err := &upgrade.VersionError{Local: upgrade.Version{Major: 1}, Remote: upgrade.Version{Major: 2, Minor: 3}}
	fmt.Println(errors.Is(err, upgrade.ErrVersionMismatch))
	fmt.Println(err)
	// Output:
	// true
	// hand-over protocol version mismatch: this process speaks 1.0, the other 2.3
}

// An HTTPS server whose clients resume their TLS sessions with the process
// that replaces it, over HTTP/1.1 and HTTP/2. Compile-only: it needs a port.
func ExampleUpgrader_ShareSessionTickets() {
	u, err := upgrade.New(upgrade.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	hs := &http.Server{Handler: http.DefaultServeMux, TLSConfig: &tls.Config{}}
	if err := u.ShareSessionTickets(hs.TLSConfig); err != nil {
		log.Fatal(err)
	}
	ln, err := u.Listen(context.Background(), "tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	srv := upgrade.NewHTTPServer(hs, upgrade.HTTPOptions{})
	go srv.ServeTLS(ln, "/etc/svc/cert.pem", "/etc/svc/key.pem")
	u.Ready()
	<-u.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv.Drain(ctx) // HTTP/2 connections get a GOAWAY, HTTP/1.1 ones Connection: close
}

// A streaming handler hands its client over when the server drains.
func ExampleNoticeFrom() {
	events := func(w http.ResponseWriter, r *http.Request) {
		drain := upgrade.NoticeFrom(r.Context())
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-drain.Done():
				fmt.Fprint(w, "retry: 500\n\n") // EventSource reconnects, to the new process
				return
			case <-r.Context().Done():
				return
			case t := <-tick.C:
				fmt.Fprintf(w, "data: %v\n\n", t)
				http.NewResponseController(w).Flush()
			}
		}
	}
	http.HandleFunc("/events", events)

	n := upgrade.NewDrainNotice()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n.Start(ctx) // what HTTPServer.Drain does
	_, ok := n.Deadline()
	fmt.Println(ok)
	// Output: true
}
