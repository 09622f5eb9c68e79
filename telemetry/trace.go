package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
)

// DefaultServiceName is the service.name of the traces unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES says otherwise.
const DefaultServiceName = "hotswap"

// DefaultTraceCalls is a share of module calls for a host that wants call
// spans (host.Options.TraceCalls, off by default): one call in a thousand
// of those without a parent span, and every call under a sampled parent.
// An untraced call then pays an interface call, a context lookup and a
// random draw; a traced one its span, microseconds with the SDK.
const DefaultTraceCalls = 0.001

// ErrTracingConfig: the OTEL_* environment asks for something this
// package does not provide.
var ErrTracingConfig = errors.New("unsupported tracing configuration")

// NewTracerProvider returns a tracer provider that exports spans over OTLP
// as the standard OpenTelemetry environment variables say, or nil when
// they leave tracing off, which is the default. Tracing is on when
// OTEL_TRACES_EXPORTER is "otlp", or when it is unset and an OTLP endpoint
// is (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
// OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none turn it off. The
// protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf (the default) or grpc. The
// exporter reads its endpoint, headers, TLS and timeout variables, the SDK
// its sampler (OTEL_TRACES_SAMPLER) and batching (OTEL_BSP_*) ones, the
// resource OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
//
// Pass the provider to host.Options.TracerProvider, and call its Shutdown
// (bounded by a context) before the process exits so the last spans leave.
// ctx bounds the exporter's set-up only.
func NewTracerProvider(ctx context.Context) (*sdktrace.TracerProvider, error) {
	on, err := tracingOn()
	if err != nil || !on {
		return nil, err
	}
	var exp *otlptrace.Exporter
	switch proto := protocol(); proto {
	case "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("tracing: OTLP protocol %q: %w (http/protobuf or grpc)", proto, ErrTracingConfig)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: start the OTLP exporter: %w", err)
	}
	// Later detectors win: the environment overrides the default name.
	res, err := resource.New(ctx, resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(DefaultServiceName)), resource.WithFromEnv())
	if err != nil {
		exp.Shutdown(ctx)
		return nil, fmt.Errorf("tracing: resource from OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}

// tracingOn reads whether the environment turns tracing on.
func tracingOn() (bool, error) {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch exp := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
		return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	default:
		return false, fmt.Errorf("tracing: OTEL_TRACES_EXPORTER=%q: %w (otlp or none)", exp, ErrTracingConfig)
	}
}

func protocol() string {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			return v
		}
	}
	return "http/protobuf"
}
