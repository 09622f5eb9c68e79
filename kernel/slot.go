package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/internal/netns"
)

// DefaultMaxObjectSize bounds an eBPF object unless Options.MaxObjectSize
// says otherwise. A real object is tens of KiB.
const DefaultMaxObjectSize = 16 << 20

// DefaultHealthTimeout bounds a health check unless Options.HealthTimeout
// says otherwise.
const DefaultHealthTimeout = 10 * time.Second

// verifierLogTail is how many lines of the verifier's log a LoadError keeps:
// the verdict and the instructions that led to it.
const verifierLogTail = 20

// Attach says where a slot's program runs.
type Attach uint8

// Attach points. Each takes a program of its own type (see docs/ebpf.md).
const (
	AttachTCXIngress Attach = iota + 1 // tcx, packets received by the interface (SEC("tcx/ingress"))
	AttachTCXEgress                    // tcx, packets sent by the interface (SEC("tcx/egress"))
	AttachXDP                          // XDP, the driver's receive path (SEC("xdp"))
)

var attachNames = map[Attach]string{AttachTCXIngress: "tcx-ingress", AttachTCXEgress: "tcx-egress", AttachXDP: "xdp"}

// String returns "tcx-ingress", "tcx-egress" or "xdp", the words
// ParseAttach accepts.
func (a Attach) String() string {
	if s, ok := attachNames[a]; ok {
		return s
	}
	return fmt.Sprintf("Attach(%d)", uint8(a))
}

// ParseAttach parses "tcx-ingress", "tcx-egress" or "xdp".
func ParseAttach(s string) (Attach, error) {
	for a, name := range attachNames {
		if name == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("parse attach point %q: want tcx-ingress, tcx-egress or xdp", s)
}

// types returns the program type and attach type a program needs here.
func (a Attach) types() (ebpf.ProgramType, ebpf.AttachType) {
	switch a {
	case AttachTCXIngress:
		return ebpf.SchedCLS, ebpf.AttachTCXIngress
	case AttachTCXEgress:
		return ebpf.SchedCLS, ebpf.AttachTCXEgress
	}
	return ebpf.XDP, ebpf.AttachXDP
}

// HealthCheck judges a version that has just begun to serve. It is called
// once per swap with a context that ends after Options.HealthTimeout, and
// must return by then: a nil error keeps the version, any other error rolls
// the slot back to the version it replaced, and the error's text goes into
// the audit log, so put the numbers behind the verdict in it. v's maps are
// the slot's: read them, do not close them.
type HealthCheck func(ctx context.Context, v *Version) error

// Options configures a Slot.
type Options struct {
	// Name is the slot's name and the artifact name every version's
	// manifest must carry ("udpcount"). Required.
	Name string
	// Program is the name of the program in each object that the slot
	// attaches (the C function's name). Required.
	Program string
	// Attach is where the program runs. Required.
	Attach Attach
	// Interface is the network interface the program is attached to.
	// Required.
	Interface string
	// Netns is the network namespace the interface is in, as a file
	// (/run/netns/NAME, /proc/PID/ns/net). Defaults to "": the caller's.
	Netns string
	// Verifier checks every object's manifest, signature and digest before
	// any of it reaches the kernel. Required.
	Verifier *artifact.Verifier
	// Audit records every load and rollback, done or refused. Required.
	Audit *audit.Log
	// Health, if set, judges each new version after it began to serve; a
	// failed check rolls back automatically. The first version, which
	// replaces nothing, is not judged. Defaults to nil: no check.
	Health HealthCheck
	// HealthTimeout bounds Health. Defaults to DefaultHealthTimeout (10s).
	HealthTimeout time.Duration
	// MaxObjectSize bounds an object, in bytes: a manifest stating more is
	// refused before any byte of the object is read. Defaults to
	// DefaultMaxObjectSize (16 MiB).
	MaxObjectSize int64
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Slot is one attach point (a program name on an interface) and the
// versions of the program that serve it: the active one, attached through a
// bpf_link, and the previous one, kept loaded for an instant rollback. Maps
// carry over from version to version. A Slot is safe for concurrent use; at
// most one load or rollback runs at a time, a second gets ErrBusy.
type Slot struct {
	opts    Options
	log     *slog.Logger
	ifindex int

	// swap is held by the one load, rollback or Close under way; loads and
	// rollbacks take it with TryLock.
	swap sync.Mutex
	// The fields below change only with swap held, and then also with mu
	// held; Status reads them with mu alone.
	mu     sync.Mutex
	link   link.Link // nil before the first load
	cur    *Version  // the active version; nil before the first load
	prev   *Version  // kept for rollback; nil if none
	closed bool
}

// New checks opts and finds the interface; the slot attaches nothing until
// its first Load.
func New(opts Options) (*Slot, error) {
	switch {
	case opts.Name == "":
		return nil, errors.New("new slot: Options.Name is required")
	case opts.Program == "":
		return nil, fmt.Errorf("new slot %s: Options.Program is required", opts.Name)
	case opts.Interface == "":
		return nil, fmt.Errorf("new slot %s: Options.Interface is required", opts.Name)
	case opts.Verifier == nil:
		return nil, fmt.Errorf("new slot %s: Options.Verifier is required", opts.Name)
	case opts.Audit == nil:
		return nil, fmt.Errorf("new slot %s: Options.Audit is required", opts.Name)
	case opts.HealthTimeout < 0:
		return nil, fmt.Errorf("new slot %s: HealthTimeout %v is negative", opts.Name, opts.HealthTimeout)
	case opts.MaxObjectSize < 0:
		return nil, fmt.Errorf("new slot %s: MaxObjectSize %d is negative", opts.Name, opts.MaxObjectSize)
	}
	if _, ok := attachNames[opts.Attach]; !ok {
		return nil, fmt.Errorf("new slot %s: Options.Attach %v is not an attach point", opts.Name, opts.Attach)
	}
	if opts.HealthTimeout == 0 {
		opts.HealthTimeout = DefaultHealthTimeout
	}
	if opts.MaxObjectSize == 0 {
		opts.MaxObjectSize = DefaultMaxObjectSize
	}
	s := &Slot{opts: opts, log: opts.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	err := netns.Do(opts.Netns, func() error {
		ifc, err := net.InterfaceByName(opts.Interface)
		if err == nil {
			s.ifindex = ifc.Index
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("new slot %s: find interface %s: %w", opts.Name, opts.Interface, err)
	}
	return s, nil
}

// Name returns the slot's name.
func (s *Slot) Name() string { return s.opts.Name }

// Load verifies the eBPF object at path (its manifest at path+".manifest")
// as a version of the slot and makes it serve. See LoadBytes.
func (s *Slot) Load(ctx context.Context, path string) (VersionStatus, error) {
	return s.load(ctx, filepath.Base(path), func(ctx context.Context) (*artifact.Verified, error) {
		return s.opts.Verifier.Verify(ctx, path, s.expect())
	})
}

// LoadBytes verifies object against manifest (nil: none, which only a
// development-mode verifier accepts) as a version of the slot, loads it
// into the kernel with the active version's maps, and swaps it in: the
// first version is attached, later ones replace the active program in the
// link atomically, so every packet runs either the old or the new program.
// The replaced version stays loaded for Rollback. If Options.Health is set
// it then judges the new version, and a failed check swaps the replaced
// version back and returns a *HealthError.
//
// A refusal is audited and returned as an *artifact.VerifyError or a
// *LoadError naming the artifact and the failed check; the active version
// keeps serving. label is what messages call the artifact. Cancelling ctx
// aborts the change until the switch (audited as canceled), and during the
// health check counts as a failed check.
func (s *Slot) LoadBytes(ctx context.Context, label string, object, manifest []byte) (VersionStatus, error) {
	return s.load(ctx, label, func(ctx context.Context) (*artifact.Verified, error) {
		return s.opts.Verifier.VerifyBytes(ctx, label, manifest, object, s.expect())
	})
}

// LoadReader is LoadBytes for an object that arrives as a stream (an
// upload): every check that needs only the manifest runs before the first
// byte of the object is read, and no more than the manifest states (or,
// unsigned in development mode, Options.MaxObjectSize) is read.
func (s *Slot) LoadReader(ctx context.Context, label string, manifest []byte, object io.Reader) (VersionStatus, error) {
	return s.load(ctx, label, func(ctx context.Context) (*artifact.Verified, error) {
		return s.opts.Verifier.VerifyReader(ctx, label, manifest, object, s.expect())
	})
}

func (s *Slot) expect() artifact.Expect {
	return artifact.Expect{Name: s.opts.Name, Kind: artifact.KindBPF, MaxSize: s.opts.MaxObjectSize}
}

func (s *Slot) load(ctx context.Context, label string, verify func(context.Context) (*artifact.Verified, error)) (VersionStatus, error) {
	c, err := s.begin(ctx, audit.ActionSwap, label)
	if err != nil {
		return VersionStatus{}, err
	}
	defer s.swap.Unlock()
	vd, err := verify(ctx)
	if err != nil {
		return VersionStatus{}, c.refuse(err)
	}
	c.ev.To = versionRef(vd.Manifest)
	v, err := s.prepare(label, vd)
	if err != nil {
		return VersionStatus{}, c.refuse(err)
	}
	if err := ctx.Err(); err != nil {
		v.close()
		return VersionStatus{}, c.refuse(fmt.Errorf("load %s into %s: %w", label, s.opts.Name, err))
	}
	if err := c.allow(); err != nil {
		v.close()
		return VersionStatus{}, err
	}
	old := s.cur
	if err := s.activate(v, old); err != nil {
		v.close()
		return VersionStatus{}, c.fail(&LoadError{Artifact: label, Slot: s.opts.Name, Check: CheckAttach, Err: err})
	}
	if s.opts.Health != nil && old != nil {
		if herr := s.checkHealth(ctx, v); herr != nil {
			return s.healthRollback(c, v, old, herr)
		}
	}
	s.mu.Lock()
	drop := s.prev
	s.prev = old
	s.mu.Unlock()
	if drop != nil {
		drop.close()
	}
	return v.status(), nil
}

// activate makes v serve in place of old (nil: attach the first version).
func (s *Slot) activate(v, old *Version) error {
	if old == nil {
		l, err := s.attach(v.prog)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.link, s.cur = l, v
		s.mu.Unlock()
		return nil
	}
	start := time.Now()
	if err := s.replace(v, old); err != nil {
		return err
	}
	v.switched = time.Since(start)
	s.mu.Lock()
	s.cur = v
	s.mu.Unlock()
	return nil
}

// attach attaches p to the slot's interface, in the slot's namespace.
func (s *Slot) attach(p *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := netns.Do(s.opts.Netns, func() (err error) {
		if s.opts.Attach == AttachXDP {
			l, err = link.AttachXDP(link.XDPOptions{Program: p, Interface: s.ifindex})
		} else {
			_, at := s.opts.Attach.types()
			l, err = link.AttachTCX(link.TCXOptions{Program: p, Interface: s.ifindex, Attach: at})
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s to %s %s: %w", s.opts.Program, s.opts.Interface, s.opts.Attach, err)
	}
	return l, nil
}

// linkUpdater is what tcx and XDP links offer: BPF_LINK_UPDATE with an
// expected old program.
type linkUpdater interface {
	UpdateArgs(link.RawLinkUpdateOptions) error
}

// replace swaps the link's program from old to v in one BPF_LINK_UPDATE.
// BPF_F_REPLACE makes it a compare-and-swap: if another program than old
// is attached (someone else updated the link), the kernel refuses.
func (s *Slot) replace(v, old *Version) error {
	u, ok := s.link.(linkUpdater)
	if !ok {
		return fmt.Errorf("update %s: link %T cannot be updated", s.opts.Name, s.link)
	}
	err := u.UpdateArgs(link.RawLinkUpdateOptions{New: v.prog, Old: old.prog, Flags: unix.BPF_F_REPLACE})
	if err != nil {
		return fmt.Errorf("replace %s %s by %s: %w", s.opts.Name, old.manifest.Version, v.manifest.Version, err)
	}
	return nil
}

// checkHealth runs the health check on v, bounded by HealthTimeout: a
// check that does not return in time fails.
func (s *Slot) checkHealth(ctx context.Context, v *Version) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.HealthTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.opts.Health(ctx, v) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// Give a check that watches ctx a moment to say why it stopped.
		select {
		case err := <-done:
			if err != nil {
				return err
			}
			return fmt.Errorf("health check: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
			return fmt.Errorf("health check did not return within %v: %w", s.opts.HealthTimeout, ctx.Err())
		}
	}
}

// healthRollback swaps old back in place of v, which failed its health
// check, and closes v; the slot is as it was before the load.
func (s *Slot) healthRollback(c *change, v, old *Version, herr error) (VersionStatus, error) {
	herr = &HealthError{Slot: s.opts.Name, Version: v.manifest.Version, Err: herr}
	c.fail(herr)
	rb := s.newChange(c.ctx, audit.ActionRollback, "")
	rb.ev.From, rb.ev.To, rb.ev.Detail = versionRef(v.manifest), versionRef(old.manifest), herr.Error()
	if err := s.replace(old, v); err != nil {
		herr.(*HealthError).RollbackErr = err
		rb.fail(err)
		return v.status(), herr
	}
	s.mu.Lock()
	s.cur = old
	s.mu.Unlock()
	v.close()
	rb.record(audit.ResultOK, nil)
	return old.status(), herr
}

// Rollback makes the previous version serve again, in one atomic link
// update, and closes the version rolled back from (it is not known to be
// good). It returns ErrNoPrevious when no previous version is kept.
func (s *Slot) Rollback(ctx context.Context) (VersionStatus, error) {
	c, err := s.begin(ctx, audit.ActionRollback, "")
	if err != nil {
		return VersionStatus{}, err
	}
	defer s.swap.Unlock()
	cur, prev := s.cur, s.prev
	if prev == nil {
		return VersionStatus{}, c.refuse(fmt.Errorf("roll back %s: %w", s.opts.Name, ErrNoPrevious))
	}
	c.ev.To = versionRef(prev.manifest)
	if err := c.allow(); err != nil {
		return VersionStatus{}, err
	}
	if err := s.replace(prev, cur); err != nil {
		return VersionStatus{}, c.fail(err)
	}
	s.mu.Lock()
	s.cur, s.prev = prev, nil
	s.mu.Unlock()
	cur.close()
	return prev.status(), nil
}

// Map returns the active version's map of that name, as a new handle the
// caller must Close; it stays valid across later swaps. It fails before the
// first load and when the active version has no such map.
func (s *Slot) Map(name string) (*ebpf.Map, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil, fmt.Errorf("map %s of %s: no version loaded", name, s.opts.Name)
	}
	m := s.cur.Map(name)
	if m == nil {
		return nil, fmt.Errorf("map %s of %s: %s %s has no such map", name, s.opts.Name, s.opts.Name, s.cur.manifest.Version)
	}
	return m.Clone()
}

// Status describes the slot and its versions.
func (s *Slot) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Name: s.opts.Name, Program: s.opts.Program, Attach: s.opts.Attach.String(),
		Interface: s.opts.Interface, Netns: s.opts.Netns, Trust: s.opts.Verifier.Mode().String()}
	if s.cur != nil {
		vs := s.cur.status()
		st.Active = &vs
	}
	if s.prev != nil {
		vs := s.prev.status()
		st.Previous = &vs
	}
	return st
}

// Close detaches the program and closes every version. The maps go with
// the last reference to them. Close waits for a load or rollback under
// way, and later ones fail with ErrClosed.
func (s *Slot) Close() error {
	s.swap.Lock()
	defer s.swap.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	for _, v := range []*Version{s.cur, s.prev} {
		if v != nil {
			v.close()
		}
	}
	s.link, s.cur, s.prev = nil, nil, nil
	return errors.Join(errs...)
}

// Status describes a slot.
type Status struct {
	Name      string         `json:"name"`
	Program   string         `json:"program"`
	Attach    string         `json:"attach"`
	Interface string         `json:"interface"`
	Netns     string         `json:"netns,omitempty"`
	Trust     string         `json:"trust"` // the verifier's mode: "enforce" or "development"
	Active    *VersionStatus `json:"active"`
	Previous  *VersionStatus `json:"previous"`
}

// VersionStatus describes one version of a slot.
type VersionStatus struct {
	Version   string    `json:"version"`
	Digest    string    `json:"digest"` // hex SHA-256 of the object
	Signed    bool      `json:"signed"`
	ProgramID uint32    `json:"program_id"` // the kernel's id, for bpftool prog show id N
	LoadedAt  time.Time `json:"loaded_at"`
	// Switch is how long the link update that made this version serve
	// took (BPF_LINK_UPDATE); 0 for the first version, which was attached.
	Switch time.Duration `json:"switch_ns"`
}
