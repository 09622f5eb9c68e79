package module

import "time"

// Status describes one module.
type Status struct {
	Name string `json:"name"`
	// Active serves new calls; nil before the first successful load.
	Active *VersionStatus `json:"active"`
	// Previous is kept warm for an instant rollback.
	Previous *VersionStatus `json:"previous"`
	// Draining lists retired versions still finishing calls.
	Draining []VersionStatus `json:"draining"`
	// StateKeys is the number of keys in the module's host-kept state.
	StateKeys int `json:"state_keys"`
	// Canary is a prepared version serving CanaryWeight of the calls beside
	// Active while a canary runs; nil otherwise.
	Canary *VersionStatus `json:"canary"`
	// CanaryWeight is the share of calls (0 to 1) the canary serves.
	CanaryWeight float64 `json:"canary_weight"`
}

// VersionStatus describes one version of a module.
type VersionStatus struct {
	Version       string    `json:"version"`
	Digest        string    `json:"digest"`
	LoadedAt      time.Time `json:"loaded_at"`
	InFlight      int64     `json:"in_flight"`
	Instances     int       `json:"instances"`
	IdleInstances int       `json:"idle_instances"`
	MemoryBytes   uint64    `json:"memory_bytes"`
	Calls         uint64    `json:"calls"`
	Failures      uint64    `json:"failures"`
	Discarded     uint64    `json:"discarded_instances"`
	// TableEntries is the entries of the guest tables over all instances,
	// outside MemoryBytes.
	TableEntries uint64 `json:"table_entries"`
	// DroppedLogLines counts guest log lines dropped by a rate limit.
	DroppedLogLines uint64 `json:"dropped_log_lines"`
}

// Versions returns every live version of the module: the active one, the
// canary, the previous one and those draining, in that order.
func (s Status) Versions() []VersionStatus {
	var vs []VersionStatus
	for _, v := range []*VersionStatus{s.Active, s.Canary, s.Previous} {
		if v != nil {
			vs = append(vs, *v)
		}
	}
	return append(vs, s.Draining...)
}
