package telemetry_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/upgrade"
)

// gathered returns the value of every sample of the registry's metric
// name, keyed by its labels rendered as "k=v,k=v" in label-name order.
func (r *rig) gathered(t *testing.T, name string) map[string]float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatalf("Gather() = %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out[strings.Join(ls, ",")] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// TestCollectorCountsSwapsAndCalls loads v1, v2, a refused v3 and rolls
// back, calling in between, and reads each version's calls, the changes by
// outcome and the call latency histograms from the collector.
func TestCollectorCountsSwapsAndCalls(t *testing.T) {
	r := newRig(t, testhost.HostOptions{})
	r.load(t, r.v1)
	r.calls(t, 30)
	r.load(t, r.v2)
	r.calls(t, 20)
	if _, err := r.h.LoadFile(testhost.Context(t, timeout), "pricing", r.v3); err == nil {
		t.Fatalf("LoadFile(v3 trapping in init) = nil; want a refusal")
	}
	r.rollback(t)
	r.calls(t, 5)

	calls := r.gathered(t, "hotswap_module_calls_total")
	// v2 is draining or closed after the rollback; v1 is active again.
	if got := calls["module=pricing,version=v1"]; got != 35 {
		t.Errorf("calls of v1 = %v; want 35 (all metrics: %v)", got, calls)
	}
	if got, ok := calls["module=pricing,version=v2"]; ok && got != 20 {
		t.Errorf("calls of draining v2 = %v; want 20", got)
	}
	if got := r.gathered(t, "hotswap_swaps_total")["module=pricing"]; got != 3 {
		t.Errorf("swaps = %v; want 3 (two loads and a rollback)", got)
	}
	loads := r.gathered(t, "hotswap_loads_total")
	if got := loads["check=none,module=pricing,result=ok"]; got != 2 {
		t.Errorf("loads ok = %v; want 2 (all: %v)", got, loads)
	}
	var refused float64
	for k, v := range loads {
		if strings.Contains(k, "result=refused") && !strings.Contains(k, "check=none") {
			refused += v
		}
	}
	if refused != 1 {
		t.Errorf("refused loads with a check = %v; want 1 (all: %v)", refused, loads)
	}
	if got := r.gathered(t, "hotswap_rollbacks_total")["check=none,module=pricing,result=ok"]; got != 1 {
		t.Errorf("rollbacks ok = %v; want 1", got)
	}
	if got := r.gathered(t, "hotswap_module_call_duration_seconds")["module=pricing,version=v1"]; got != 35 {
		t.Errorf("timed calls of v1 = %v; want 35 (TimeCalls = 1)", got)
	}
	if got := r.gathered(t, "hotswap_load_to_serving_seconds")["module=pricing"]; got != 3 {
		t.Errorf("load-to-serving observations = %v; want 3", got)
	}
	info := r.gathered(t, "hotswap_module_version_info")
	var active int
	for k := range info {
		if strings.Contains(k, "role=active") {
			active++
			if !strings.Contains(k, "version=v1") {
				t.Errorf("active version info %q; want v1 after the rollback", k)
			}
		}
	}
	if active != 1 {
		t.Errorf("%d active versions in hotswap_module_version_info; want 1: %v", active, info)
	}
	if got := r.gathered(t, "hotswap_process_generation")[""]; got != 1 {
		t.Errorf("generation = %v; want 1", got)
	}
	phases := r.gathered(t, "hotswap_upgrade_phase")
	var sum float64
	for _, v := range phases {
		sum += v
	}
	if phases["phase=idle"] != 1 || sum != 1 || len(phases) != len(upgrade.Phases()) {
		t.Errorf("hotswap_upgrade_phase = %v; want idle 1 and every other phase 0", phases)
	}
}

// TestExpositionLint runs client_golang's linter and, when it is
// installed, promtool on the exposition of a host that served two
// versions.
func TestExpositionLint(t *testing.T) {
	r := newRig(t, testhost.HostOptions{})
	r.load(t, r.v1)
	r.calls(t, 3)
	r.load(t, r.v2)
	r.calls(t, 3)
	problems, err := testutil.GatherAndLint(r.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	promtool := lookPath(t, "promtool", "prometheus")
	cmd := exec.CommandContext(testhost.Context(t, timeout), promtool, "check", "metrics")
	cmd.Stdin = &text
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\nexposition:\n%s", err, out, text.String())
	}
}

// lookPath finds a program the test needs, which .ci/run installs from
// the Debian package pkg. Without it the test is skipped, or fails when
// HOTSWAP_REQUIRE_GUEST_TOOLCHAINS is set (as in CI), so that a missing
// install cannot pass for a green run.
func lookPath(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not installed (Debian package %s; .ci/run installs it)", name, pkg)
		if os.Getenv("HOTSWAP_REQUIRE_GUEST_TOOLCHAINS") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}
