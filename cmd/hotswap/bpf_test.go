package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/examples/bpfcount"
	"github.com/hotswapgo/hotswap/internal/vethpair"
	"github.com/hotswapgo/hotswap/kernel"
)

func TestBPFLoadStatusRollback(t *testing.T) {
	vethpair.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pair, err := vethpair.New(ctx, "hsc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pair.Close(); err != nil {
			t.Errorf("remove namespaces: %v", err)
		}
	})
	s := newService(t, serviceOptions{})
	slot, err := s.h.AddSlot(kernel.Options{Name: "udpcount", Program: bpfcount.ProgramTCX, Attach: kernel.AttachTCXIngress,
		Interface: vethpair.ReceiverIf, Netns: pair.ReceiverPath()})
	if err != nil {
		t.Fatalf("AddSlot() = %v", err)
	}
	sign := func(file string, object []byte, version string) string {
		return s.f.Sign(t, s.f.Trusted, file, object, artifact.Manifest{Name: "udpcount", Kind: artifact.KindBPF, Version: version})
	}
	v1, v3 := sign("count_v1.o", bpfcount.V1, "1"), sign("count_v3.o", bpfcount.V3, "3")
	bad := sign("count_bad.o", bpfcount.Bad, "4")
	unsigned := s.f.Write(t, "count_unsigned.o", bpfcount.V3)

	if out := mustCtl(t, s.socket, "bpf", "status"); !strings.Contains(out, "udpcount") || !strings.Contains(out, "count_tcx") {
		t.Fatalf("bpf status before a load:\n%s", out)
	}
	if out := mustCtl(t, s.socket, "bpf", "load", "udpcount", v1); !strings.Contains(out, "udpcount@1 serves") {
		t.Fatalf("bpf load v1:\n%s", out)
	}
	out := mustCtl(t, s.socket, "bpf", "load", "udpcount", v3)
	if !strings.Contains(out, "udpcount@3 serves") || !strings.Contains(out, "udpcount@1 is kept loaded for rollback") {
		t.Fatalf("bpf load v3:\n%s", out)
	}

	refusals := []struct {
		path, want string
		kind       error
	}{
		{bad, "verifier check failed", control.ErrRejected},
		{unsigned, "policy", control.ErrRejected},
	}
	for _, r := range refusals {
		_, _, code, err := ctl(t, s.socket, "bpf", "load", "udpcount", r.path)
		if code != 1 || !errors.Is(err, r.kind) || !strings.Contains(err.Error(), r.want) || !strings.Contains(err.Error(), "udpcount@3") {
			t.Errorf("bpf load %s = %v (exit %d); want exit 1, %q, udpcount@3 serving", r.path, err, code, r.want)
		}
	}

	// v3 serves and counts.
	if got, err := pair.RoundTrip(5000, 10); got != 10 {
		t.Fatalf("RoundTrip() = %d, %v; want all 10 datagrams", got, err)
	}
	if n := counter(t, slot, 5000); n != 10 {
		t.Fatalf("counter = %d; want 10", n)
	}

	if out := mustCtl(t, s.socket, "bpf", "rollback", "udpcount"); !strings.Contains(out, "udpcount@1 serves again") {
		t.Fatalf("bpf rollback:\n%s", out)
	}
	if _, _, code, err := ctl(t, s.socket, "bpf", "rollback", "udpcount"); code != 1 || !errors.Is(err, control.ErrNoPrevious) {
		t.Errorf("second bpf rollback = %v (exit %d); want no_previous, exit 1", err, code)
	}
	if _, _, code, err := ctl(t, s.socket, "bpf", "rollback", "nosuchslot"); code != 1 || !errors.Is(err, control.ErrNotFound) {
		t.Errorf("bpf rollback nosuchslot = %v (exit %d); want not_found, exit 1", err, code)
	}

	var st control.BPFStatus
	if err := json.Unmarshal([]byte(mustCtl(t, s.socket, "bpf", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Slots) != 1 || st.Slots[0].Active == nil || st.Slots[0].Active.Version != "1" || st.Slots[0].Previous != nil {
		t.Fatalf("bpf status -o json = %+v; want udpcount at 1 alone", st)
	}
	if n := counter(t, slot, 5000); n != 10 {
		t.Fatalf("after the rollback the counter is %d; want 10 (the map carried over)", n)
	}

	events, err := s.h.History(ctx, audit.Filter{Target: "udpcount"})
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, ev := range events {
		if !strings.HasPrefix(ev.Actor, "uid=") {
			t.Errorf("audit event %+v does not name the peer", ev)
		}
		if ev.Result == audit.ResultRefused {
			refused++
		}
	}
	if refused != 3 { // bad, unsigned, second rollback
		t.Errorf("%d refusals audited; want 3", refused)
	}
}

func counter(t *testing.T, s *kernel.Slot, port uint16) uint64 {
	t.Helper()
	m, err := s.Map(bpfcount.PortMap)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var n uint64
	if err := m.Lookup(port, &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return n
}
