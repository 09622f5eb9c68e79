// Package control is the admin API a hotswap service embeds, and its
// client: HTTP/JSON over a unix socket, the path the hotswap CLI (and later
// the fleet agent) uses to ask a running service what serves and to change
// it.
//
// The server checks each connection's peer credentials (SO_PEERCRED)
// against an allow-list (by default the service's own uid and root) before
// any operation runs; a refusal is answered with KindForbidden and recorded
// in the host's audit log. Allowed requests run with the peer (uid and pid)
// as the actor of every change they make.
//
// Operations, under APIPrefix:
//
//	GET  /v1/status                   Status
//	POST /v1/modules/{module}/load    payload body, LabelHeader, ManifestHeader → stream of Line, ending in a ModuleResult
//	POST /v1/modules/{module}/rollback             stream of Line, ending in a ModuleResult
//	GET  /v1/history?module=M&limit=N History
//	POST /v1/upgrade                  UpgradeRequest → stream of Line, ending in an UpgradeResult
//
// A load streams its payload as the request body (with Expect:
// 100-continue) and its manifest in a header: the service checks the
// manifest before it asks for the body, so a refused upload is answered
// before it is sent, and it reads no more than the manifest states.
// Malformed requests are refused with KindBadRequest and recorded
// (ActionRequest), at most BadRequestBurst at once.
//
// Every answer embeds an Outcome: ok, and when not ok an *Error with its
// kind, the failed check, the message and what still serves. Long
// operations stream their progress as newline-delimited JSON (one Progress
// per step) before the result line.
//
// A service serves it like this:
//
//	ln, err := control.Listen(ctx, h, control.DefaultSocketPath())
//	...
//	srv, err := control.New(h, control.Options{Logger: log})
//	...
//	go srv.Serve(ln)
//	defer srv.Shutdown(ctx) // lets an upgrade's caller get its answer
//
// The socket comes from the host's upgrader when it has one, so a new
// binary inherits it: the path stays and keeps answering across upgrades.
package control
