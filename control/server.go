package control

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// Limits of the server.
const (
	// DefaultHistoryLimit is how many events a history request without a
	// limit returns.
	DefaultHistoryLimit = 100
	// MaxHistoryLimit caps the limit of a history request.
	MaxHistoryLimit = 10000
)

// Audit actions of the control server; their target is "control".
const (
	// ActionConnect: a request refused because of its peer's credentials.
	ActionConnect audit.Action = "connect"
	// ActionRequest: a malformed request (unknown operation, undecodable
	// body or header). These are recorded at most BadRequestBurst at once
	// and then one a second; a record says how many were left out before
	// it.
	ActionRequest audit.Action = "request"
)

// BadRequestBurst is how many malformed requests are audited at once
// before the rate limit of one a second applies.
const BadRequestBurst = 10

// Options configures a Server. The zero value of each field means its
// default.
type Options struct {
	// Allow lists the user ids whose processes may use the control socket;
	// every request from any other uid is refused, audited and answered
	// with KindForbidden. Defaults to the uid of this process and root (0).
	Allow []uint32
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Server answers the control API of one Host over HTTP/JSON, normally on a
// unix socket made by Listen. It checks every connection's peer credentials
// (SO_PEERCRED) against the allow-list before any operation runs, and names
// the peer (uid and pid) as the actor of every change in the audit log.
//
// A Server is safe for concurrent use.
type Server struct {
	h     *host.Host
	allow []uint32
	log   *slog.Logger
	srv   *http.Server
	mux   *http.ServeMux
	bad   limiter // of the audit records of malformed requests
}

// New returns a Server for h. Serve it on a listener from Listen.
func New(h *host.Host, opts Options) (*Server, error) {
	if h == nil {
		return nil, errors.New("control: nil host")
	}
	s := &Server{h: h, allow: slices.Clone(opts.Allow), log: opts.Logger, mux: http.NewServeMux()}
	if s.allow == nil {
		s.allow = []uint32{uint32(os.Getuid()), 0}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.mux.HandleFunc("GET "+pathStatus, s.status)
	s.mux.HandleFunc("POST "+pathLoad, s.load)
	s.mux.HandleFunc("POST "+pathRollback, s.rollback)
	s.mux.HandleFunc("GET "+pathHistory, s.history)
	s.mux.HandleFunc("POST "+pathUpgrade, s.upgrade)
	s.mux.HandleFunc("POST "+pathCanary, s.startCanary)
	s.mux.HandleFunc("GET "+pathCanary, s.canaryStatusOp)
	s.mux.HandleFunc("POST "+pathCanaryCommand, s.canaryCommand)
	s.mux.HandleFunc("GET "+pathBPF, s.bpfStatus)
	s.mux.HandleFunc("POST "+pathBPFLoad, s.bpfLoad)
	s.mux.HandleFunc("POST "+pathBPFRollback, s.bpfRollback)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.badRequest(w, r, http.StatusNotFound, &Outcome{}, fmt.Errorf("no operation %s %s", r.Method, r.URL.Path))
	})
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Serve answers requests on ln until Shutdown or Close, and then returns
// nil. It takes ownership of ln.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("control: serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting and waits for the requests being answered to
// finish, or for ctx to be done. A load or an upgrade in progress runs to
// its end and its caller gets the answer, so call Shutdown (not Close)
// before a process that handed over to a new one exits.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listeners and every connection at once; the changes
// in progress see their context canceled.
func (s *Server) Close() error { return s.srv.Close() }

type peerKey struct{}

// peer is who is on the other end of a connection.
type peer struct {
	uid, pid int
	err      error // why the credentials are unknown
}

func (p peer) actor() string {
	if p.err != nil {
		return "unknown peer"
	}
	return audit.PeerActor(p.uid, p.pid)
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	uid, pid, err := peerCredentials(c)
	return context.WithValue(ctx, peerKey{}, peer{uid: uid, pid: pid, err: err})
}

// admit returns why p may not use the control socket, or nil.
func (s *Server) admit(p peer) error {
	if p.err != nil {
		return fmt.Errorf("peer credentials unavailable: %w", p.err)
	}
	if !slices.Contains(s.allow, uint32(p.uid)) {
		return fmt.Errorf("uid %d (pid %d) is not on the allow-list of the control socket", p.uid, p.pid)
	}
	return nil
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p, ok := r.Context().Value(peerKey{}).(peer)
	if !ok {
		p.err = errors.New("connection not accepted by Server.Serve")
	}
	ctx := host.WithActor(r.Context(), p.actor())
	if err := s.admit(p); err != nil {
		refusal := fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, err)
		if aerr := s.h.AuditRefusal(ctx, ActionConnect, "control", refusal); aerr != nil {
			s.log.Error("control: audit a refused peer", logkey.Err, aerr)
		}
		s.log.Warn("control: peer refused", "peer", p.actor(), "request", r.Method+" "+r.URL.Path, logkey.Err, err)
		w.Header().Set("Connection", "close")
		writeJSON(w, http.StatusForbidden, &Outcome{Error: &Error{Kind: KindForbidden, Message: err.Error()}})
		return
	}
	s.mux.ServeHTTP(w, r.WithContext(ctx))
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := &Status{
		Outcome:     Outcome{OK: true},
		Process:     processStatus(s.h.Process()),
		TrustMode:   s.h.TrustMode(),
		DevTrustDir: s.h.DevTrustDir(),
		Modules:     []ModuleStatus{},
		State:       stateStatus(s.h.StateStatus()),
	}
	if r, ok := s.h.Retained(); ok {
		st.Plugins = &r
	}
	for _, m := range s.h.Status() {
		st.Modules = append(st.Modules, s.moduleStatus(m))
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) history(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := DefaultHistoryLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			s.badRequest(w, r, http.StatusBadRequest, &History{}, fmt.Errorf("history: limit %q: want a non-negative integer", v))
			return
		}
		if n > 0 {
			limit = min(n, MaxHistoryLimit)
		}
	}
	events, err := s.h.History(r.Context(), audit.Filter{Target: q.Get("module"), Limit: limit})
	if err != nil && len(events) == 0 {
		writeJSON(w, http.StatusInternalServerError, &History{Outcome: Outcome{Error: classify(err)}})
		return
	}
	if err != nil {
		// Some lines were corrupt (a torn last line after a crash); the
		// rest is worth showing.
		s.log.Warn("control: read history", logkey.Err, err)
	}
	if events == nil {
		events = []audit.Event{}
	}
	writeJSON(w, http.StatusOK, &History{Outcome: Outcome{OK: true}, Events: events})
}

func (s *Server) load(w http.ResponseWriter, r *http.Request) {
	up, ok := s.upload(w, r, "load", &ModuleResult{Module: r.PathValue("module")})
	if !ok {
		return
	}
	s.change(w, r, up.st, up.module, func(ctx context.Context) error {
		_, err := s.h.LoadReader(ctx, up.module, up.label, up.manifest, up.body)
		return err
	})
}

// upload is a request whose body is an artifact's payload.
type upload struct {
	module, label string
	manifest      []byte
	st            *stream
	body          io.Reader
}

// upload reads the headers of an upload for op; a malformed one is
// answered with res.
func (s *Server) upload(w http.ResponseWriter, r *http.Request, op string, res answer) (upload, bool) {
	up := upload{module: r.PathValue("module"), label: r.Header.Get(LabelHeader)}
	if up.label == "" {
		up.label = up.module
	}
	if enc := r.Header.Get(ManifestHeader); enc != "" {
		var err error
		if up.manifest, err = base64.StdEncoding.DecodeString(enc); err != nil {
			s.badRequest(w, r, http.StatusBadRequest, res, fmt.Errorf("%s %s: %s header: %v", op, up.module, ManifestHeader, err))
			return up, false
		}
	}
	// The payload is read only once the manifest passed: until then the
	// answer is held back, since a client that sent "Expect: 100-continue"
	// sends no body once an answer began.
	up.st = newStream(w, time.Now())
	up.st.hold = true
	up.body = &heldBody{r: r.Body, st: up.st}
	return up, true
}

// heldBody releases a held stream once the request body is read to its end
// or fails.
type heldBody struct {
	r  io.Reader
	st *stream
}

func (b *heldBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil {
		b.st.release()
	}
	return n, err
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("module")
	s.change(w, r, newStream(w, time.Now()), name, func(ctx context.Context) error {
		_, err := s.h.Rollback(ctx, name)
		return err
	})
}

// change runs do, a change of module name, streaming its progress, and
// answers with the module's state after it.
func (s *Server) change(w http.ResponseWriter, r *http.Request, st *stream, name string, do func(context.Context) error) {
	err := do(host.WithProgress(r.Context(), st.progress))
	res := &ModuleResult{Outcome: Outcome{OK: err == nil}, Module: name, TookMS: time.Since(st.start).Milliseconds()}
	if ms, ok := s.module(name); ok {
		res.Serving, res.Previous = ms.Active, ms.Previous
	}
	if err != nil {
		res.Error = classify(err)
		res.Error.Serving = serving(name, res.Serving)
	}
	st.result(res)
}

// module returns the status of module name without creating an entry.
func (s *Server) module(name string) (ModuleStatus, bool) {
	for _, m := range s.h.Status() {
		if m.Name == name {
			return s.moduleStatus(m), true
		}
	}
	return ModuleStatus{}, false
}

// moduleStatus converts m, with its running canary.
func (s *Server) moduleStatus(m module.Status) ModuleStatus {
	ms := moduleStatus(m)
	ms.Canary = s.runningCanary(m.Name, versionStatus(m.Canary))
	return ms
}

// serving names the version of module name that serves, "" if none.
func serving(name string, v *VersionStatus) string {
	if v == nil {
		return ""
	}
	return name + "@" + v.Version
}

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	var req UpgradeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		s.badRequest(w, r, http.StatusBadRequest, &UpgradeResult{PID: os.Getpid(), ServingPID: os.Getpid()}, fmt.Errorf("upgrade: decode request: %v", err))
		return
	}
	self := os.Getpid()
	thisProcess := fmt.Sprintf("pid %d", self)
	if s.h.Upgrader() == nil {
		writeJSON(w, http.StatusServiceUnavailable, &UpgradeResult{PID: self, ServingPID: self, Outcome: Outcome{Error: &Error{
			Kind: KindUnavailable, Message: "binary upgrades are not enabled in this service", Serving: thisProcess}}})
		return
	}
	st := newStream(w, time.Now())
	res, err := s.h.Upgrade(host.WithProgress(r.Context(), st.progress), req.Binary)
	out := &UpgradeResult{Outcome: Outcome{OK: err == nil}, PID: self, ServingPID: self}
	if !res.Started.IsZero() {
		out.Attempt = upgradeAttempt(&res)
	}
	if err != nil {
		out.Error = classify(err)
		out.Error.Serving = thisProcess
	} else {
		out.ServingPID = res.PID
	}
	st.result(out)
}

// stream writes an NDJSON answer. Its methods are called from the
// handler's goroutine only (progress is reported synchronously).
type stream struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	enc   *json.Encoder
	start time.Time
	once  sync.Once
	// hold keeps progress lines in held instead of writing them, until
	// release or result.
	hold bool
	held []Line
}

func newStream(w http.ResponseWriter, start time.Time) *stream {
	return &stream{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w), start: start}
}

func (st *stream) begin() {
	st.once.Do(func() {
		st.w.Header().Set("Content-Type", ContentTypeNDJSON)
		st.w.Header().Set("Cache-Control", "no-store")
		st.w.WriteHeader(http.StatusOK)
	})
}

func (st *stream) progress(step, detail string) {
	line := Line{Progress: &Progress{Step: step, Detail: detail, ElapsedMS: time.Since(st.start).Milliseconds()}}
	if st.hold {
		st.held = append(st.held, line)
		return
	}
	st.write(line)
}

// release writes the held progress lines and stops holding.
func (st *stream) release() {
	if !st.hold {
		return
	}
	st.hold = false
	for _, l := range st.held {
		st.write(l)
	}
	st.held = nil
}

func (st *stream) result(v any) {
	st.release()
	st.write(Line{Result: v})
}

func (st *stream) write(l Line) {
	st.begin()
	// A caller gone away is noticed through the request's context.
	st.enc.Encode(l)
	st.rc.Flush()
}

// badRequest answers a malformed request with res carrying err, and audits
// it within the rate limit.
func (s *Server) badRequest(w http.ResponseWriter, r *http.Request, code int, res answer, err error) {
	if ok, left := s.bad.allow(time.Now()); ok {
		audited := err
		if left > 0 {
			audited = fmt.Errorf("%w (and %d more malformed requests not recorded before this one)", err, left)
		}
		if aerr := s.h.AuditRefusal(r.Context(), ActionRequest, "control", audited); aerr != nil {
			s.log.Error("control: audit a malformed request", logkey.Err, aerr)
		}
	}
	s.log.Warn("control: malformed request", "request", r.Method+" "+r.URL.Path, logkey.Err, err)
	o := res.outcome()
	o.OK, o.Error = false, &Error{Kind: KindBadRequest, Message: err.Error()}
	writeJSON(w, code, res)
}

// limiter lets BadRequestBurst events through at once and then one a
// second, and counts those it holds back.
type limiter struct {
	mu     sync.Mutex // protects tokens, last and held
	tokens float64
	last   time.Time
	held   int
}

// allow reports whether an event at now may pass and, if so, how many were
// held back since the last one that passed.
func (l *limiter) allow(now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = BadRequestBurst
	} else {
		l.tokens = min(BadRequestBurst, l.tokens+now.Sub(l.last).Seconds())
	}
	l.last = now
	if l.tokens < 1 {
		l.held++
		return false, 0
	}
	l.tokens--
	held, l.held = l.held, 0
	return true, held
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
