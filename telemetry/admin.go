package telemetry

import (
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hotswapgo/hotswap/host"
)

// AdminHandler returns the handler of an admin listener: the status page
// at /, its JSON feed at /status.json, the metrics g gathers at /metrics
// and the runtime profiles at /debug/pprof/. It exposes what the host runs
// and lets whoever reaches it take profiles: serve it on a loopback or
// otherwise private address only.
func AdminHandler(h *host.Host, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", StatusHandler(h))
	return mux
}
