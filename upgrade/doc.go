// Package upgrade replaces the binary of a running Go service without a
// failed request: the running process starts the new binary, hands it its
// listening sockets, other files and a state blob, waits until it says
// ready, watches it through a probation window, and then drains its own
// connections and exits.
//
// # Embedding
//
// Create one Upgrader per process, early in main (New refuses a second one
// while the first is open), and take every socket through it:
//
//	u, err := upgrade.New(upgrade.Options{PIDFile: "/run/svc.pid"})
//	if err != nil { ... }                  // exit non-zero: the parent keeps serving
//	defer u.Close()
//	ln, err := u.Listen(ctx, "tcp", ":8080") // inherited after an upgrade, new otherwise
//	srv := upgrade.NewHTTPServer(&http.Server{Handler: h}, upgrade.HTTPOptions{})
//	go srv.Serve(ln)
//	if err := u.Ready(); err != nil { ... }
//	<-u.Exit()                             // a successor took over (or Close)
//	srv.Drain(ctxWithDeadline)             // every connection ends cleanly
//
// An upgrade starts on SIGHUP (Options.Signals) or with Upgrader.Upgrade,
// which returns a Result: the new PID and its ready time, or a *ChildError
// with the phase that failed and the tail of the new process's stderr.
//
// # The sequence
//
//  1. Upgrade (or a signal) starts an attempt; a second one while it runs is
//     refused with an error matching ErrUpgradeInProgress. systemd, if
//     NOTIFY_SOCKET is set, is told RELOADING=1.
//  2. Options.PrepareBinary (if set) may copy and verify the binary; its
//     path is executed, by default os.Executable().
//  3. The new process starts with a unix control socket as descriptor 3
//     and every registered socket and file from descriptor 4 on. Its stderr
//     goes through a pipe that the parent mirrors to its own stderr and
//     keeps the tail of, until the new process says ready.
//  4. The parent sends the hello message: protocol version, file names,
//     and the blob from Options.Snapshot. The new process's New reads it; a
//     new process speaking another major protocol version refuses with its
//     own version and exits, and the parent reports a *VersionError.
//  5. The new process calls Ready: it closes inherited files nobody claimed,
//     points its stderr at the parent's stderr, and tells the parent.
//     If it exits first, or is not ready within Options.UpgradeTimeout, or
//     ctx ends, the parent kills it (if needed), reaps it and keeps serving.
//  6. Probation (Options.Probation): the parent stops accepting (Accept and
//     ReadFrom on its sockets block) but keeps the descriptors. The new
//     process accepts on the same kernel sockets, so no connection waits in
//     a queue nobody reads. If the new process dies within the window, the
//     parent resumes accepting, reports RolledBack (ErrRolledBack, OnResult,
//     a log line) and tells systemd READY=1 again; connections still in the
//     accept queue are served by the parent.
//  7. Commit: the parent tells the new process it serves alone (the new
//     process may upgrade from then on), rewrites the pidfile with the new
//     PID, sends MAINPID=<new> and READY=1 to systemd, and closes Exit. The
//     service drains (HTTPServer.Drain) and exits.
//
// # Sockets and files
//
// Listen and ListenPacket name a socket network+":"+addr; File takes any
// name. A new process that asks for the same name gets the same socket:
// same port, same accept queue. Unix socket paths are never unlinked by a
// process that hands the socket over: the last process to own the socket
// (one that closes it with no successor) removes the path.
//
// Descriptors are duplicated without going through os.File.Fd, which would
// put the shared socket into blocking mode and could leave the parent's
// Accept stuck in accept(2) during probation.
//
// # Hand-over protocol
//
// Frames carry a 12-byte header that will never change: magic "HSUP",
// major and minor version, type, and payload length. Peers with the same
// major version interoperate (a newer minor may append fields, which older
// peers ignore); a peer with another major refuses with its own version, so
// an old binary and a new one never misread each other. Version 1.1 adds
// named sections after the state blob, the package's own (the TLS session
// ticket keys). The hello decoder is fuzzed (FuzzReadFrame).
//
// # Draining, protocol by protocol
//
// docs/upgrade.md says, per protocol, what is guaranteed and what the
// service must do. In short: HTTPServer drains HTTP/1.x (below) and HTTP/2
// over TLS or h2c (a GOAWAY to every connection); ShareSessionTickets hands
// the TLS session ticket keys to the new process so that clients resume
// their sessions; package upgrade/grpcdrain drains a gRPC server; a
// DrainNotice in every request's context tells long-lived handlers
// (WebSocket, server-sent events, streams) to hand their clients over; and
// a live connection of a plaintext protocol that can stop between messages
// can move to the new process through File, Options.Snapshot and State.
//
// # HTTP/1.x drain
//
// HTTPServer makes a net/http server end every HTTP/1.x connection after a
// complete response marked "Connection: close", without ever closing a
// connection on which a client may be sending, so that keep-alive and
// non-keep-alive clients that never retry see no reset, EOF or refused
// connection. It does not use http.Server.Shutdown, which closes idle
// connections and freshly accepted ones (golang/go#75591) without a reply.
// The limits are documented on HTTPServer; the main one is that a client
// idle for longer than the drain deadline can lose a request it sends
// exactly when its connection is closed at the deadline.
//
// # systemd
//
// Run the service with Type=notify and ExecReload=kill -HUP $MAINPID; see
// docs/systemd.md. The package writes sd_notify messages itself (no
// dependency) when NOTIFY_SOCKET is set.
//
// # Platform
//
// Linux. The package relies on descriptor inheritance across exec, the
// shared accept queue of a duplicated listening socket, and dup3.
package upgrade
