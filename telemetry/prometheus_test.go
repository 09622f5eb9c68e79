package telemetry_test

import (
	"fmt"
	"testing"

	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/telemetry"
)

// TestPrometheusScrapesSwapAndRollback starts a real Prometheus server
// scraping the admin handler every 200ms while calls run without pause
// through a load of v1, a swap to v2 and a rollback, then asks its HTTP
// API for each version's call counter and the swap counter.
func TestPrometheusScrapesSwapAndRollback(t *testing.T) {
	r := newRig(t, testhost.HostOptions{})
	r.load(t, r.v1)
	target := serve(t, telemetry.AdminHandler(r.h, r.reg))
	prom := testhost.StartPrometheus(t, target)

	// Calls run without pause until the test ends; none may fail.
	testhost.KeyedCalls(t, r.h.Module("pricing"), 1)
	defer func() {
		for labels, n := range r.gathered(t, "hotswap_module_call_failures_total") {
			if n != 0 {
				t.Errorf("hotswap_module_call_failures_total{%s} = %v; want 0", labels, n)
			}
		}
	}()

	calls := func(version string) float64 {
		return prom.Query(t, fmt.Sprintf(`max_over_time(hotswap_module_calls_total{module="pricing",version=%q}[5m])`, version))
	}
	waitFor(t, timeout, "Prometheus to see calls of v1", func() bool { return calls("v1") > 0 })
	r.load(t, r.v2)
	waitFor(t, timeout, "Prometheus to see calls of v2", func() bool { return calls("v2") > 0 })
	r.rollback(t)
	waitFor(t, timeout, "Prometheus to see three swaps", func() bool {
		return prom.Query(t, `hotswap_swaps_total{module="pricing"}`) >= 3
	})

	if got := prom.Query(t, `hotswap_swaps_total{module="pricing"}`); got != 3 {
		t.Errorf("hotswap_swaps_total = %v; want 3 (load v1, swap to v2, rollback)", got)
	}
	if got := prom.Query(t, `hotswap_rollbacks_total{module="pricing",result="ok"}`); got != 1 {
		t.Errorf("hotswap_rollbacks_total{result=ok} = %v; want 1", got)
	}
	// The active version after the rollback is v1, and its calls went on.
	before := calls("v1")
	waitFor(t, timeout, "v1's calls to grow after the rollback", func() bool { return calls("v1") > before })
	if got := prom.Query(t, `hotswap_module_version_info{module="pricing",role="active",version="v1"}`); got != 1 {
		t.Errorf("v1 active after the rollback: version_info = %v; want 1", got)
	}
}
