package host

import (
	"context"
	"math/rand/v2"
	"os"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/internal/logkey"
	"github.com/hotswapgo/hotswap/module"
)

// tracerName is the instrumentation scope of the host's spans.
const tracerName = "github.com/hotswapgo/hotswap/host"

// Span names. A change is one span named for its audit action, with one
// child span per step (the Step constants); a canary has one child span
// per step of its rollout; a process started by an upgrade records
// SpanUpgradeChild in the trace of its parent's SpanUpgrade.
const (
	SpanLoad         = "hotswap.load"     // a module load: verify, prepare, store, activate
	SpanRollback     = "hotswap.rollback" // a rollback: activate, or verify, prepare, activate from the store
	SpanCanary       = "hotswap.canary"   // a canary, from its start to its promotion or abort
	SpanCanaryStep   = "canary step"      // one step of a canary's rollout
	SpanUpgrade      = "hotswap.upgrade"  // a binary upgrade: verify, hand over
	SpanUpgradeChild = "hotswap.upgrade.child"
	SpanCall         = "hotswap.call" // one module call (Options.TraceCalls)
)

// Span attributes, named like the log keys (see docs/observability.md).
const (
	attrModule     = attribute.Key("hotswap." + logkey.Module)
	attrVersion    = attribute.Key("hotswap." + logkey.Version)
	attrDigest     = attribute.Key("hotswap." + logkey.Digest)
	attrArtifact   = attribute.Key("hotswap.artifact")
	attrCheck      = attribute.Key("hotswap." + logkey.Check)
	attrResult     = attribute.Key("hotswap.result")
	attrPID        = attribute.Key("hotswap." + logkey.PID)
	attrGeneration = attribute.Key("hotswap." + logkey.Generation)
	attrStep       = attribute.Key("hotswap.canary.step")
	attrWeight     = attribute.Key("hotswap.canary.weight")
	attrDetail     = attribute.Key("hotswap.detail")
	attrHandler    = attribute.Key("hotswap." + logkey.Handler)
	attrFailure    = attribute.Key("hotswap.failure") // a failed call's module.FailureKind
)

func tracerOf(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer(tracerName)
}

// startSpan starts the span of a change; ctx then carries it, so the
// change's records, steps and (for an upgrade) the new process nest under
// it.
func (c *change) startSpan(ctx context.Context, tracer trace.Tracer) context.Context {
	target := attrModule.String(c.ev.Target)
	if c.ev.Action == audit.ActionUpgrade {
		target = attribute.String("hotswap.target", c.ev.Target)
	}
	name := "hotswap." + string(c.ev.Action)
	if c.ev.Action == audit.ActionSwap {
		name = SpanLoad
	}
	ctx, c.span = tracer.Start(ctx, name, trace.WithAttributes(target, attrArtifact.String(c.ev.Artifact)))
	c.tracer = tracer
	return ctx
}

// step reports a step of the change to its progress function and ends the
// span of the step before it, then starts the step's span.
func (c *change) step(ctx context.Context, step, detail string, attrs ...attribute.KeyValue) {
	progress(ctx, step, detail)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stepSpan != nil {
		c.stepSpan.End()
	}
	if detail != "" {
		attrs = append(attrs, attrDetail.String(detail))
	}
	_, c.stepSpan = c.tracer.Start(c.ctx, step, trace.WithAttributes(attrs...))
}

// endSpan ends the change's span (and its last step's) with result, and
// err as the span's error.
func (c *change) endSpan(result string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stepSpan != nil {
		if err != nil {
			c.stepSpan.SetStatus(codes.Error, err.Error())
		}
		c.stepSpan.End()
		c.stepSpan = nil
	}
	if c.span == nil {
		return
	}
	c.span.SetAttributes(attrResult.String(result))
	if to := c.ev.To; to != "" {
		c.span.SetAttributes(attribute.String("hotswap.to", to))
	}
	if err != nil {
		c.span.SetAttributes(attrCheck.String(checkOf(err)))
		c.span.SetStatus(codes.Error, err.Error())
	}
	c.span.End()
	c.span = nil
}

// traceCarrier returns the trace context of the pending upgrade, to hand
// to the new process with the state blob; nil when none is traced.
func (h *Host) traceCarrier() map[string]string {
	h.proc.mu.Lock()
	p := h.proc.pending
	h.proc.mu.Unlock()
	if p == nil {
		return nil
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(p.change.ctx, carrier)
	if len(carrier) == 0 {
		return nil
	}
	return carrier
}

// startChildSpan records this process's start in the trace of the upgrade
// that started it, handed over as carrier; the span ends when New returns.
func (h *Host) startChildSpan(carrier map[string]string, generation int) trace.Span {
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(carrier))
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	_, span := h.tracer.Start(ctx, SpanUpgradeChild, trace.WithAttributes(
		attrPID.Int(os.Getpid()), attrGeneration.Int(generation)))
	return span
}

// upgradeSpanResult ends the span of a binary upgrade with its outcome.
func upgradeSpanResult(c *change, pidOf int, outcome string, err error) {
	c.mu.Lock()
	if c.span != nil && pidOf != 0 {
		c.span.SetAttributes(attrPID.Int(pidOf))
	}
	c.mu.Unlock()
	c.endSpan(outcome, err)
}

// traceVerdict records a canary's verdict: a Begin or Pass starts the span
// of the step it opens (ending the one before), any other decision is an
// event on the running step's span.
func (hc *hostCanary) traceVerdict(v canary.Verdict) {
	c := hc.change
	attrs := []attribute.KeyValue{attrStep.Int(v.Step), attrWeight.Float64(v.Weight)}
	if v.Decision == canary.Begin || v.Decision == canary.Pass {
		c.step(context.Background(), SpanCanaryStep, "", attrs...)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stepSpan != nil {
		c.stepSpan.AddEvent(string(v.Decision), trace.WithAttributes(append(attrs, attrDetail.String(v.Reason))...))
	}
}

// callTracer gives module calls their spans (Options.TraceCalls): every
// call whose context carries a sampled span, none whose span is not
// sampled, and a share of the calls without a parent.
type callTracer struct {
	tracer trace.Tracer
	share  float64 // of the calls without a parent, 0 < share ≤ 1
}

// newCallTracer returns the registry's call tracer: nil (no call spans)
// unless tp is set and share is above 0.
func newCallTracer(tp trace.TracerProvider, share float64) module.CallTracer {
	if tp == nil || share <= 0 {
		return nil
	}
	return &callTracer{tracer: tp.Tracer(tracerName), share: share}
}

func (t *callTracer) StartCall(ctx context.Context, mod, version, handler string) (context.Context, bool) {
	if parent := trace.SpanContextFromContext(ctx); parent.IsValid() {
		if !parent.IsSampled() {
			return ctx, false
		}
	} else if t.share < 1 && rand.Float64() >= t.share {
		return ctx, false
	}
	ctx, _ = t.tracer.Start(ctx, SpanCall, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(
		attrModule.String(mod), attrVersion.String(version), attrHandler.String(handler)))
	return ctx, true
}

func (t *callTracer) EndCall(ctx context.Context, err error, kind module.FailureKind) {
	span := trace.SpanFromContext(ctx)
	if err != nil {
		span.SetAttributes(attrFailure.String(kind.String()))
		span.RecordError(err)
		span.SetStatus(codes.Error, kind.String())
	}
	span.End()
}
