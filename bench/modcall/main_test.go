package main

import (
	"testing"

	"github.com/hotswapgo/hotswap/telemetry"
)

// TestMetricsShare keeps the share the program times with metrics on equal
// to the one a host with metrics uses.
func TestMetricsShare(t *testing.T) {
	if metricsTimeCalls != telemetry.DefaultTimeCalls {
		t.Errorf("metricsTimeCalls = %v; want telemetry.DefaultTimeCalls = %v", metricsTimeCalls, telemetry.DefaultTimeCalls)
	}
}
