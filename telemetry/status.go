package telemetry

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module"
)

// StatusAuditTail is how many audit events the status page shows.
const StatusAuditTail = 20

//go:embed status
var statusAssets embed.FS

// StatusHandler serves the live status page of h: the page and its assets
// (embedded, no external requests) at "/" and its JSON feed at
// "/status.json", which the page polls every second. Mount it where the
// service wants it, with http.StripPrefix for a path below the root.
func StatusHandler(h *host.Host) http.Handler {
	assets, err := fs.Sub(statusAssets, "status")
	if err != nil {
		panic(err) // the embedded directory is part of the build
	}
	files := http.FileServerFS(assets)
	tail := &auditTail{h: h}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(snapshot(ctx, h, tail.read))
	})
	mux.Handle("GET /", files)
	return mux
}

// StatusSnapshot is what the status page shows, as /status.json serves it.
type StatusSnapshot struct {
	Time      time.Time        `json:"time"`
	TrustMode string           `json:"trust_mode"`
	Process   ProcessSnapshot  `json:"process"`
	Modules   []ModuleSnapshot `json:"modules"`
	Audit     []audit.Event    `json:"audit"`
	AuditErr  string           `json:"audit_error,omitempty"`
}

// ProcessSnapshot describes the process and its upgrade state.
type ProcessSnapshot struct {
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	ParentPID  int       `json:"parent_pid"`
	Started    time.Time `json:"started"`
	Upgrades   bool      `json:"upgrades"`
	// Phase is where the process stands in binary upgrades, an
	// upgrade.Phase: "idle", "starting", "waiting for ready", "probation",
	// "parent probation" or "handed over".
	Phase string `json:"upgrade_phase"`
	// UpgradePID is the new process of the running upgrade, once started.
	UpgradePID int `json:"upgrade_pid,omitempty"`
	// LastUpgrade is the outcome of the last upgrade attempt.
	LastUpgrade string `json:"last_upgrade,omitempty"`
}

// ModuleSnapshot describes one module and its live versions.
type ModuleSnapshot struct {
	Name     string            `json:"name"`
	Versions []VersionSnapshot `json:"versions"`
	// CanaryWeight is the share of calls (0 to 1) the canary serves.
	CanaryWeight float64 `json:"canary_weight"`
	CanaryStep   int     `json:"canary_step,omitempty"`
	CanaryState  string  `json:"canary_state,omitempty"`
}

// VersionSnapshot describes one live version. The page derives calls/s and
// the error rate from the counters of successive snapshots.
type VersionSnapshot struct {
	Version  string `json:"version"`
	Digest   string `json:"digest"`
	Role     string `json:"role"`
	Calls    uint64 `json:"calls"`
	Failures uint64 `json:"failures"`
	InFlight int64  `json:"in_flight"`
	Memory   uint64 `json:"memory_bytes"`
}

// Snapshot reads what the status page shows from h.
func Snapshot(ctx context.Context, h *host.Host) StatusSnapshot {
	return snapshot(ctx, h, func(ctx context.Context) ([]audit.Event, error) {
		return h.History(ctx, audit.Filter{Limit: StatusAuditTail})
	})
}

// snapshot is Snapshot with the audit tail read by tail.
func snapshot(ctx context.Context, h *host.Host, tail func(context.Context) ([]audit.Event, error)) StatusSnapshot {
	s := StatusSnapshot{Time: time.Now(), TrustMode: h.TrustMode(), Modules: []ModuleSnapshot{}}
	p := h.Process()
	s.Process = ProcessSnapshot{PID: p.PID, Generation: p.Generation, ParentPID: p.ParentPID, Started: p.Started,
		Upgrades: p.Upgrades, Phase: p.UpgradePhase.String(), UpgradePID: p.UpgradePID}
	if p.LastUpgrade != nil {
		s.Process.LastUpgrade = p.LastUpgrade.Outcome.String()
	}
	for _, st := range h.Status() {
		ms := ModuleSnapshot{Name: st.Name, CanaryWeight: st.CanaryWeight}
		if cs, ok := h.Canary(st.Name); ok && canaryRunning(cs.State) {
			ms.CanaryStep, ms.CanaryState = cs.Step, string(cs.State)
		}
		live := make(map[string]module.VersionStatus)
		for _, v := range st.Versions() {
			live[v.Digest] = v
		}
		for _, smp := range h.Module(st.Name).Samples() {
			vs := VersionSnapshot{Version: smp.Version, Digest: smp.Digest, Role: smp.Role, Calls: smp.Calls,
				Failures: smp.Failed()}
			if v, ok := live[smp.Digest]; ok {
				vs.InFlight, vs.Memory = v.InFlight, v.MemoryBytes
			}
			ms.Versions = append(ms.Versions, vs)
		}
		s.Modules = append(s.Modules, ms)
	}
	evs, err := tail(ctx)
	if err != nil {
		s.AuditErr = err.Error()
	}
	s.Audit = evs
	if s.Audit == nil {
		s.Audit = []audit.Event{}
	}
	return s
}

// auditTail keeps the status page's audit tail between polls. It reads the
// log again only when the file changed (another file, size or
// modification time: the log is append-only and rotates by rename, and
// other processes, such as the next one after an upgrade, may write it),
// so a page left open costs a stat per poll rather than a read of the
// whole log. It holds StatusAuditTail events at most.
type auditTail struct {
	h *host.Host

	mu     sync.Mutex // protects stamp and events
	stamp  fileStamp  // of the log when events were read; zero: nothing kept
	events []audit.Event
}

// fileStamp tells whether a file changed.
type fileStamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

func stampOf(path string) (fileStamp, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStamp{}, false
	}
	return fileStamp{dev: uint64(st.Dev), ino: st.Ino, size: fi.Size(), mtime: fi.ModTime()}, true
}

// read returns the last StatusAuditTail events of the log, from the copy
// kept when the log has not changed since.
func (t *auditTail) read(ctx context.Context) ([]audit.Event, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	stamp, ok := stampOf(t.h.AuditPath()) // before the read: a write during it makes the next poll read again
	if ok && stamp == t.stamp {
		return t.events, nil
	}
	evs, err := t.h.History(ctx, audit.Filter{Limit: StatusAuditTail})
	if err != nil || !ok {
		t.stamp, t.events = fileStamp{}, nil // read again next time
		return evs, err
	}
	t.stamp, t.events = stamp, evs
	return evs, nil
}
