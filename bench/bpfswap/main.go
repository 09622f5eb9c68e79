// Command bpfswap measures packet loss while an eBPF program is replaced
// under a UDP flood. It makes two network namespaces joined by a veth pair
// (removed on exit), floods UDP datagrams from one to a socket in the other
// and, in the same run:
//
//   - tcx: a kernel.Slot on the receiving interface's tcx ingress, replaced
//     -tcx-swaps times (1,000), alternating two versions of the demo counter
//     (examples/bpfcount V1 and V3), each signed, verified and loaded with
//     the previous version's maps;
//   - xdp: the same with XDP, -xdp-swaps times (100);
//   - naive: the baseline, -naive-swaps times (50): the two versions loaded
//     once, sharing one map, switched by closing the link and attaching the
//     other program, which is what a tool without link updates does.
//
// Each phase floods its own destination port for as long as its swaps take
// (at least -min-flood), then stops the flood and reads the socket dry.
// delivered is the datagrams the socket received; counted is the programs'
// counter for the port, one map kept across every version of the phase.
// lost = delivered − counted (when positive): datagrams received that no
// version counted. counter_gap = counted − delivered summed over tcx and
// xdp: 0 if the maps carried over and nothing was counted twice. A datagram
// the socket dropped for lack of buffer would be counted but not delivered;
// socket_drops (UDP RcvbufErrors in the receiving namespace) reports them,
// so a non-zero gap can be told apart from a buffer overflow.
//
// swap_us_p50 is the median duration of the BPF_LINK_UPDATE call alone
// (kernel.VersionStatus.Switch); load_ms_p50 the median of the whole
// LoadBytes (verify, load into the kernel, update). For naive,
// gap_us_p50 is the median time between closing the old link and the new
// attach returning.
//
// The whole run is bounded by -max (60s): swaps stop when it passes.
//
//	go run ./bench/bpfswap [-tcx-swaps 1000] [-xdp-swaps 100] [-naive-swaps 50]
//
// The last line is
//
//	RESULT {"tcx":{"swaps":…,"lost":…,"swap_us_p50":…},"xdp":{"swaps":…,"lost":…},"naive":{"swaps":…,"lost":…},"counter_gap":…}
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/bench/internal/benchutil"
	"github.com/hotswapgo/hotswap/examples/bpfcount"
	"github.com/hotswapgo/hotswap/internal/netns"
	"github.com/hotswapgo/hotswap/internal/vethpair"
	"github.com/hotswapgo/hotswap/kernel"
)

type phase struct {
	Swaps       int     `json:"swaps"`
	Sent        int64   `json:"sent"`
	Delivered   int64   `json:"delivered"`
	Counted     int64   `json:"counted"`
	Lost        int64   `json:"lost"`
	SocketDrops int64   `json:"socket_drops"`
	FloodMs     int64   `json:"flood_ms"`
	Kpps        float64 `json:"kpps"`
	SwapUsP50   float64 `json:"swap_us_p50,omitempty"`
	SwapUsP99   float64 `json:"swap_us_p99,omitempty"`
	LoadMsP50   float64 `json:"load_ms_p50,omitempty"`
	GapUsP50    float64 `json:"gap_us_p50,omitempty"`
	gap         int64   // counted − delivered
}

type result struct {
	TCX        phase `json:"tcx"`
	XDP        phase `json:"xdp"`
	Naive      phase `json:"naive"`
	CounterGap int64 `json:"counter_gap"`
}

func main() {
	tcxSwaps := flag.Int("tcx-swaps", 1000, "replacements with the package on tcx")
	xdpSwaps := flag.Int("xdp-swaps", 100, "replacements with the package on XDP")
	naiveSwaps := flag.Int("naive-swaps", 50, "detach+attach replacements (baseline)")
	minFlood := flag.Duration("min-flood", time.Second, "shortest flood per phase")
	maxRun := flag.Duration("max", 60*time.Second, "bound on the whole run")
	flag.Parse()
	if err := run(*tcxSwaps, *xdpSwaps, *naiveSwaps, *minFlood, *maxRun); err != nil {
		log.Fatal(err)
	}
}

func run(tcxSwaps, xdpSwaps, naiveSwaps int, minFlood, maxRun time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), maxRun)
	defer cancel()
	pair, err := vethpair.New(ctx, "hsb")
	if err != nil {
		return err
	}
	defer pair.Close()
	dir, err := os.MkdirTemp("", "bpfswap-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bench{ctx: ctx, pair: pair, minFlood: minFlood}
	if err := b.setupTrust(dir); err != nil {
		return err
	}
	defer b.audit.Close()

	var res result
	if res.TCX, err = b.slotPhase(kernel.AttachTCXIngress, bpfcount.ProgramTCX, 6001, tcxSwaps); err != nil {
		return fmt.Errorf("tcx: %w", err)
	}
	if res.XDP, err = b.slotPhase(kernel.AttachXDP, bpfcount.ProgramXDP, 6002, xdpSwaps); err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	if res.Naive, err = b.naivePhase(6003, naiveSwaps); err != nil {
		return fmt.Errorf("naive: %w", err)
	}
	res.CounterGap = res.TCX.gap + res.XDP.gap
	benchutil.Result(res)
	return nil
}

type bench struct {
	ctx      context.Context
	pair     *vethpair.Pair
	minFlood time.Duration
	signer   *artifact.Signer
	verifier *artifact.Verifier
	audit    *audit.Log
}

func (b *bench) setupTrust(dir string) error {
	priv, err := artifact.GenerateKey(nil)
	if err != nil {
		return err
	}
	if b.signer, err = artifact.NewSigner(priv); err != nil {
		return err
	}
	trust, err := artifact.NewTrustStore(b.signer.PublicKey())
	if err != nil {
		return err
	}
	if b.verifier, err = artifact.NewVerifier(trust, artifact.VerifierOptions{}); err != nil {
		return err
	}
	b.audit, err = audit.Open(filepath.Join(dir, "audit.log"), audit.Options{})
	return err
}

func (b *bench) manifest(object []byte, version string) ([]byte, error) {
	sm, err := b.signer.Sign(artifact.Manifest{Name: "udpcount", Version: version, Kind: artifact.KindBPF,
		Digest: artifact.DigestOf(object), Size: int64(len(object)), Created: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return nil, err
	}
	return sm.Marshal()
}

// slotPhase floods port while a kernel.Slot replaces its program swaps
// times.
func (b *bench) slotPhase(at kernel.Attach, program string, port uint16, swaps int) (phase, error) {
	slot, err := kernel.New(kernel.Options{Name: "udpcount", Program: program, Attach: at,
		Interface: vethpair.ReceiverIf, Netns: b.pair.ReceiverPath(), Verifier: b.verifier, Audit: b.audit})
	if err != nil {
		return phase{}, err
	}
	defer slot.Close()
	objects := [2][]byte{bpfcount.V1, bpfcount.V3}
	var manifests [2][]byte
	for i, obj := range objects {
		if manifests[i], err = b.manifest(obj, strconv.Itoa(2*i+1)); err != nil {
			return phase{}, err
		}
	}
	if _, err := slot.LoadBytes(b.ctx, "v1.o", objects[0], manifests[0]); err != nil {
		return phase{}, err
	}
	var switches, loads []time.Duration
	ph, err := b.flood(port, func() error {
		for i := range swaps {
			if b.ctx.Err() != nil {
				break
			}
			k := (i + 1) % 2
			start := time.Now()
			st, err := slot.LoadBytes(b.ctx, fmt.Sprintf("v%d.o", 2*k+1), objects[k], manifests[k])
			if err != nil {
				return err
			}
			loads = append(loads, time.Since(start))
			switches = append(switches, st.Switch)
		}
		return nil
	}, func() (uint64, error) { return readCounter(slot, port) })
	if err != nil {
		return ph, err
	}
	ph.Swaps = len(switches)
	ph.SwapUsP50 = us(benchutil.Percentile(switches, 50))
	ph.SwapUsP99 = us(benchutil.Percentile(switches, 99))
	ph.LoadMsP50 = float64(benchutil.Percentile(loads, 50)) / 1e6
	return ph, nil
}

func readCounter(slot *kernel.Slot, port uint16) (uint64, error) {
	m, err := slot.Map(bpfcount.PortMap)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	var n uint64
	if err := m.Lookup(port, &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, err
	}
	return n, nil
}

// naivePhase floods port while the program is replaced by closing its
// link and attaching the other version, swaps times.
func (b *bench) naivePhase(port uint16, swaps int) (phase, error) {
	var progs [2]*ebpf.Program
	var shared *ebpf.Map
	for i, obj := range [][]byte{bpfcount.V1, bpfcount.V3} {
		spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
		if err != nil {
			return phase{}, err
		}
		spec.Programs = map[string]*ebpf.ProgramSpec{bpfcount.ProgramTCX: spec.Programs[bpfcount.ProgramTCX]}
		opts := ebpf.CollectionOptions{}
		if shared != nil {
			opts.MapReplacements = map[string]*ebpf.Map{bpfcount.PortMap: shared}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, opts)
		if err != nil {
			return phase{}, err
		}
		defer coll.Close()
		progs[i] = coll.Programs[bpfcount.ProgramTCX]
		if shared == nil {
			shared = coll.Maps[bpfcount.PortMap]
		}
	}
	ifindex, err := receiverIndex(b.pair)
	if err != nil {
		return phase{}, err
	}
	attach := func(p *ebpf.Program) (l link.Link, err error) {
		err = netns.Do(b.pair.ReceiverPath(), func() error {
			l, err = link.AttachTCX(link.TCXOptions{Program: p, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
			return err
		})
		return l, err
	}
	l, err := attach(progs[0])
	if err != nil {
		return phase{}, err
	}
	defer func() { l.Close() }()
	var gaps []time.Duration
	ph, err := b.flood(port, func() error {
		for i := range swaps {
			if b.ctx.Err() != nil {
				break
			}
			start := time.Now()
			l.Close()
			if l, err = attach(progs[(i+1)%2]); err != nil {
				return err
			}
			gaps = append(gaps, time.Since(start))
			// Leave the flood time to refill between swaps, as the
			// package's phases do while they load the next version.
			select {
			case <-time.After(5 * time.Millisecond):
			case <-b.ctx.Done():
			}
		}
		return nil
	}, func() (uint64, error) {
		var n uint64
		if err := shared.Lookup(port, &n); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, err
		}
		return n, nil
	})
	ph.Swaps = len(gaps)
	ph.GapUsP50 = us(benchutil.Percentile(gaps, 50))
	return ph, err
}

func receiverIndex(p *vethpair.Pair) (int, error) {
	var idx int
	err := netns.Do(p.ReceiverPath(), func() error {
		ifc, err := net.InterfaceByName(vethpair.ReceiverIf)
		if err == nil {
			idx = ifc.Index
		}
		return err
	})
	return idx, err
}

// flood sends datagrams to port from the sender's namespace while swap
// runs (and for at least minFlood), then reads the socket dry and reads the
// programs' counter.
func (b *bench) flood(port uint16, swap func() error, counter func() (uint64, error)) (phase, error) {
	rx, err := b.pair.Listen(port)
	if err != nil {
		return phase{}, err
	}
	defer rx.Close()
	if err := forceRcvbuf(rx, 256<<20); err != nil {
		return phase{}, err
	}
	tx, err := b.pair.Dial(port)
	if err != nil {
		return phase{}, err
	}
	defer tx.Close()
	dropsBefore, err := rcvbufErrors(b.pair)
	if err != nil {
		return phase{}, err
	}
	before, err := counter()
	if err != nil {
		return phase{}, err
	}

	var delivered atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // the receiver: reads until the socket stays empty for 300ms after the flood
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := rx.Read(buf); err != nil {
				select {
				case <-stop:
					return
				default:
					continue // a pause in the flood
				}
			}
			delivered.Add(1)
		}
	}()
	var sent atomic.Int64
	wg.Add(1)
	go func() { // the sender
		defer wg.Done()
		msg := make([]byte, 64)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range 64 {
				if _, err := tx.Write(msg); err == nil {
					sent.Add(1)
				}
			}
		}
	}()
	start := time.Now()
	// Let the flood settle before the first swap.
	select {
	case <-time.After(100 * time.Millisecond):
	case <-b.ctx.Done():
	}
	swapErr := swap()
	if rest := b.minFlood - time.Since(start); rest > 0 {
		select {
		case <-time.After(rest):
		case <-b.ctx.Done():
		}
	}
	close(stop)
	floodTime := time.Since(start)
	wg.Wait()
	if swapErr != nil {
		return phase{}, swapErr
	}
	after, err := counter()
	if err != nil {
		return phase{}, err
	}
	dropsAfter, err := rcvbufErrors(b.pair)
	if err != nil {
		return phase{}, err
	}
	ph := phase{Sent: sent.Load(), Delivered: delivered.Load(), Counted: int64(after - before),
		SocketDrops: dropsAfter - dropsBefore, FloodMs: floodTime.Milliseconds()}
	ph.gap = ph.Counted - ph.Delivered
	ph.Lost = max(0, ph.Delivered-ph.Counted)
	ph.Kpps = float64(ph.Delivered) / floodTime.Seconds() / 1e3
	return ph, nil
}

func forceRcvbuf(c *net.UDPConn, size int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	})
	return errors.Join(err, serr)
}

// rcvbufErrors reads UDP RcvbufErrors from /proc/net/snmp in the
// receiver's namespace.
func rcvbufErrors(p *vethpair.Pair) (int64, error) {
	var n int64
	err := netns.Do(p.ReceiverPath(), func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var header []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Udp:" {
				continue
			}
			if header == nil {
				header = fields
				continue
			}
			for i, name := range header {
				if name == "RcvbufErrors" && i < len(fields) {
					n, err = strconv.ParseInt(fields[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Udp RcvbufErrors in /proc/net/snmp")
	})
	return n, err
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
