package kernel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/examples/bpfcount"
	"github.com/hotswapgo/hotswap/kernel"
)

var attachPoints = []kernel.Attach{kernel.AttachTCXIngress, kernel.AttachXDP}

func TestMapsSurviveSwap(t *testing.T) {
	for _, at := range attachPoints {
		t.Run(at.String(), func(t *testing.T) {
			e := newEnv(t, at, kernel.Options{})
			v1 := e.mustLoad(bpfcount.V1, "1.0.0")
			if got := e.send(countPort, 100); got != 100 {
				t.Fatalf("v1 delivered %d of 100 datagrams", got)
			}
			if got := e.count(countPort); got != 100 {
				t.Fatalf("v1 counted %d; want 100", got)
			}
			v3 := e.mustLoad(bpfcount.V3, "3.0.0")
			if v3.ProgramID == v1.ProgramID {
				t.Fatalf("v3 has program id %d, like v1", v3.ProgramID)
			}
			if got := e.send(countPort, 50); got != 50 {
				t.Fatalf("v3 delivered %d of 50 datagrams", got)
			}
			if got := e.count(countPort); got != 150 {
				t.Fatalf("after the swap the counter is %d; want 150 (100 by v1 + 50 by v3)", got)
			}
			// v2 also drops one port, counting the drops.
			e.mustLoad(bpfcount.V2, "2.0.0")
			if got := e.send(bpfcount.DropPort, 10); got != 0 {
				t.Fatalf("v2 delivered %d datagrams to port %d; want 0", got, bpfcount.DropPort)
			}
			if got := e.dropped(); got != 10 {
				t.Fatalf("v2 dropped %d; want 10", got)
			}
			if got := e.count(countPort); got != 150 {
				t.Fatalf("after the second swap the counter is %d; want 150", got)
			}
			st := e.slot.Status()
			if st.Active == nil || st.Active.Version != "2.0.0" || st.Previous == nil || st.Previous.Version != "3.0.0" {
				t.Fatalf("Status() = %+v; want active 2.0.0, previous 3.0.0", st)
			}
			// Rollback is to v3, which counts port 9999 again.
			if _, err := e.slot.Rollback(context.Background()); err != nil {
				t.Fatalf("Rollback() = %v", err)
			}
			if got := e.send(bpfcount.DropPort, 10); got != 10 {
				t.Fatalf("after rollback %d of 10 datagrams to port %d arrived; want 10", got, bpfcount.DropPort)
			}
			if got := e.count(bpfcount.DropPort); got != 10 {
				t.Fatalf("after rollback port %d counted %d; want 10", bpfcount.DropPort, got)
			}
			if _, err := e.slot.Rollback(context.Background()); !errors.Is(err, kernel.ErrNoPrevious) {
				t.Fatalf("second Rollback() = %v; want ErrNoPrevious", err)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t, kernel.AttachTCXIngress, kernel.Options{})
	v1 := e.mustLoad(bpfcount.V1, "1.0.0")
	tampered := append([]byte(nil), bpfcount.V3...)
	tampered[len(tampered)/2] ^= 0xff
	tests := []struct {
		name     string
		load     func() (kernel.VersionStatus, error)
		want     error
		check    func(t *testing.T, err error)
		artifact string
	}{
		{name: "verifier", load: func() (kernel.VersionStatus, error) { return e.load(bpfcount.Bad, "4.0.0") },
			want: kernel.ErrVerifierRejected, check: func(t *testing.T, err error) {
				var le *kernel.LoadError
				if !errors.As(err, &le) || len(le.VerifierLog) == 0 {
					t.Fatalf("error %v carries no verifier log", err)
				}
				if !strings.Contains(err.Error(), "invalid access to packet") {
					t.Errorf("error does not quote the verifier's verdict:\n%v", err)
				}
			}},
		{name: "incompatible map", load: func() (kernel.VersionStatus, error) { return e.load(bpfcount.U32, "5.0.0") },
			want: kernel.ErrIncompatibleMap, check: func(t *testing.T, err error) {
				var me *kernel.MapSchemaError
				if !errors.As(err, &me) {
					t.Fatalf("error %v is no *MapSchemaError", err)
				}
				if me.Map != bpfcount.PortMap || me.Field != "value_size" || me.Old != "8" || me.New != "4" {
					t.Errorf("MapSchemaError = %+v; want port_packets value_size 8 → 4", me)
				}
			}},
		{name: "missing map", load: func() (kernel.VersionStatus, error) { return e.load(bpfcount.Renamed, "8.0.0") },
			want: kernel.ErrMissingMap},
		{name: "wrong type", load: func() (kernel.VersionStatus, error) { return e.load(bpfcount.Socket, "6.0.0") },
			want: kernel.ErrWrongType},
		{name: "missing program", load: func() (kernel.VersionStatus, error) { return e.load(bpfcount.XDPOnly, "7.0.0") },
			want: kernel.ErrMissingProgram},
		{name: "not an object", load: func() (kernel.VersionStatus, error) { return e.load([]byte("not ELF"), "9.0.0") },
			want: kernel.ErrMalformedObject},
		{name: "unsigned", load: func() (kernel.VersionStatus, error) {
			return e.slot.LoadBytes(context.Background(), "v3.o", bpfcount.V3, nil)
		}, want: artifact.ErrUnsigned},
		{name: "tampered", load: func() (kernel.VersionStatus, error) {
			return e.slot.LoadBytes(context.Background(), "v3.o", tampered, e.signed(bpfcount.V3, "3.0.0"))
		}, want: artifact.ErrDigestMismatch},
		{name: "other slot's artifact", load: func() (kernel.VersionStatus, error) {
			sm, _ := e.signer.Sign(artifact.Manifest{Name: "firewall", Version: "1", Kind: artifact.KindBPF,
				Digest: artifact.DigestOf(bpfcount.V3), Size: int64(len(bpfcount.V3)), Created: time.Now().UTC().Truncate(time.Second)})
			raw, _ := sm.Marshal()
			return e.slot.LoadBytes(context.Background(), "v3.o", bpfcount.V3, raw)
		}, want: artifact.ErrNameMismatch},
	}
	sent := uint64(0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.events())
			_, err := tt.load()
			if !errors.Is(err, tt.want) {
				t.Fatalf("LoadBytes() = %v; want %v", err, tt.want)
			}
			if tt.check != nil {
				tt.check(t, err)
			}
			if st := e.slot.Status(); st.Active == nil || st.Active.ProgramID != v1.ProgramID || st.Previous != nil {
				t.Fatalf("after the refusal Status() = %+v; want v1 (program %d) alone", st, v1.ProgramID)
			}
			if got := e.send(countPort, 20); got != 20 {
				t.Fatalf("after the refusal %d of 20 datagrams arrived", got)
			}
			sent += 20
			if got := e.count(countPort); got != sent {
				t.Fatalf("after the refusal v1 counted %d; want %d", got, sent)
			}
			evs := e.events()[before:]
			if len(evs) != 2 || evs[0].Result != audit.ResultStarted || evs[1].Result != audit.ResultRefused || evs[1].Error == "" {
				t.Fatalf("audit records = %+v; want started then refused with the error", evs)
			}
		})
	}
}

func TestHealthGate(t *testing.T) {
	// The demo's check: the counters advance and the drop counter stays
	// under a bound, over a burst the check sends itself.
	var e *env
	health := func(ctx context.Context, v *kernel.Version) error {
		before, dropsBefore := e.count(countPort), e.dropped()
		for _, port := range []uint16{countPort, bpfcount.DropPort} {
			if _, err := e.pair.RoundTrip(port, 20); err != nil {
				return err
			}
		}
		counted, drops := e.count(countPort)-before, e.dropped()-dropsBefore
		if counted < 20 || drops > 0 {
			return fmt.Errorf("counted %d of 20 datagrams to port %d, dropped %d (bound 0)", counted, countPort, drops)
		}
		return nil
	}
	e = newEnv(t, kernel.AttachTCXIngress, kernel.Options{Health: health, HealthTimeout: 10 * time.Second})
	v1 := e.mustLoad(bpfcount.V1, "1.0.0")
	v3 := e.mustLoad(bpfcount.V3, "3.0.0") // passes: stays

	_, err := e.load(bpfcount.V2, "2.0.0") // drops port 9999: fails, rolls back
	var he *kernel.HealthError
	if !errors.Is(err, kernel.ErrUnhealthy) || !errors.As(err, &he) || he.RollbackErr != nil {
		t.Fatalf("LoadBytes(v2) = %v; want a *HealthError after a rollback", err)
	}
	st := e.slot.Status()
	if st.Active == nil || st.Active.ProgramID != v3.ProgramID || st.Previous == nil || st.Previous.ProgramID != v1.ProgramID {
		t.Fatalf("after the failed check Status() = %+v; want v3 active, v1 previous", st)
	}
	if got := e.send(bpfcount.DropPort, 10); got != 10 {
		t.Fatalf("after the rollback %d of 10 datagrams to port %d arrived; want 10", got, bpfcount.DropPort)
	}
	var rb *audit.Event
	for _, ev := range e.events() {
		if ev.Action == audit.ActionRollback {
			rb = &ev
		}
	}
	if rb == nil || rb.Result != audit.ResultOK || !strings.Contains(rb.Detail, "dropped 20 (bound 0)") ||
		!strings.HasPrefix(rb.From, "2.0.0@") || !strings.HasPrefix(rb.To, "3.0.0@") {
		t.Fatalf("audited rollback = %+v; want 2.0.0 → 3.0.0 with the numbers", rb)
	}
}

func TestConcurrentSwapsOneBusy(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	health := func(ctx context.Context, v *kernel.Version) error {
		once.Do(func() { close(entered) })
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e := newEnv(t, kernel.AttachTCXIngress, kernel.Options{Health: health, HealthTimeout: 10 * time.Second})
	e.mustLoad(bpfcount.V1, "1.0.0")
	done := make(chan error, 1)
	m3 := e.signed(bpfcount.V3, "3.0.0")
	go func() {
		_, err := e.slot.LoadBytes(context.Background(), "v3.o", bpfcount.V3, m3)
		done <- err
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first load never reached its health check")
	}
	if _, err := e.load(bpfcount.V2, "2.0.0"); !errors.Is(err, kernel.ErrBusy) {
		t.Errorf("LoadBytes during a load = %v; want ErrBusy", err)
	}
	if _, err := e.slot.Rollback(context.Background()); !errors.Is(err, kernel.ErrBusy) {
		t.Errorf("Rollback during a load = %v; want ErrBusy", err)
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the first load = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first load did not finish")
	}
	if st := e.slot.Status(); st.Active == nil || st.Active.Version != "3.0.0" {
		t.Fatalf("Status() = %+v; want 3.0.0 active", st)
	}
}

func TestCloseLeaksNothing(t *testing.T) {
	for _, at := range attachPoints {
		t.Run(at.String(), func(t *testing.T) {
			e := newEnv(t, at, kernel.Options{})
			e.send(countPort, 1) // warm up the runtime's network poller
			fds, pins := countFDs(t), countPins(t)
			var ids []ebpf.ProgramID
			for i, obj := range [][]byte{bpfcount.V1, bpfcount.V3, bpfcount.V2, bpfcount.U32} {
				st, err := e.load(obj, fmt.Sprintf("%d.0.0", i+1))
				if err == nil {
					ids = append(ids, ebpf.ProgramID(st.ProgramID))
				}
			}
			if _, err := e.slot.Rollback(context.Background()); err != nil {
				t.Fatalf("Rollback() = %v", err)
			}
			m, err := e.slot.Map(bpfcount.PortMap)
			if err != nil {
				t.Fatal(err)
			}
			mapInfo, err := m.Info()
			if err != nil {
				t.Fatal(err)
			}
			mapID, _ := mapInfo.ID()
			m.Close()
			if err := e.slot.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			if got := countFDs(t); got != fds {
				t.Errorf("open fds after Close = %d; want %d as before", got, fds)
			}
			if got := countPins(t); got != pins {
				t.Errorf("bpffs entries after Close = %d; want %d as before", got, pins)
			}
			// The kernel frees programs and maps after an RCU grace
			// period: wait for it, boundedly.
			deadline := time.Now().Add(5 * time.Second)
			for _, id := range ids {
				for {
					p, err := ebpf.NewProgramFromID(id)
					if errors.Is(err, os.ErrNotExist) {
						break
					}
					if err == nil {
						p.Close()
					}
					if time.Now().After(deadline) {
						t.Fatalf("program %d still exists after Close: %v", id, err)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			for {
				m, err := ebpf.NewMapFromID(mapID)
				if errors.Is(err, os.ErrNotExist) {
					break
				}
				if err == nil {
					m.Close()
				}
				if time.Now().After(deadline) {
					t.Fatalf("map %d still exists after Close: %v", mapID, err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := e.load(bpfcount.V1, "9.0.0"); !errors.Is(err, kernel.ErrClosed) {
				t.Fatalf("LoadBytes after Close = %v; want ErrClosed", err)
			}
		})
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// countPins counts the entries under /sys/fs/bpf (0 when it is not
// mounted).
func countPins(t *testing.T) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir("/sys/fs/bpf", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return filepath.SkipDir
			}
			return err
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSwapRefusedWhenLinkChangedBehindTheSlot(t *testing.T) {
	e := newEnv(t, kernel.AttachTCXIngress, kernel.Options{})
	e.mustLoad(bpfcount.V1, "1.0.0")
	// Someone else puts their own program into the slot's link.
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(bpfcount.V3))
	if err != nil {
		t.Fatal(err)
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{bpfcount.ProgramTCX: spec.Programs[bpfcount.ProgramTCX]}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if err := kernel.LinkOf(e.slot).Update(coll.Programs[bpfcount.ProgramTCX]); err != nil {
		t.Fatal(err)
	}
	_, err = e.load(bpfcount.V2, "2.0.0")
	var le *kernel.LoadError
	if !errors.As(err, &le) || le.Check != kernel.CheckAttach || !errors.Is(err, unix.EPERM) {
		t.Fatalf("LoadBytes after a foreign update = %v; want a refused link update (EPERM)", err)
	}
	// The foreign program still runs: it counts into its own map.
	if got := e.send(countPort, 5); got != 5 {
		t.Fatalf("%d of 5 datagrams arrived", got)
	}
	var n uint64
	if err := coll.Maps[bpfcount.PortMap].Lookup(uint16(countPort), &n); err != nil || n != 5 {
		t.Fatalf("the foreign program counted %d (%v); want 5: the slot must not have overwritten it", n, err)
	}
	evs := e.events()
	if last := evs[len(evs)-1]; last.Result != audit.ResultFailed {
		t.Fatalf("last audit record = %+v; want the swap recorded as failed", last)
	}
}
