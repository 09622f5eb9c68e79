package telemetry_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/telemetry"
)

// clearOTelEnv empties every variable NewTracerProvider reads, for the
// test's duration.
func clearOTelEnv(t *testing.T) {
	for _, k := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
		"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} {
		t.Setenv(k, "")
	}
}

func TestNewTracerProviderFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		on      bool
		wantErr error
	}{
		{name: "off by default"},
		{name: "none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}},
		{name: "disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, on: true},
		{name: "otlp grpc", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, on: true},
		{name: "unknown exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: telemetry.ErrTracingConfig},
		{name: "unknown protocol", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantErr: telemetry.ErrTracingConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTelEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			ctx := testhost.Context(t, 10*time.Second)
			tp, err := telemetry.NewTracerProvider(ctx)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("NewTracerProvider() error = %v; want %v", err, tt.wantErr)
			}
			if (tp != nil) != tt.on {
				t.Fatalf("NewTracerProvider() = %v; want on = %v", tp, tt.on)
			}
			if tp != nil {
				tp.Shutdown(ctx)
			}
		})
	}
}

// TestTracesReachOTLPEndpoint sends a load's spans to an OTLP/HTTP
// receiver named by OTEL_EXPORTER_OTLP_ENDPOINT.
func TestTracesReachOTLPEndpoint(t *testing.T) {
	var mu sync.Mutex
	var got []string // span names received
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var req coltrace.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					got = append(got, s.Name)
				}
			}
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(nil)
	}))
	defer srv.Close()
	clearOTelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	ctx := testhost.Context(t, timeout)
	tp, err := telemetry.NewTracerProvider(ctx)
	if err != nil || tp == nil {
		t.Fatalf("NewTracerProvider() = %v, %v; want a provider", tp, err)
	}
	defer tp.Shutdown(ctx)
	r := newRig(t, testhost.HostOptions{Options: func(o *host.Options) { o.TracerProvider = tp }})
	r.load(t, r.v1)
	if err := tp.ForceFlush(ctx); err != nil {
		t.Fatalf("ForceFlush() = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]bool{"hotswap.load": false, "verify": false, "activate": false}
	for _, n := range got {
		if _, ok := want[n]; ok {
			want[n] = true
		}
	}
	for n, seen := range want {
		if !seen {
			t.Errorf("the OTLP receiver got spans %v; want %s among them", got, n)
		}
	}
}
