package host

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/hotswapgo/hotswap/artifact"
)

// BinaryStatus names the binary this process runs.
type BinaryStatus struct {
	// Digest is the hex sha256 of the running executable, read through
	// /proc/self/exe: the file this process was started from, even if its
	// path was replaced since. Empty if it could not be read (Error says
	// why).
	Digest string
	// Version is the version label of a signed manifest with that digest:
	// in the store (a binary started by an upgrade runs from there), or
	// beside the executable. Empty when there is none.
	Version string
	Error   string
}

// binary returns the running binary's status, computed once: the file
// cannot change under a running process (exec makes it busy), so its
// digest is this process's for life.
func (h *Host) binary() BinaryStatus {
	h.proc.binaryOnce.Do(func() { h.proc.binary = h.readBinary() })
	return h.proc.binary
}

func (h *Host) readBinary() BinaryStatus {
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		exe, xerr := os.Executable()
		if xerr != nil {
			return BinaryStatus{Error: fmt.Sprintf("find executable: %v", err)}
		}
		if f, err = os.Open(exe); err != nil {
			return BinaryStatus{Error: fmt.Sprintf("read executable: %v", err)}
		}
	}
	defer f.Close()
	hash := sha256.New()
	if _, err := io.Copy(hash, f); err != nil {
		return BinaryStatus{Error: fmt.Sprintf("read executable: %v", err)}
	}
	var d artifact.Digest
	copy(d[:], hash.Sum(nil))
	st := BinaryStatus{Digest: d.Hex()}
	if entries, err := h.store.Lookup(d); err == nil {
		for _, e := range entries {
			if e.Manifest.Kind == artifact.KindBinary {
				st.Version = e.Manifest.Version
				return st
			}
		}
	}
	if exe, err := os.Executable(); err == nil {
		if data, err := os.ReadFile(artifact.ManifestPath(exe)); err == nil {
			if sm, err := artifact.ParseManifest(data); err == nil && sm.Manifest.Kind == artifact.KindBinary && sm.Manifest.Digest == d {
				st.Version = sm.Manifest.Version
			}
		}
	}
	return st
}
