// Command callspans measures what per-call spans (host.Options.TraceCalls)
// cost a module call, against the same call with them off, in one run.
//
//	go run ./bench/callspans
//
// A call echoes 1 KiB in and 1 KiB out through a host's registry, as in
// bench/modcall. Every variant is a host in development mode with the same
// OpenTelemetry SDK tracer provider, batching spans to an exporter that
// drops them (the cost of the export is the collector's, not the call's):
//
//   - "off": TraceCalls = 0, the default; the call path has no route.
//   - "traced": TraceCalls = telemetry.DefaultTraceCalls, calls without a
//     parent span: each pays the sampling decision, one in a thousand its
//     span.
//   - "parented": the same host, every call under a sampled parent span,
//     so every call gets a span: the cost of one call span.
//
// Latencies are medians of the mean per-call time of batches of 100 calls,
// the variants' batches interleaved so machine noise hits them alike.
// traced_extra_ns and span_extra_ns are traced_p50_ns and parented_p50_ns
// minus off_p50_ns of the same run. This is a program of its own rather
// than a field of bench/modcall, which links only what the call path links
// (the OpenTelemetry SDK moved its everything-off ratio by code layout
// alone).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/telemetry"
)

const batch = 100

func main() {
	rounds := flag.Int("rounds", 2000, "batches of 100 calls per variant")
	flag.Parse()
	if err := run(*rounds); err != nil {
		log.Fatal(err)
	}
}

// dropExporter drops every span it is given.
type dropExporter struct{}

func (dropExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropExporter) Shutdown(context.Context) error                             { return nil }

func run(rounds int) error {
	ctx := context.Background()
	code, err := benchutil.Guest("./internal/testguests/echo", "")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "hotswap-bench-callspans-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(dropExporter{}))
	defer tp.Shutdown(ctx)
	var closers []*host.Host

	newModule := func(name string, share float64) (*module.Module, error) {
		b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(tmp, "cache"), Default: wasm.ModuleConfig{Grants: []wasm.Capability{wasm.CapKV}}})
		if err != nil {
			return nil, err
		}
		h, err := host.New(host.Options{Backend: b, StateDir: filepath.Join(tmp, name), Development: true,
			TracerProvider: tp, TraceCalls: share})
		if err != nil {
			return nil, err
		}
		if _, err := h.LoadArtifact(ctx, "echo", "v1", code, nil); err != nil {
			h.Close(ctx)
			return nil, fmt.Errorf("%s: load echo: %w", name, err)
		}
		closers = append(closers, h)
		return h.Module("echo"), nil
	}
	defer func() {
		for _, h := range closers {
			h.Close(ctx)
		}
	}()
	off, err := newModule("off", 0)
	if err != nil {
		return err
	}
	traced, err := newModule("traced", telemetry.DefaultTraceCalls)
	if err != nil {
		return err
	}
	parentCtx, parent := tp.Tracer("bench").Start(ctx, "request")
	defer parent.End()

	in := make([]byte, 1024)
	for i := range in {
		in[i] = byte(i)
	}
	dst := make([]byte, 0, 2048)
	echo := func(ctx context.Context, m *module.Module) func() error {
		return func() error {
			out, err := m.AppendCall(ctx, dst[:0], "echo", in)
			if err == nil && len(out) != len(in) {
				err = fmt.Errorf("echo returned %d bytes", len(out))
			}
			return err
		}
	}
	variants := []struct {
		name string
		call func() error
		ns   []float64
	}{
		{name: "off", call: echo(ctx, off)},
		{name: "traced", call: echo(ctx, traced)},
		{name: "parented", call: echo(parentCtx, traced)},
	}
	for i := range variants { // warm up
		for range 20 * batch {
			if err := variants[i].call(); err != nil {
				return fmt.Errorf("%s: %w", variants[i].name, err)
			}
		}
	}
	for range rounds {
		for i := range variants {
			v := &variants[i]
			start := time.Now()
			for range batch {
				if err := v.call(); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
			}
			v.ns = append(v.ns, float64(time.Since(start).Nanoseconds())/batch)
		}
	}
	offP50 := benchutil.Percentile(variants[0].ns, 50)
	tracedP50 := benchutil.Percentile(variants[1].ns, 50)
	parentedP50 := benchutil.Percentile(variants[2].ns, 50)
	fmt.Printf("off p50 %.1f ns, traced (share %v) p50 %.1f ns (%+.1f ns), every call a span p50 %.1f ns (%+.1f ns)\n",
		offP50, telemetry.DefaultTraceCalls, tracedP50, tracedP50-offP50, parentedP50, parentedP50-offP50)
	benchutil.Result(map[string]any{
		"off_p50_ns":      round1(offP50),
		"traced_p50_ns":   round1(tracedP50),
		"traced_extra_ns": round1(tracedP50 - offP50),
		"parented_p50_ns": round1(parentedP50),
		"span_extra_ns":   round1(parentedP50 - offP50),
		"trace_share":     telemetry.DefaultTraceCalls,
		"rounds":          rounds,
	})
	return nil
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
