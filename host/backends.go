package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/module"
)

// backends sends each version to the backend of its artifact's kind:
// WebAssembly to Options.Backend, Go plugins to Options.Plugins. The kind
// comes from the verified manifest and was checked against the payload
// (see check) before the registry sees the payload, so the payload's magic
// number here stands for the manifest's kind.
type backends struct {
	wasm    module.Backend
	plugins module.Backend // nil: goplugin artifacts are refused
}

var (
	wasmMagic = []byte("\x00asm")
	elfMagic  = []byte("\x7fELF")
)

func (b *backends) Prepare(ctx context.Context, spec module.Spec) (module.Code, error) {
	if b.plugins != nil && bytes.HasPrefix(spec.Artifact, elfMagic) {
		return b.plugins.Prepare(ctx, spec)
	}
	return b.wasm.Prepare(ctx, spec)
}

func (b *backends) Close(ctx context.Context) error {
	err := b.wasm.Close(ctx)
	if b.plugins != nil {
		err = errors.Join(err, b.plugins.Close(ctx))
	}
	return err
}

// kind returns the artifact kind a module version must have: wasm, or any
// (checked by check) when plugins are enabled.
func (b *backends) kind() artifact.Kind {
	if b.plugins == nil {
		return artifact.KindWasm
	}
	return ""
}

// check refuses a verified artifact whose kind this host does not run, or
// whose payload is not what its manifest says.
func (b *backends) check(vd *artifact.Verified) error {
	m := vd.Manifest
	var magic []byte
	switch {
	case m.Kind == artifact.KindWasm:
		magic = wasmMagic
	case m.Kind == artifact.KindGoPlugin && b.plugins != nil:
		magic = elfMagic
	case m.Kind == artifact.KindGoPlugin:
		return &artifact.VerifyError{Artifact: m.Name + "@" + m.Version, Check: artifact.CheckKind,
			Err: errors.New("this host runs no Go plugins (Options.Plugins is not set)")}
	default:
		return &artifact.VerifyError{Artifact: m.Name + "@" + m.Version, Check: artifact.CheckKind,
			Err: fmt.Errorf("kind %q is not a module; want %s or %s", m.Kind, artifact.KindWasm, artifact.KindGoPlugin)}
	}
	if !bytes.HasPrefix(vd.Payload, magic) {
		return &artifact.VerifyError{Artifact: m.Name + "@" + m.Version, Check: artifact.CheckKind,
			Err: fmt.Errorf("the manifest says kind %s but the payload does not start like one", m.Kind)}
	}
	return nil
}

// Retained reports the Go plugins the process holds: they stay mapped
// after their versions retire, until a binary upgrade starts a process
// without them. ok is false when the host runs no plugins.
func (h *Host) Retained() (r module.Retained, ok bool) {
	if rt, ok := h.backends.plugins.(module.Retainer); ok {
		return rt.Retained(), true
	}
	return module.Retained{}, false
}

// prepareModule checks that a verified artifact is a module this host runs
// and prepares it as the next version of module name.
func (h *Host) prepareModule(ctx context.Context, name string, vd *artifact.Verified) (*module.Prepared, error) {
	if err := h.backends.check(vd); err != nil {
		return nil, err
	}
	m := vd.Manifest
	return h.reg.Prepare(ctx, name, module.Source{Version: m.Version, Artifact: vd.Payload, Digest: m.Digest.Hex()})
}
