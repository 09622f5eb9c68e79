package host_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// tracing returns a tracer provider whose spans the returned exporter
// keeps in memory.
func tracing(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	return tp, exp
}

// spanTree returns the names of the children of the span named root in
// the order they started, and the root; it fails the test unless exactly
// one span has that name and all of its children share its trace.
func spanTree(t *testing.T, spans tracetest.SpanStubs, root string) (tracetest.SpanStub, []string) {
	t.Helper()
	var roots []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == root {
			roots = append(roots, s)
		}
	}
	if len(roots) != 1 {
		t.Fatalf("%d spans named %s; want 1 (all: %v)", len(roots), root, names(spans))
	}
	r := roots[0]
	var children []tracetest.SpanStub
	for _, s := range spans {
		if s.Parent.SpanID() == r.SpanContext.SpanID() {
			if s.SpanContext.TraceID() != r.SpanContext.TraceID() {
				t.Errorf("child %s of %s is in trace %s; want %s", s.Name, root, s.SpanContext.TraceID(), r.SpanContext.TraceID())
			}
			children = append(children, s)
		}
	}
	slices.SortFunc(children, func(a, b tracetest.SpanStub) int { return a.StartTime.Compare(b.StartTime) })
	var out []string
	for _, c := range children {
		out = append(out, c.Name)
	}
	return r, out
}

func names(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// TestLoadSpans checks the span tree of a load, of a refused load and of
// a rollback.
func TestLoadSpans(t *testing.T) {
	tp, exp := tracing(t)
	f := newFixture(t)
	h := f.open(t, hostOptions{tracer: tp})
	mustLoad(t, h, "alice", f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "v1"}))

	root, steps := spanTree(t, exp.GetSpans(), host.SpanLoad)
	if want := []string{host.StepVerify, host.StepPrepare, host.StepStore, host.StepActivate}; !slices.Equal(steps, want) {
		t.Errorf("steps of the load span = %v; want %v", steps, want)
	}
	if got := attr(root, "hotswap.module"); got != "pricing" {
		t.Errorf("load span module = %q; want pricing", got)
	}
	if got := attr(root, "hotswap.result"); got != "ok" {
		t.Errorf("load span result = %q; want ok", got)
	}
	if root.Status.Code == codes.Error {
		t.Errorf("load span status = %v; want not an error", root.Status)
	}

	// A refused load: its span ends at the failed step, as an error
	// naming the check.
	exp.Reset()
	bad := f.signed(t, f.trusted, "pricing-v2.wasm", guest(t, "v2"), artifact.Manifest{Version: "v2"})
	flipByte(t, bad)
	if _, err := h.LoadFile(ctxFor(t, "alice"), "pricing", bad); err == nil {
		t.Fatal("LoadFile(tampered) = nil; want a refusal")
	}
	root, steps = spanTree(t, exp.GetSpans(), host.SpanLoad)
	if !slices.Equal(steps, []string{host.StepVerify}) {
		t.Errorf("steps of the refused load = %v; want [verify]", steps)
	}
	if root.Status.Code != codes.Error || attr(root, "hotswap.check") != string(artifact.CheckDigest) || attr(root, "hotswap.result") != "refused" {
		t.Errorf("refused load span: status %v, check %q, result %q; want an error, check digest, refused",
			root.Status, attr(root, "hotswap.check"), attr(root, "hotswap.result"))
	}

	mustLoad(t, h, "alice", f.signed(t, f.trusted, "pricing-v2b.wasm", guest(t, "v2"), artifact.Manifest{Version: "v2"}))
	exp.Reset()
	if _, err := h.Rollback(ctxFor(t, "alice"), "pricing"); err != nil {
		t.Fatal(err)
	}
	if _, steps = spanTree(t, exp.GetSpans(), host.SpanRollback); !slices.Equal(steps, []string{host.StepActivate}) {
		t.Errorf("steps of the rollback span = %v; want [activate]", steps)
	}
}

// TestUpgradeSpanSharesTraceWithChild runs a binary upgrade and checks
// that the new process recorded its start in the trace of the parent's
// upgrade span, as a child of it.
func TestUpgradeSpanSharesTraceWithChild(t *testing.T) {
	tp, exp := tracing(t)
	f := newFixture(t)
	binPath := signedTestBinary(t, f, "2")
	out := filepath.Join(f.dir, "child.json")
	h := f.open(t, hostOptions{tracer: tp, upgrade: &upgrade.Options{
		NoSignals: true,
		Probation: 100 * time.Millisecond,
		Env:       []string{envHelper + "=child", envOut + "=" + out, envState + "=" + f.state},
	}})
	res, err := h.Upgrade(ctxFor(t, "carol"), binPath)
	if res.PID != 0 {
		t.Cleanup(func() { stopProcess(t, res.PID) })
	}
	if err != nil || res.Outcome != upgrade.Committed {
		t.Fatalf("Upgrade() = %+v, %v; want Committed", res, err)
	}
	root, steps := spanTree(t, exp.GetSpans(), host.SpanUpgrade)
	if want := []string{host.StepVerify, host.StepHandOver}; !slices.Equal(steps, want) {
		t.Errorf("steps of the upgrade span = %v; want %v", steps, want)
	}
	if got := attr(root, "hotswap.result"); got != "committed" {
		t.Errorf("upgrade span result = %q; want committed", got)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the new process wrote no report: %v", err)
	}
	var rep childReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, s := range rep.Spans {
		if s.Name != host.SpanUpgradeChild {
			continue
		}
		found = true
		if s.TraceID != root.SpanContext.TraceID().String() || s.Parent != root.SpanContext.SpanID().String() {
			t.Errorf("child span in trace %s under %s; want trace %s under the upgrade span %s",
				s.TraceID, s.Parent, root.SpanContext.TraceID(), root.SpanContext.SpanID())
		}
	}
	if !found {
		t.Errorf("the new process recorded spans %+v; want one named %s", rep.Spans, host.SpanUpgradeChild)
	}
}

// TestCallSpans checks the spans of module calls: which calls get one
// (the share of calls without a parent; always under a sampled parent,
// never under an unsampled one; none while TraceCalls is 0), what they
// carry, and how a failed call ends its span.
func TestCallSpans(t *testing.T) {
	tp, exp := tracing(t)
	f := newFixture(t)
	v1 := f.signed(t, f.trusted, "pricing-v1.wasm", guest(t, "v1"), artifact.Manifest{Version: "v1"})
	unsampled := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}})) // valid, not sampled
	const calls = 20
	tests := []struct {
		name      string
		share     float64
		parent    bool            // call under a sampled span of the test's
		ctx       context.Context // else call with this (nil: Background)
		wantSpans int
	}{
		{name: "all", share: 1, wantSpans: calls},
		{name: "all under a sampled parent", share: 1, parent: true, wantSpans: calls},
		{name: "all under an unsampled parent", share: 1, ctx: unsampled},
		{name: "tiny share", share: 1e-12},
		{name: "tiny share under a sampled parent", share: 1e-12, parent: true, wantSpans: calls},
		{name: "off under a sampled parent", share: 0, parent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := f.open(t, hostOptions{tracer: tp, traceCalls: tt.share})
			mustLoad(t, h, "alice", v1)
			ctx := cmp.Or(tt.ctx, context.Background())
			var parent trace.Span
			if tt.parent {
				ctx, parent = tp.Tracer("test").Start(ctx, "request")
			}
			exp.Reset()
			for range calls {
				if _, err := quote(ctx, h.Module("pricing")); err != nil {
					t.Fatalf("quote: %v", err)
				}
			}
			var got tracetest.SpanStubs
			for _, s := range exp.GetSpans() {
				if s.Name == host.SpanCall {
					got = append(got, s)
				}
			}
			if len(got) != tt.wantSpans {
				t.Fatalf("%d call spans of %d calls; want %d", len(got), calls, tt.wantSpans)
			}
			for _, s := range got {
				if m, v, hd := attr(s, "hotswap.module"), attr(s, "hotswap.version"), attr(s, "hotswap.handler"); m != "pricing" || v != "v1" || hd != "quote" {
					t.Errorf("call span module %q, version %q, handler %q; want pricing, v1, quote", m, v, hd)
				}
				if s.Status.Code == codes.Error {
					t.Errorf("call span status = %v; want not an error", s.Status)
				}
				switch {
				case parent != nil && s.Parent.SpanID() != parent.SpanContext().SpanID():
					t.Errorf("call span's parent = %v; want the request span %v", s.Parent.SpanID(), parent.SpanContext().SpanID())
				case parent != nil && s.SpanContext.TraceID() != parent.SpanContext().TraceID():
					t.Errorf("call span in trace %v; want the request's %v", s.SpanContext.TraceID(), parent.SpanContext().TraceID())
				case parent == nil && s.Parent.IsValid():
					t.Errorf("call span has parent %v; want a root span", s.Parent.SpanID())
				}
			}
		})
	}

	t.Run("failed call", func(t *testing.T) {
		h := f.open(t, hostOptions{tracer: tp, traceCalls: 1})
		mustLoad(t, h, "alice", v1)
		exp.Reset()
		_, err := h.Module("pricing").Call(context.Background(), "quote", []byte(`{"item":"","qty":1}`))
		if !errors.Is(err, module.ErrGuest) {
			t.Fatalf("Call(no item) = %v; want %v", err, module.ErrGuest)
		}
		spans := exp.GetSpans()
		if len(spans) != 1 || spans[0].Name != host.SpanCall {
			t.Fatalf("spans = %v; want one %s", names(spans), host.SpanCall)
		}
		s := spans[0]
		if s.Status.Code != codes.Error || s.Status.Description != "guest" || attr(s, "hotswap.failure") != "guest" {
			t.Errorf("failed call span: status %v, failure %q; want an error of kind guest", s.Status, attr(s, "hotswap.failure"))
		}
		if len(s.Events) != 1 || s.Events[0].Name != "exception" || !strings.Contains(fmt.Sprint(s.Events[0].Attributes), "item is required") {
			t.Errorf("failed call span events = %+v; want the error recorded", s.Events)
		}
	})
}

func TestTraceCallsValidated(t *testing.T) {
	f := newFixture(t)
	b, err := wasm.New(wasm.Options{CacheDir: cacheDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	for _, share := range []float64{-0.1, 1.5, math.NaN()} {
		if h, err := host.New(host.Options{Backend: b, StateDir: f.state, TraceCalls: share}); err == nil {
			closeHost(t, h)
			t.Errorf("New(TraceCalls: %v) = nil error; want a refusal", share)
		}
	}
}
