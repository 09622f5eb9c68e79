package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/host"
)

// Paths of the canary operations.
const (
	pathCanary        = APIPrefix + "/modules/{module}/canary"
	pathCanaryCommand = APIPrefix + "/modules/{module}/canary/{command}"
)

// PolicyHeader carries a canary's CanaryPolicy, as JSON, on the upload
// that starts it.
const PolicyHeader = "Hotswap-Canary-Policy"

// maxPolicy bounds the PolicyHeader.
const maxPolicy = 4 << 10

// Canary commands, the last element of their path.
var canaryCommands = map[string]canary.Decision{
	"pause": canary.Pause, "resume": canary.Resume, "freeze": canary.Freeze,
	"promote": canary.Promote, "abort": canary.Abort,
}

// CanaryPolicy is a canary's policy on the wire (see canary.Policy); zero
// fields mean the service's defaults.
type CanaryPolicy struct {
	// Steps are the weights in percent; a last 100 is the promotion.
	Steps           []float64 `json:"steps,omitempty"`
	IntervalMS      int64     `json:"interval_ms,omitempty"`
	MinCalls        int       `json:"min_calls,omitempty"`
	MaxEmptyWindows int       `json:"max_empty_windows,omitempty"`
	FalseAbortRate  float64   `json:"false_abort_rate,omitempty"`
	ErrorRatio      float64   `json:"error_ratio,omitempty"`
	ErrorFloor      float64   `json:"error_floor,omitempty"`
	LatencyRatio    float64   `json:"latency_ratio,omitempty"`
	TailRatio       float64   `json:"tail_ratio,omitempty"`
	LatencyFloorNS  int64     `json:"latency_floor_ns,omitempty"`
	LatencyWeight   float64   `json:"latency_weight,omitempty"`
	FailureLimit    int       `json:"failure_limit,omitempty"`
}

func (p CanaryPolicy) policy() canary.Policy {
	return canary.Policy{Steps: p.Steps, Interval: time.Duration(p.IntervalMS) * time.Millisecond, MinCalls: p.MinCalls,
		MaxEmptyWindows: p.MaxEmptyWindows, FalseAbortRate: p.FalseAbortRate, ErrorRatio: p.ErrorRatio,
		ErrorFloor: p.ErrorFloor, LatencyRatio: p.LatencyRatio, TailRatio: p.TailRatio, LatencyFloor: time.Duration(p.LatencyFloorNS),
		LatencyWeight: p.LatencyWeight, FailureLimit: p.FailureLimit}
}

// CanaryStatus describes a module's canary.
type CanaryStatus struct {
	// ID is the audit ID of the canary's records (hotswap history).
	ID string `json:"id"`
	// Version is the canary version: live while it runs; only its version
	// and digest once it ended.
	Version *VersionStatus `json:"version"`
	// Stable is the version it is compared with.
	Stable       string `json:"stable"`
	StableDigest string `json:"stable_digest"`
	// Artifact is the artifact as the one who started it named it.
	Artifact string `json:"artifact"`
	// State is running, paused, frozen, promoting, promoted or aborted.
	State string `json:"state"`
	// Step is the current step, from 1, of Steps (weights in percent,
	// without the promotion); Weight is the percent of calls it serves.
	Step          int        `json:"step"`
	Steps         []float64  `json:"steps"`
	Weight        float64    `json:"weight"`
	IntervalMS    int64      `json:"interval_ms"`
	MinCalls      int        `json:"min_calls"`
	StartedAt     time.Time  `json:"started_at"`
	StepStartedAt time.Time  `json:"step_started_at"`
	EndedAt       *time.Time `json:"ended_at"`
	// EmptyWindows counts the step's windows that ended without enough
	// calls; CheckFailures the failed user checks.
	EmptyWindows  int `json:"empty_windows"`
	CheckFailures int `json:"check_failures"`
	// Window holds the current step's numbers.
	Window CanaryWindow `json:"window"`
	// LastVerdict is the last decision; null before the first.
	LastVerdict *CanaryVerdict `json:"last_verdict"`
}

// CanaryWindow is both versions' numbers over the same calls.
type CanaryWindow struct {
	Start  time.Time     `json:"start"`
	End    time.Time     `json:"end"`
	Stable CanaryNumbers `json:"stable"`
	Canary CanaryNumbers `json:"canary"`
	// Evidence holds the sequential tests' log-likelihood ratios; one
	// reaching Bound aborts the canary.
	Evidence CanaryEvidence `json:"evidence"`
}

// CanaryNumbers are one version's calls in a window.
type CanaryNumbers struct {
	Calls       uint64  `json:"calls"`
	Failures    uint64  `json:"failures"`
	FailureRate float64 `json:"failure_rate"`
	// Timed calls have a duration; P50NS and P99NS are their quantiles in
	// nanoseconds (histogram bucket bounds, within 4.4%).
	Timed uint64 `json:"timed"`
	P50NS int64  `json:"p50_ns"`
	P99NS int64  `json:"p99_ns"`
}

// CanaryEvidence is the state of the sequential tests.
type CanaryEvidence struct {
	Failures float64 `json:"failures"`
	P50      float64 `json:"p50"`
	P99      float64 `json:"p99"`
	Bound    float64 `json:"bound"`
}

// CanaryVerdict is one decision of a canary.
type CanaryVerdict struct {
	Seq  int       `json:"seq"`
	Time time.Time `json:"time"`
	// Decision is begin, pass, hold, pause, resume, freeze, promote or
	// abort.
	Decision string  `json:"decision"`
	Step     int     `json:"step"`
	Weight   float64 `json:"weight"`
	Reason   string  `json:"reason,omitempty"`
	// By names the operator; empty for the automatic analysis.
	By     string       `json:"by,omitempty"`
	Window CanaryWindow `json:"window"`
	// Text is the verdict as the audit log words it.
	Text string `json:"text"`
}

// CanaryResult answers the canary operations.
type CanaryResult struct {
	Outcome
	Module string `json:"module"`
	// Canary is the module's canary (running, or the last one); null if
	// there is none.
	Canary *CanaryStatus `json:"canary"`
	// Serving is the module's active version now; Previous the version kept
	// warm for rollback.
	Serving  *VersionStatus `json:"serving"`
	Previous *VersionStatus `json:"previous"`
	TookMS   int64          `json:"took_ms"`
}

func canaryWindow(w canary.Window) CanaryWindow {
	n := func(x canary.Numbers) CanaryNumbers {
		return CanaryNumbers{Calls: x.Calls, Failures: x.Failures, FailureRate: x.FailureRate(), Timed: x.Timed,
			P50NS: int64(x.P50), P99NS: int64(x.P99)}
	}
	return CanaryWindow{Start: w.Start, End: w.End, Stable: n(w.Stable), Canary: n(w.Canary),
		Evidence: CanaryEvidence{Failures: w.Evidence[0], P50: w.Evidence[1], P99: w.Evidence[2], Bound: w.Bound}}
}

func canaryVerdict(v canary.Verdict) *CanaryVerdict {
	return &CanaryVerdict{Seq: v.Seq, Time: v.Time, Decision: string(v.Decision), Step: v.Step, Weight: v.Weight,
		Reason: v.Reason, By: v.By, Window: canaryWindow(v.Window), Text: v.String()}
}

// canaryStatus converts st; live is the canary version while it serves.
func canaryStatus(st host.CanaryStatus, live *VersionStatus) *CanaryStatus {
	cs := &CanaryStatus{ID: st.ID, Version: live, Stable: st.Stable, StableDigest: st.StableDigest, Artifact: st.Artifact,
		State: string(st.State), Step: st.Step, Steps: slices.Clone(st.Steps), Weight: st.Weight,
		IntervalMS: st.Policy.Interval.Milliseconds(), MinCalls: st.Policy.MinCalls, StartedAt: st.StartedAt,
		StepStartedAt: st.StepStartedAt, EmptyWindows: st.EmptyWindows, CheckFailures: st.CheckFailures,
		Window: canaryWindow(st.Window)}
	if cs.Version == nil {
		cs.Version = &VersionStatus{Version: st.Version, Digest: st.Digest}
	}
	if cs.Steps == nil {
		cs.Steps = []float64{}
	}
	if !st.EndedAt.IsZero() {
		t := st.EndedAt
		cs.EndedAt = &t
	}
	if st.Last != nil {
		cs.LastVerdict = canaryVerdict(*st.Last)
	}
	return cs
}

// runningCanary returns the status of module name's running canary, nil if
// none runs.
func (s *Server) runningCanary(name string, live *VersionStatus) *CanaryStatus {
	st, ok := s.h.Canary(name)
	if !ok || live == nil || st.Version != live.Version {
		return nil
	}
	return canaryStatus(st, live)
}

// canaryResult answers for module name after an operation.
func (s *Server) canaryResult(name string, start time.Time, err error) *CanaryResult {
	res := &CanaryResult{Outcome: Outcome{OK: err == nil}, Module: name, TookMS: time.Since(start).Milliseconds()}
	if ms, ok := s.module(name); ok {
		res.Serving, res.Previous, res.Canary = ms.Active, ms.Previous, ms.Canary
	}
	if st, ok := s.h.Canary(name); ok && res.Canary == nil {
		res.Canary = canaryStatus(st, nil)
	}
	if err != nil {
		res.Error = classify(err)
		res.Error.Serving = serving(name, res.Serving)
	}
	return res
}

// startCanary uploads an artifact and starts it as a canary; with
// ?follow=1 the answer streams the canary's verdicts until it ends.
func (s *Server) startCanary(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("module")
	var wp CanaryPolicy
	if enc := r.Header.Get(PolicyHeader); enc != "" {
		if err := decodeStrict(enc, &wp); err != nil {
			s.badRequest(w, r, http.StatusBadRequest, &CanaryResult{Module: name}, fmt.Errorf("canary %s: %s header: %v", name, PolicyHeader, err))
			return
		}
	}
	up, ok := s.upload(w, r, "canary", &CanaryResult{Module: name})
	if !ok {
		return
	}
	ctx := host.WithProgress(r.Context(), up.st.progress)
	st, err := s.h.CanaryReader(ctx, name, up.label, up.manifest, up.body, wp.policy())
	if err == nil && r.URL.Query().Get("follow") != "" {
		up.st.release()
		err = s.follow(ctx, up.st, name, st.ID)
	}
	up.st.result(s.canaryResult(name, up.st.start, err))
}

// decodeStrict decodes a small JSON document, refusing unknown fields.
func decodeStrict(doc string, v any) error {
	if len(doc) > maxPolicy {
		return fmt.Errorf("longer than %d bytes", maxPolicy)
	}
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// follow streams the verdicts of module name's canary id as progress lines
// until it ends, and returns its outcome: nil if promoted.
func (s *Server) follow(ctx context.Context, st *stream, name, id string) error {
	seq := 0
	for {
		vs, cs, err := s.h.WatchCanary(ctx, name, id, seq)
		if err != nil {
			return err
		}
		for _, v := range vs {
			st.verdict(v)
			seq = v.Seq
		}
		if cs.State == canary.Promoted || cs.State == canary.Aborted {
			return host.CanaryResult(cs)
		}
	}
}

// verdict writes a verdict as a progress line of step "canary".
func (st *stream) verdict(v canary.Verdict) {
	st.write(Line{Progress: &Progress{Step: host.StepCanary, Detail: v.String(), ElapsedMS: time.Since(st.start).Milliseconds(),
		Verdict: canaryVerdict(v)}})
}

// canaryStatusOp answers GET …/canary: the module's canary, running or
// last; with ?follow=1, streamed until a running canary ends.
func (s *Server) canaryStatusOp(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("module")
	start := time.Now()
	cs, ok := s.h.Canary(name)
	if !ok {
		writeJSON(w, http.StatusNotFound, s.canaryResult(name, start, fmt.Errorf("canary %s: %w", name, host.ErrNoCanary)))
		return
	}
	if r.URL.Query().Get("follow") == "" {
		writeJSON(w, http.StatusOK, s.canaryResult(name, start, nil))
		return
	}
	st := newStream(w, start)
	err := s.follow(r.Context(), st, name, cs.ID)
	st.result(s.canaryResult(name, start, err))
}

// canaryCommand answers POST …/canary/{command}.
func (s *Server) canaryCommand(w http.ResponseWriter, r *http.Request) {
	name, cmd := r.PathValue("module"), r.PathValue("command")
	start := time.Now()
	d, ok := canaryCommands[cmd]
	if !ok {
		s.badRequest(w, r, http.StatusNotFound, &CanaryResult{Module: name}, fmt.Errorf("canary %s: no command %q (pause, resume, freeze, promote, abort)", name, cmd))
		return
	}
	_, err := s.h.CanaryCommand(r.Context(), name, d)
	code := http.StatusOK
	if err != nil {
		code = httpStatus(classify(err).Kind)
	}
	writeJSON(w, code, s.canaryResult(name, start, err))
}

func httpStatus(kind string) int {
	switch kind {
	case KindNoCanary, KindNotFound:
		return http.StatusNotFound
	case KindBusy:
		return http.StatusConflict
	case KindBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// CanaryFile streams the artifact at path (with its manifest at
// path+".manifest") to be verified, stored and started as a canary of
// module under policy. Without follow it returns once the canary serves
// its first weight; with follow, progress also gets every verdict, and it
// returns when the canary ended: an error matching ErrAborted if it was
// aborted. Cancelling ctx before the canary serves abandons it; after,
// only the following stops and the canary goes on.
func (c *Client) CanaryFile(ctx context.Context, module, path string, policy CanaryPolicy, follow bool, progress func(Progress)) (*CanaryResult, error) {
	a, err := openArtifact(path)
	if err != nil {
		return nil, fmt.Errorf("canary %s: %w", module, err)
	}
	defer a.f.Close()
	return c.canary(ctx, module, filepath.Base(path), a.manifest, a.f, a.size, policy, follow, progress)
}

// Canary is CanaryFile for an artifact already in memory: req's payload
// and manifest, verified by the service.
func (c *Client) Canary(ctx context.Context, module string, req LoadRequest, policy CanaryPolicy, follow bool, progress func(Progress)) (*CanaryResult, error) {
	return c.canary(ctx, module, req.Label, req.Manifest, bytes.NewReader(req.Payload), int64(len(req.Payload)), policy, follow, progress)
}

func (c *Client) canary(ctx context.Context, module, label string, manifest []byte, payload io.Reader, size int64, policy CanaryPolicy,
	follow bool, progress func(Progress)) (*CanaryResult, error) {
	pj, err := json.Marshal(policy)
	if err != nil {
		return nil, err
	}
	h := uploadHeader(label, manifest)
	h.Set(PolicyHeader, string(pj))
	p := modulePath(pathCanary, module)
	if follow {
		p += "?follow=1"
	}
	res := &CanaryResult{Module: module}
	return res, c.send(ctx, "canary "+module, http.MethodPost, p, h, payload, size, res, progress)
}

// CanaryStatus describes module's canary, running or last; with follow,
// it streams a running canary's verdicts to progress and returns when it
// ended. It fails with ErrNoCanary if the module never had one.
func (c *Client) CanaryStatus(ctx context.Context, module string, follow bool, progress func(Progress)) (*CanaryResult, error) {
	p := modulePath(pathCanary, module)
	if follow {
		p += "?" + url.Values{"follow": {"1"}}.Encode()
	}
	res := &CanaryResult{Module: module}
	return res, c.do(ctx, "canary status "+module, http.MethodGet, p, nil, res, progress)
}

// CanaryCommand sends an operator's command to module's running canary:
// "pause", "resume", "freeze", "promote" or "abort".
func (c *Client) CanaryCommand(ctx context.Context, module, command string) (*CanaryResult, error) {
	res := &CanaryResult{Module: module}
	p := modulePath(pathCanary, module) + "/" + url.PathEscape(command)
	return res, c.do(ctx, "canary "+command+" "+module, http.MethodPost, p, []byte("{}"), res, nil)
}
