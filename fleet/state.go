package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/canary"
)

// DefaultPrefix is the etcd key prefix of every group unless
// Options.Prefix says otherwise.
const DefaultPrefix = "/hotswap/fleet"

// MaxRecordSize bounds a record read from etcd: a larger one is refused
// before it is decoded.
const MaxRecordSize = 256 << 10

// Errors callers branch on.
var (
	// ErrInvalid: a spec, a group or an instance name is not valid.
	ErrInvalid = errors.New("invalid fleet record")
	// ErrNotLeader: the controller lost its leadership while writing.
	ErrNotLeader = errors.New("not the fleet leader")
	// ErrNoRollout: the group runs no rollout to pause, resume or abort.
	ErrNoRollout = errors.New("no rollout running")
)

// ModuleSpec is the version of one module a group should run.
type ModuleSpec struct {
	// Version is the manifest's version label, for people; Digest pins it.
	Version string `json:"version"`
	// Digest is the sha256 of the artifact's payload, "sha256:<hex>" or
	// "<hex>": the pin. An artifact whose payload has another digest is
	// refused, whatever its signature.
	Digest string `json:"digest"`
	// URL locates the payload (file:// or https://; its manifest is at
	// URL+".manifest") or the artifact in an OCI registry (oci://, see
	// OCIScheme).
	URL string `json:"url"`
	// Canary, if set, makes each instance run the version as a canary
	// beside the one it serves, and ack only once it was promoted.
	Canary *CanaryPolicy `json:"canary,omitempty"`
	// B, if set, is a second version every instance runs beside this one,
	// A, for a fleet-wide A/B split (see SplitSpec). A module with a B
	// version takes no canary policy.
	B *SplitSpec `json:"b,omitempty"`
}

// SplitSpec is the B version of a fleet-wide A/B split of a module and its
// weight. Every instance loads B beside A and sends each call with a
// routing key (module.Module.CallKey) to B when the key's hash falls below
// the weight. The hash is salted by the group, the module and B's digest
// (SplitSalt), the same on every instance, so a key goes to the same
// version on every instance that applied the spec; raising the weight
// moves only keys from A to B, and a weight change reloads nothing.
type SplitSpec struct {
	// Version, Digest and URL locate and pin B as ModuleSpec's do A.
	Version string `json:"version"`
	Digest  string `json:"digest"`
	URL     string `json:"url"`
	// Weight is B's share of the keyed calls, in percent: 0 to 100.
	Weight float64 `json:"weight"`
}

// SplitSalt is the salt of the routing-key hash of module's A/B split in
// group with B pinned at digest (hex): the same on every instance.
func SplitSalt(group, module, digest string) string {
	return "hotswap-fleet-split\x00" + group + "\x00" + module + "\x00" + digest
}

// CanaryPolicy is the part of a canary.Policy that travels through etcd.
// The zero value of each field means canary.Policy's default.
type CanaryPolicy struct {
	Steps           []float64     `json:"steps,omitempty"`
	Interval        time.Duration `json:"interval,omitempty"`
	MinCalls        int           `json:"min_calls,omitempty"`
	MaxEmptyWindows int           `json:"max_empty_windows,omitempty"`
}

// Policy returns the canary policy.
func (p CanaryPolicy) Policy() canary.Policy {
	return canary.Policy{Steps: p.Steps, Interval: p.Interval, MinCalls: p.MinCalls, MaxEmptyWindows: p.MaxEmptyWindows}
}

// BinarySpec is the version of the service's binary a group should run.
// An instance whose running binary has another digest upgrades to it
// (package upgrade, through its host's trust path) before it touches its
// modules; see docs/fleet.md.
type BinarySpec struct {
	// Version is the manifest's version label, for people; Digest pins it.
	Version string `json:"version"`
	// Digest is the sha256 of the binary, "sha256:<hex>" or "<hex>": the
	// pin.
	Digest string `json:"digest"`
	// URL locates the binary (file://, http:// or https://); its manifest
	// (kind binary, named for the service) is at URL+".manifest".
	URL string `json:"url"`
}

// source is the binary as a fetchable artifact.
func (b BinarySpec) source() ModuleSpec {
	return ModuleSpec{Version: b.Version, Digest: b.Digest, URL: b.URL}
}

// Spec is what an instance runs: module versions and, optionally, the
// version of its binary.
type Spec struct {
	Modules map[string]ModuleSpec `json:"modules"`
	// Binary, if set, pins the service's binary; nil leaves every
	// instance on the binary it runs.
	Binary *BinarySpec `json:"binary,omitempty"`
}

// ID returns a short digest of the spec's pins, equal for two specs that
// pin the same digests for the same modules (and the same binary, if
// any).
func (s Spec) ID() string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(s.Modules)) {
		d, _ := artifact.ParseDigest(strings.TrimPrefix(s.Modules[name].Digest, "sha256:"))
		fmt.Fprintf(h, "%s=%s\n", name, d.Hex())
		if b := s.Modules[name].B; b != nil {
			// Only a spec with a split hashes it: the IDs of the others
			// stay what they were.
			bd, _ := artifact.ParseDigest(strings.TrimPrefix(b.Digest, "sha256:"))
			fmt.Fprintf(h, "%s.b=%s@%g\n", name, bd.Hex(), b.Weight)
		}
	}
	if s.Binary != nil {
		// After the modules, with a character no module name has: a spec
		// without a binary keeps the ID it had before binaries existed.
		d, _ := artifact.ParseDigest(strings.TrimPrefix(s.Binary.Digest, "sha256:"))
		fmt.Fprintf(h, "/binary=%s\n", d.Hex())
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Validate checks every module name, digest and URL, and the binary's.
func (s Spec) Validate() error {
	if len(s.Modules) == 0 && s.Binary == nil {
		return fmt.Errorf("%w: spec names no module and no binary", ErrInvalid)
	}
	if b := s.Binary; b != nil {
		if _, err := parseDigest(b.Digest); err != nil {
			return fmt.Errorf("binary: %w", err)
		}
		if err := validURL(b.URL); err != nil {
			return fmt.Errorf("binary: %w", err)
		}
	}
	for name, m := range s.Modules {
		if err := validName(name); err != nil {
			return fmt.Errorf("module %q: %w", name, err)
		}
		if _, err := parseDigest(m.Digest); err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		if err := validURL(m.URL); err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		if b := m.B; b != nil {
			bd, err := parseDigest(b.Digest)
			if err != nil {
				return fmt.Errorf("module %s: B: %w", name, err)
			}
			if err := validURL(b.URL); err != nil {
				return fmt.Errorf("module %s: B: %w", name, err)
			}
			if a, _ := parseDigest(m.Digest); a == bd {
				return fmt.Errorf("%w: module %s: B pins A's digest %s", ErrInvalid, name, b.Digest)
			}
			if !(b.Weight >= 0 && b.Weight <= 100) {
				return fmt.Errorf("%w: module %s: B's weight %v is not between 0 and 100", ErrInvalid, name, b.Weight)
			}
			if m.Canary != nil {
				return fmt.Errorf("%w: module %s: a module with a B version takes no canary policy", ErrInvalid, name)
			}
		}
		if m.Canary != nil {
			if err := m.Canary.Policy().Validate(); err != nil {
				return fmt.Errorf("%w: module %s: canary: %v", ErrInvalid, name, err)
			}
		}
	}
	return nil
}

func validURL(u string) error {
	if strings.HasPrefix(u, OCIScheme) {
		_, err := parseOCIURL(u, true)
		return err
	}
	if !strings.HasPrefix(u, "file://") && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		return fmt.Errorf("%w: URL %q is not file://, http://, https:// or oci://", ErrInvalid, u)
	}
	return nil
}

func parseDigest(s string) (artifact.Digest, error) {
	d, err := artifact.ParseDigest(strings.TrimPrefix(s, "sha256:"))
	if err != nil {
		return artifact.Digest{}, fmt.Errorf("%w: digest %q: %v", ErrInvalid, s, err)
	}
	return d, nil
}

// validName accepts group, instance and module names that are safe as one
// etcd key segment.
func validName(s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%w: name %q must have 1 to 128 characters", ErrInvalid, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') || s == "." || s == ".." {
			return fmt.Errorf("%w: name %q may hold only letters, digits, '-', '_' and '.'", ErrInvalid, s)
		}
	}
	return nil
}

// Desired is what an operator asked a group to run, written by Set.
type Desired struct {
	Spec Spec `json:"spec"`
	// Waves are the sizes of the rollout's waves, in order: "1" (one
	// instance), "10%" (of the group's instances when the rollout
	// started). The last wave always covers every instance. Empty: one wave
	// of every instance.
	Waves []string `json:"waves,omitempty"`
	// WaveTimeout halts a wave whose instances did not all ack in time.
	// Defaults to DefaultWaveTimeout (2m).
	WaveTimeout time.Duration `json:"wave_timeout,omitempty"`
	// Writer is who asked, for the audit logs of every instance.
	Writer string    `json:"writer"`
	Time   time.Time `json:"time"`
}

// DefaultWaveTimeout bounds a wave unless Desired.WaveTimeout says
// otherwise.
const DefaultWaveTimeout = 2 * time.Minute

// DefaultWaves are the waves of a rollout: one instance, 10%, 50%, all.
func DefaultWaves() []string { return []string{"1", "10%", "50%", "100%"} }

// waveSizes turns waves into cumulative instance counts for n instances,
// increasing, the last one n.
func waveSizes(waves []string, n int) ([]int, error) {
	var sizes []int
	prev := 0
	for _, w := range waves {
		var k int
		if p, ok := strings.CutSuffix(w, "%"); ok {
			var pct float64
			if _, err := fmt.Sscanf(p, "%g", &pct); err != nil || !(pct > 0 && pct <= 100) {
				return nil, fmt.Errorf("%w: wave %q: a percentage must be in (0, 100]", ErrInvalid, w)
			}
			k = int((pct*float64(n) + 99.999) / 100) // ceil, tolerant of float error
		} else if _, err := fmt.Sscanf(w, "%d", &k); err != nil || k <= 0 || fmt.Sprint(k) != w {
			return nil, fmt.Errorf("%w: wave %q: want a count (\"1\") or a percentage (\"10%%\")", ErrInvalid, w)
		}
		k = min(k, n)
		if k > prev {
			sizes = append(sizes, k)
			prev = k
		}
	}
	if prev < n {
		sizes = append(sizes, n)
	}
	return sizes, nil
}

// Command is an operator's order about the running rollout.
type Command string

// Commands.
const (
	Pause  Command = "pause"
	Resume Command = "resume"
	Abort  Command = "abort"
)

// Control is the last command of an operator about a rollout.
type Control struct {
	Command Command `json:"command"`
	// Rollout is the desired revision it is about: a command about an
	// older rollout is ignored.
	Rollout int64     `json:"rollout"`
	Writer  string    `json:"writer"`
	Time    time.Time `json:"time"`
}

// Phase is where a rollout is.
type Phase string

// Phases of a rollout; docs/fleet.md draws the state machine.
const (
	Running Phase = "running" // moving its waves
	Paused  Phase = "paused"  // holding at its wave by an operator's order
	Done    Phase = "done"    // every instance runs the spec; it is stable
	Halted  Phase = "halted"  // a wave went bad; its instances were reverted
	Aborted Phase = "aborted" // an operator aborted it; every instance reverted
)

// Ended reports whether the phase is final.
func (p Phase) Ended() bool { return p == Done || p == Halted || p == Aborted }

// Rollout is the controller's record of the group's last rollout.
type Rollout struct {
	// Revision is the etcd revision of the desired record it rolls out.
	Revision int64 `json:"revision"`
	Phase    Phase `json:"phase"`
	Spec     Spec  `json:"spec"`
	// Previous is the stable spec it replaces, what a revert restores
	// (empty Modules when the group had none).
	Previous Spec `json:"previous"`
	// Members are the instances when it started, in wave order (sticky:
	// ordered by a hash of group and instance).
	Members []string `json:"members"`
	// Sizes are the waves' cumulative sizes; Wave indexes the one moving.
	Sizes []int `json:"sizes"`
	Wave  int   `json:"wave"`
	// Skipped are members that had left the group when their wave
	// started: not moved, not waited for.
	Skipped []string `json:"skipped,omitempty"`
	// WaveStarted is when the current wave's targets were written.
	WaveStarted time.Time `json:"wave_started"`
	// Reason says why it halted or was aborted: the instance, and its
	// failed check.
	Reason string    `json:"reason,omitempty"`
	Writer string    `json:"writer"`
	Leader string    `json:"leader"`
	Time   time.Time `json:"time"`
}

// Touched returns the members moved so far.
func (r Rollout) Touched() []string {
	if r.check() != nil || len(r.Sizes) == 0 {
		return nil
	}
	return r.Members[:r.Sizes[r.Wave]]
}

// check reports whether the record's waves fit its members: records come
// from etcd, which others can write.
func (r Rollout) check() error {
	if len(r.Sizes) == 0 {
		if r.Wave != 0 {
			return fmt.Errorf("%w: rollout %d: wave %d of no waves", ErrInvalid, r.Revision, r.Wave)
		}
		return nil
	}
	if r.Wave < 0 || r.Wave >= len(r.Sizes) {
		return fmt.Errorf("%w: rollout %d: wave %d of %d", ErrInvalid, r.Revision, r.Wave, len(r.Sizes))
	}
	prev := 0
	for _, n := range r.Sizes {
		if n <= prev || n > len(r.Members) {
			return fmt.Errorf("%w: rollout %d: wave sizes %v do not grow within %d members", ErrInvalid, r.Revision, r.Sizes, len(r.Members))
		}
		prev = n
	}
	return nil
}

// Result is how an instance's last change went.
type Result string

// Results.
const (
	ResultOK      Result = "ok"      // it runs the spec
	ResultRefused Result = "refused" // an artifact failed a check: it runs what it ran
	ResultFailed  Result = "failed"  // fetch or apply failed for another reason
	ResultPending Result = "pending" // a change (e.g. a canary) is under way
)

// ModuleApplied is what an instance runs of one module.
type ModuleApplied struct {
	Version string `json:"version,omitempty"`
	Digest  string `json:"digest,omitempty"`
	// Result, Check and Error tell how the last change to the module
	// went: Check names the failed check when it was refused.
	Result Result `json:"result"`
	Check  string `json:"check,omitempty"`
	Error  string `json:"error,omitempty"`
	// Canary is the last canary's state and its last verdict, if any.
	Canary string `json:"canary,omitempty"`
	// B is the B version the module serves beside this one, if it runs
	// an A/B split.
	B *SplitApplied `json:"b,omitempty"`
}

// SplitApplied is the B version of an A/B split an instance runs.
type SplitApplied struct {
	Version string `json:"version,omitempty"`
	Digest  string `json:"digest,omitempty"`
	// Weight is B's share of the keyed calls, in percent.
	Weight float64 `json:"weight"`
}

// Applied is an instance's report, under its lease.
type Applied struct {
	Instance string `json:"instance"`
	// Spec is the ID of the spec the instance was asked to run, Result
	// how that went: ok only when every module runs its pinned digest.
	Spec    string                   `json:"spec"`
	Result  Result                   `json:"result"`
	Modules map[string]ModuleApplied `json:"modules"`
	// Binary is the binary the instance runs and, when the spec pins one,
	// how the last upgrade to it went (Check names the failed check or
	// the upgrade's failed stage: "init", "probation", ...). Nil when the
	// service's binary is unknown to it.
	Binary *ModuleApplied `json:"binary,omitempty"`
	// PID is the process of the service that reports: a binary upgrade
	// changes it, and its new process reports from then on.
	PID int `json:"pid,omitempty"`
	// Health is "serving" when every module has an active version, else
	// what is missing.
	Health string `json:"health"`
	// Source is "etcd", or "last-known-good" after a cold start with etcd
	// unreachable.
	Source string    `json:"source"`
	Time   time.Time `json:"time"`
}

// Failure returns a one-line account of why the report is not ok.
func (a Applied) Failure() string {
	var parts []string
	if b := a.Binary; b != nil && (b.Result == ResultRefused || b.Result == ResultFailed) {
		parts = append(parts, fmt.Sprintf("binary %s (check %s): %s", b.Result, cmpOr(b.Check, "-"), b.Error))
	}
	for _, name := range slices.Sorted(maps.Keys(a.Modules)) {
		m := a.Modules[name]
		if m.Result == ResultRefused || m.Result == ResultFailed {
			parts = append(parts, fmt.Sprintf("%s %s (check %s): %s", name, m.Result, cmpOr(m.Check, "-"), m.Error))
		}
	}
	return strings.Join(parts, "; ")
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// keys is a group's key layout.
type keys struct{ group string }

func newKeys(prefix, group string) keys {
	return keys{group: strings.TrimSuffix(prefix, "/") + "/" + group}
}

func (k keys) desired() string          { return k.group + "/desired" }
func (k keys) control() string          { return k.group + "/control" }
func (k keys) rollout() string          { return k.group + "/rollout" }
func (k keys) stable() string           { return k.group + "/stable" }
func (k keys) targets() string          { return k.group + "/target/" }
func (k keys) target(id string) string  { return k.targets() + id }
func (k keys) applieds() string         { return k.group + "/applied/" }
func (k keys) applied(id string) string { return k.applieds() + id }
func (k keys) leader() string           { return k.group + "/leader/" }

// decode decodes a record read from etcd under key, bounded by
// MaxRecordSize, refusing unknown fields of none: records written by a
// newer version decode with what this one knows.
func decode[T any](key string, raw []byte) (T, error) {
	var v T
	if len(raw) > MaxRecordSize {
		return v, fmt.Errorf("%w: %s: record of %d bytes exceeds %d", ErrInvalid, key, len(raw), MaxRecordSize)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("%w: %s: %v", ErrInvalid, key, err)
	}
	return v, nil
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("fleet: encode %T: %v", v, err)) // only plain structs are encoded
	}
	return string(b)
}
