// Package telemetry lets an operator see what a host runs and how each
// version behaves: Prometheus metrics read from the registry's counters at
// scrape time (Collector), OpenTelemetry tracing configured from the
// standard OTEL_* environment variables (NewTracerProvider), and a live
// status page with its JSON feed (StatusHandler). docs/metrics.md lists
// every metric; docs/observability.md shows how the pieces fit.
//
// Nothing here is global: the service passes in its prometheus.Registerer
// and its TracerProvider, and mounts the handlers where it wants them.
package telemetry
