package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hotswapgo/hotswap/artifact"
)

// Version is one version of a slot's program, loaded into the kernel with
// its maps. Its methods are safe for concurrent use; the maps and program
// belong to the slot, which closes them.
type Version struct {
	manifest artifact.Manifest
	signed   bool
	coll     *ebpf.Collection
	prog     *ebpf.Program
	id       ebpf.ProgramID
	loadedAt time.Time
	switched time.Duration // how long the link update to this version took
}

// Manifest returns the verified manifest the version was loaded from.
func (v *Version) Manifest() artifact.Manifest { return v.manifest }

// Map returns the version's map of that name, nil if it has none. Maps
// carried over from the version it replaced are the same kernel objects.
func (v *Version) Map(name string) *ebpf.Map { return v.coll.Maps[name] }

func (v *Version) status() VersionStatus {
	return VersionStatus{Version: v.manifest.Version, Digest: v.manifest.Digest.Hex(), Signed: v.signed,
		ProgramID: uint32(v.id), LoadedAt: v.loadedAt, Switch: v.switched}
}

func (v *Version) close() { v.coll.Close() }

// carried reports whether a map of this name carries state from version to
// version. The sections the compiler makes for global variables (.rodata,
// .data, .bss, .kconfig and their named variants) belong to one build.
func carried(name string) bool { return !strings.HasPrefix(name, ".") }

// prepare reads a verified object and loads it into the kernel with the
// active version's maps, checking what the slot needs on the way. It
// touches nothing that serves.
func (s *Slot) prepare(label string, vd *artifact.Verified) (*Version, error) {
	refuse := func(check Check, err error) error {
		return &LoadError{Artifact: label, Slot: s.opts.Name, Check: check, Err: err}
	}
	spec, ps, err := inspect(label, s.opts, vd.Payload)
	if err != nil {
		return nil, err
	}
	// Load only the slot's program: others in the object are not ours to
	// verify or keep.
	spec.Programs = map[string]*ebpf.ProgramSpec{s.opts.Program: ps}
	replace := make(map[string]*ebpf.Map)
	if s.cur != nil {
		for name, m := range s.cur.coll.Maps {
			if !carried(name) {
				continue
			}
			ms, ok := spec.Maps[name]
			if !ok {
				return nil, refuse(CheckMaps, fmt.Errorf("%w: the serving version keeps state in map %s; the object has %s",
					ErrMissingMap, name, names(spec.Maps)))
			}
			if err := compatible(name, m, ms); err != nil {
				return nil, refuse(CheckMaps, err)
			}
			replace[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replace})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			log := ve.Log
			if len(log) > verifierLogTail {
				log = log[len(log)-verifierLogTail:]
			}
			return nil, &LoadError{Artifact: label, Slot: s.opts.Name, Check: CheckVerifier, Err: err, VerifierLog: log}
		}
		return nil, refuse(CheckLoad, err)
	}
	v := &Version{manifest: vd.Manifest, signed: vd.Signed, coll: coll, prog: coll.Programs[s.opts.Program], loadedAt: time.Now()}
	if info, err := v.prog.Info(); err == nil {
		v.id, _ = info.ID()
	}
	return v, nil
}

// compatible reports how ms differs from the live map m, as a
// *MapSchemaError naming the first field that differs.
func compatible(name string, m *ebpf.Map, ms *ebpf.MapSpec) error {
	differ := func(field string, old, new any) error {
		return &MapSchemaError{Map: name, Field: field, Old: fmt.Sprint(old), New: fmt.Sprint(new)}
	}
	switch {
	case m.Type() != ms.Type:
		return differ("type", m.Type(), ms.Type)
	case m.KeySize() != ms.KeySize:
		return differ("key_size", m.KeySize(), ms.KeySize)
	case m.ValueSize() != ms.ValueSize:
		return differ("value_size", m.ValueSize(), ms.ValueSize)
	case m.MaxEntries() != ms.MaxEntries:
		return differ("max_entries", m.MaxEntries(), ms.MaxEntries)
	case m.Flags() != ms.Flags:
		return differ("flags", fmt.Sprintf("%#x", m.Flags()), fmt.Sprintf("%#x", ms.Flags))
	}
	return nil
}

// inspect reads an object and finds the program opts names, of the type
// opts.Attach needs. It only parses: nothing reaches the kernel.
func inspect(label string, opts Options, object []byte) (*ebpf.CollectionSpec, *ebpf.ProgramSpec, error) {
	refuse := func(check Check, err error) error {
		return &LoadError{Artifact: label, Slot: opts.Name, Check: check, Err: err}
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(object))
	if err != nil {
		return nil, nil, refuse(CheckObject, err)
	}
	ps, ok := spec.Programs[opts.Program]
	if !ok {
		return nil, nil, refuse(CheckProgram, fmt.Errorf("no program %q; the object has %s", opts.Program, names(spec.Programs)))
	}
	pt, at := opts.Attach.types()
	if ps.Type != pt || (ps.AttachType != at && ps.AttachType != ebpf.AttachNone) {
		return nil, nil, refuse(CheckType, fmt.Errorf("program %s is %v/%v (section %q), %s needs %v/%v",
			ps.Name, ps.Type, ps.AttachType, ps.SectionName, opts.Attach, pt, at))
	}
	return spec, ps, nil
}

func names[V any](m map[string]V) string {
	if len(m) == 0 {
		return "none"
	}
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}
