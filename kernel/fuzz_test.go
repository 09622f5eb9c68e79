package kernel

import (
	"errors"
	"testing"

	"github.com/hotswapgo/hotswap/examples/bpfcount"
)

// FuzzInspect feeds hostile objects to the part of a load that reads them
// before anything reaches the kernel: it must refuse with a *LoadError,
// never panic or hang.
func FuzzInspect(f *testing.F) {
	for _, obj := range [][]byte{bpfcount.V1, bpfcount.Socket, bpfcount.XDPOnly, []byte("\x7fELF")} {
		f.Add(obj)
	}
	opts := Options{Name: "udpcount", Program: bpfcount.ProgramTCX, Attach: AttachTCXIngress}
	f.Fuzz(func(t *testing.T, object []byte) {
		spec, ps, err := inspect("fuzz.o", opts, object)
		if err != nil {
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("inspect() = %v; want a *LoadError", err)
			}
			return
		}
		if spec == nil || ps == nil || ps.Name != bpfcount.ProgramTCX {
			t.Fatalf("inspect() accepted an object without program %s", bpfcount.ProgramTCX)
		}
	})
}
