package kernel_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/examples/bpfcount"
	"github.com/hotswapgo/hotswap/internal/vethpair"
	"github.com/hotswapgo/hotswap/kernel"
)

const (
	slotName  = "udpcount"
	countPort = 5000
)

// env is a veth pair in namespaces of its own, a signing key the verifier
// trusts, an audit log, and a slot on the receiving end.
type env struct {
	t         *testing.T
	pair      *vethpair.Pair
	signer    *artifact.Signer
	auditPath string
	slot      *kernel.Slot
}

// newEnv makes an env whose slot runs the tcx or XDP program, with opts'
// Health and HealthTimeout.
func newEnv(t *testing.T, attach kernel.Attach, opts kernel.Options) *env {
	t.Helper()
	vethpair.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pair, err := vethpair.New(ctx, "hsk")
	if err != nil {
		t.Fatalf("vethpair.New() = %v", err)
	}
	t.Cleanup(func() {
		if err := pair.Close(); err != nil {
			t.Errorf("remove namespaces: %v", err)
		}
	})
	priv, err := artifact.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := artifact.NewSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := artifact.NewTrustStore(signer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := artifact.NewVerifier(trust, artifact.VerifierOptions{})
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(auditPath, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	opts.Name, opts.Attach, opts.Verifier, opts.Audit = slotName, attach, verifier, al
	opts.Interface, opts.Netns = vethpair.ReceiverIf, pair.ReceiverPath()
	opts.Program = bpfcount.ProgramTCX
	if attach == kernel.AttachXDP {
		opts.Program = bpfcount.ProgramXDP
	}
	slot, err := kernel.New(opts)
	if err != nil {
		t.Fatalf("kernel.New() = %v", err)
	}
	t.Cleanup(func() {
		if err := slot.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return &env{t: t, pair: pair, signer: signer, auditPath: auditPath, slot: slot}
}

// signed returns object's manifest, signed, naming it version of the slot.
func (e *env) signed(object []byte, version string) []byte {
	e.t.Helper()
	sm, err := e.signer.Sign(artifact.Manifest{Name: slotName, Version: version, Kind: artifact.KindBPF,
		Digest: artifact.DigestOf(object), Size: int64(len(object)), Created: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		e.t.Fatal(err)
	}
	raw, err := sm.Marshal()
	if err != nil {
		e.t.Fatal(err)
	}
	return raw
}

// load loads object, signed, as version.
func (e *env) load(object []byte, version string) (kernel.VersionStatus, error) {
	return e.slot.LoadBytes(context.Background(), version+".o", object, e.signed(object, version))
}

// mustLoad loads object as version and fails the test if it is refused.
func (e *env) mustLoad(object []byte, version string) kernel.VersionStatus {
	e.t.Helper()
	st, err := e.load(object, version)
	if err != nil {
		e.t.Fatalf("LoadBytes(%s) = %v", version, err)
	}
	return st
}

// send sends n datagrams to port across the pair and returns how many the
// receiving socket got, waiting at most a second for the last.
func (e *env) send(port uint16, n int) int {
	e.t.Helper()
	got, err := e.pair.RoundTrip(port, n)
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

// count reads the active version's counter for port.
func (e *env) count(port uint16) uint64 {
	e.t.Helper()
	return readCount(e.t, e.slot, bpfcount.PortMap, port)
}

// dropped reads the active version's drop counter.
func (e *env) dropped() uint64 {
	e.t.Helper()
	return readCount(e.t, e.slot, bpfcount.DroppedMap, uint32(0))
}

func readCount[K uint16 | uint32](t *testing.T, s *kernel.Slot, name string, key K) uint64 {
	t.Helper()
	m, err := s.Map(name)
	if err != nil {
		t.Fatalf("Map(%s) = %v", name, err)
	}
	defer m.Close()
	var n uint64
	if err := m.Lookup(key, &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("lookup %v in %s: %v", key, name, err)
	}
	return n
}

// events reads the audit log.
func (e *env) events() []audit.Event {
	e.t.Helper()
	f, err := os.Open(e.auditPath)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	var evs []audit.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			e.t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}
