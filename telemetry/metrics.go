package telemetry

import (
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/upgrade"
)

// metric describes one metric the collector exports. docs/metrics.md lists
// the same table; a test keeps the two equal.
type metric struct {
	name   string
	kind   prometheus.ValueType // for a counter or gauge
	hist   bool                 // a histogram
	help   string
	labels []string
}

func (m metric) typeName() string {
	switch {
	case m.hist:
		return "histogram"
	case m.kind == prometheus.CounterValue:
		return "counter"
	}
	return "gauge"
}

var (
	counter = prometheus.CounterValue
	gauge   = prometheus.GaugeValue
)

// The metrics, in the order of docs/metrics.md. Each index constant names
// its entry in metrics.
const (
	mVersionInfo = iota
	mCalls
	mFailures
	mCallDuration
	mInFlight
	mInstances
	mMemory
	mDiscarded
	mLoads
	mRollbacks
	mSwaps
	mSwapDuration
	mLoadToServing
	mCanaryWeight
	mCanaryStep
	mCanaryVerdicts
	mUpgrades
	mUpgradeReady
	mUpgradeProbation
	mUpgrading
	mUpgradePhase
	mGeneration
	mDevelopment
	numMetrics
)

var metrics = [numMetrics]metric{
	mVersionInfo: {name: "hotswap_module_version_info", kind: gauge, labels: []string{"module", "version", "digest", "role"},
		help: "1 for each live version of a module; role is active, canary, previous or draining."},
	mCalls: {name: "hotswap_module_calls_total", kind: counter, labels: []string{"module", "version"},
		help: "Calls a module version completed, successfully or not."},
	mFailures: {name: "hotswap_module_call_failures_total", kind: counter, labels: []string{"module", "version", "kind"},
		help: "Failed calls of a module version by kind: guest, trap, timeout, memory, drained (stopped by the drain deadline), canceled (by the caller), other."},
	mCallDuration: {name: "hotswap_module_call_duration_seconds", hist: true, labels: []string{"module", "version"},
		help: "Latency of the timed calls of a module version: the share Options.TimeCalls asks for, and during a canary the canary's cohorts."},
	mInFlight: {name: "hotswap_module_in_flight_calls", kind: gauge, labels: []string{"module", "version"},
		help: "Calls running in a module version now."},
	mInstances: {name: "hotswap_module_instances", kind: gauge, labels: []string{"module", "version"},
		help: "Instances a module version keeps (busy and idle)."},
	mMemory: {name: "hotswap_module_memory_bytes", kind: gauge, labels: []string{"module", "version"},
		help: "Guest linear memory over all instances of a module version."},
	mDiscarded: {name: "hotswap_module_discarded_instances_total", kind: counter, labels: []string{"module", "version"},
		help: "Instances of a module version thrown away after a trap, a timeout or memory growth."},
	mLoads: {name: "hotswap_loads_total", kind: counter, labels: []string{"module", "result", "check"},
		help: "Loads of a module (and canary starts) by result (ok, refused, failed, canceled) and the check that refused or failed them (none when ok)."},
	mRollbacks: {name: "hotswap_rollbacks_total", kind: counter, labels: []string{"module", "result", "check"},
		help: "Rollbacks of a module by result and failed check."},
	mSwaps: {name: "hotswap_swaps_total", kind: counter, labels: []string{"module"},
		help: "Times a version of a module became active: loads, rollbacks and promoted canaries."},
	mSwapDuration: {name: "hotswap_swap_duration_seconds", hist: true, labels: []string{"module"},
		help: "Time an activation took: the migrate hook and the switch."},
	mLoadToServing: {name: "hotswap_load_to_serving_seconds", hist: true, labels: []string{"module"},
		help: "Time from the request of a load or rollback until the version served: verify, store, prepare, audit, activate."},
	mCanaryWeight: {name: "hotswap_canary_weight_ratio", kind: gauge, labels: []string{"module"},
		help: "Share of calls (0 to 1) the running canary of a module serves; 0 when none runs."},
	mCanaryStep: {name: "hotswap_canary_step", kind: gauge, labels: []string{"module"},
		help: "Step (from 1) of the running canary of a module; 0 when none runs."},
	mCanaryVerdicts: {name: "hotswap_canary_verdicts_total", kind: counter, labels: []string{"module", "decision"},
		help: "Verdicts of the canaries of a module by decision: begin, pass, hold, pause, resume, freeze, promote, abort."},
	mUpgrades: {name: "hotswap_upgrades_total", kind: counter, labels: []string{"result"},
		help: "Binary upgrades started by this process, by result: ok (committed), refused, failed, rolled back."},
	mUpgradeReady: {name: "hotswap_upgrade_ready_seconds", hist: true,
		help: "Time new processes took from start to ready."},
	mUpgradeProbation: {name: "hotswap_upgrade_probation_seconds", hist: true,
		help: "Time new processes spent in probation until they passed it or died."},
	mUpgrading: {name: "hotswap_upgrade_in_progress", kind: gauge,
		help: "1 while a binary upgrade of this process is under way."},
	mUpgradePhase: {name: "hotswap_upgrade_phase", kind: gauge, labels: []string{"phase"},
		help: "1 for the phase this process is in, 0 for the others: idle, starting, waiting for ready, probation (of a new process this one started), parent probation (of this process, started by an upgrade), handed over."},
	mGeneration: {name: "hotswap_process_generation", kind: gauge,
		help: "Generation of this process: 1 when started fresh, one more than its parent's after an upgrade."},
	mDevelopment: {name: "hotswap_development_mode", kind: gauge,
		help: "1 when the host accepts unsigned artifacts (development trust mode)."},
}

// DefaultTimeCalls is the share of calls a host with metrics should time
// into the latency histogram (host.Options.TimeCalls): one call in a
// hundred gives a histogram of the same shape for a random draw per call
// (bench/modcall, telemetry_p50_ns). The call and failure counters are
// exact whatever the share.
const DefaultTimeCalls = 0.01

// Histogram buckets, in nanoseconds: every fourth doubling from 256 ns
// up to 2^38 ns (4.6 minutes). Each is a bound of the registry's fine
// buckets (module.BucketsPerDoubling per doubling), so the counts are exact.
const (
	firstBucketLog2 = 8
	lastBucketLog2  = 38
	bucketStepLog2  = 2
)

// Collector exports a host's counters as Prometheus metrics. It reads
// them at scrape time: the counters live in the registry as atomics, so
// calls never touch client_golang. Register it on the prometheus.Registerer
// the service passes around; see docs/metrics.md for every metric.
//
// A Collector is safe for concurrent use.
type Collector struct {
	h     *host.Host
	descs [numMetrics]*prometheus.Desc
}

// NewCollector returns a Collector of h's modules, changes and process.
func NewCollector(h *host.Host) *Collector {
	c := &Collector{h: h}
	for i, m := range metrics {
		c.descs[i] = prometheus.NewDesc(m.name, m.help, m.labels, nil)
	}
	return c
}

// Describe sends the descriptors of every metric.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect reads the host's counters and sends them.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.h.Status() {
		c.collectModule(ch, st)
	}
	changes := c.h.ChangeStats()
	for name, mc := range changes.Modules {
		for o, n := range mc.Loads {
			c.send(ch, mLoads, float64(n), name, o.Result, o.Check)
		}
		for o, n := range mc.Rollbacks {
			c.send(ch, mRollbacks, float64(n), name, o.Result, o.Check)
		}
		c.send(ch, mSwaps, float64(mc.Swaps), name)
		c.histogram(ch, mSwapDuration, &mc.SwapTime, name)
		c.histogram(ch, mLoadToServing, &mc.LoadToServing, name)
		for d, n := range mc.CanaryVerdicts {
			c.send(ch, mCanaryVerdicts, float64(n), name, d)
		}
	}
	for r, n := range changes.Upgrades {
		c.send(ch, mUpgrades, float64(n), r)
	}
	c.histogram(ch, mUpgradeReady, &changes.UpgradeReady)
	c.histogram(ch, mUpgradeProbation, &changes.UpgradeProbation)
	p := c.h.Process()
	c.send(ch, mUpgrading, boolFloat(p.Upgrading))
	for _, phase := range upgrade.Phases() {
		c.send(ch, mUpgradePhase, boolFloat(phase == p.UpgradePhase), phase.String())
	}
	c.send(ch, mGeneration, float64(p.Generation))
	c.send(ch, mDevelopment, boolFloat(c.h.TrustMode() == "development"))
}

// versionNumbers sums what the collector exports of the live versions of
// a module that share a name (a version loaded again while its earlier
// load drains), so no label set is sent twice.
type versionNumbers struct {
	calls, discarded                 uint64
	failures                         [module.NumFailureKinds]uint64
	latency                          module.Histogram
	inFlight, instances, memoryBytes float64
}

func (c *Collector) collectModule(ch chan<- prometheus.Metric, st module.Status) {
	byVersion := make(map[string]*versionNumbers)
	var order []string
	get := func(v string) *versionNumbers {
		n := byVersion[v]
		if n == nil {
			n = new(versionNumbers)
			byVersion[v] = n
			order = append(order, v)
		}
		return n
	}
	for _, vs := range st.Versions() {
		n := get(vs.Version)
		n.inFlight += float64(vs.InFlight)
		n.instances += float64(vs.Instances)
		n.memoryBytes += float64(vs.MemoryBytes)
		n.discarded += vs.Discarded
	}
	type info struct{ version, digest, role string }
	seen := make(map[info]bool)
	for _, s := range c.h.Module(st.Name).Samples() {
		n := get(s.Version)
		n.calls += s.Calls
		for k, f := range s.Failures {
			n.failures[k] += f
		}
		for i, b := range s.Latency.Counts {
			n.latency.Counts[i] += b
		}
		n.latency.Sum += s.Latency.Sum
		if i := (info{s.Version, s.Digest, s.Role}); !seen[i] {
			seen[i] = true
			c.send(ch, mVersionInfo, 1, st.Name, s.Version, s.Digest, s.Role)
		}
	}
	for _, v := range order {
		n := byVersion[v]
		c.send(ch, mCalls, float64(n.calls), st.Name, v)
		for k, f := range n.failures {
			c.send(ch, mFailures, float64(f), st.Name, v, module.FailureKind(k).String())
		}
		c.histogram(ch, mCallDuration, &n.latency, st.Name, v)
		c.send(ch, mInFlight, n.inFlight, st.Name, v)
		c.send(ch, mInstances, n.instances, st.Name, v)
		c.send(ch, mMemory, n.memoryBytes, st.Name, v)
		c.send(ch, mDiscarded, float64(n.discarded), st.Name, v)
	}
	var weight, step float64
	if cs, ok := c.h.Canary(st.Name); ok && canaryRunning(cs.State) {
		weight, step = cs.Weight/100, float64(cs.Step)
	}
	c.send(ch, mCanaryWeight, weight, st.Name)
	c.send(ch, mCanaryStep, step, st.Name)
}

func canaryRunning(s canary.State) bool {
	return s != "" && s != canary.Promoted && s != canary.Aborted
}

func (c *Collector) send(ch chan<- prometheus.Metric, i int, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(c.descs[i], metrics[i].kind, v, labels...)
}

// histogram sends h with the collector's bucket layout.
func (c *Collector) histogram(ch chan<- prometheus.Metric, i int, h *module.Histogram, labels ...string) {
	buckets := make(map[float64]uint64, (lastBucketLog2-firstBucketLog2)/bucketStepLog2+1)
	var cum uint64
	next := 0
	for e := firstBucketLog2; e <= lastBucketLog2; e += bucketStepLog2 {
		// Fine bucket i holds [2^(i/16), 2^((i+1)/16)) ns: those below
		// e·16 hold durations under 2^e ns.
		for ; next < e*module.BucketsPerDoubling && next < module.HistogramBuckets; next++ {
			cum += h.Counts[next]
		}
		buckets[math.Exp2(float64(e))/float64(time.Second)] = cum
	}
	ch <- prometheus.MustNewConstHistogram(c.descs[i], h.Count(), h.Sum.Seconds(), buckets, labels...)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
