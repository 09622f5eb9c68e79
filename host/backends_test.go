package host_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
)

// TestGoPluginRefusedWithoutPlugins: a host without Options.Plugins refuses
// a signed Go plugin at verification, names the kind, and audits it; the
// payload never reaches a backend.
func TestGoPluginRefusedWithoutPlugins(t *testing.T) {
	f := newFixture(t)
	h := f.open(t, hostOptions{})
	so := f.signed(t, f.trusted, "pricing.so", []byte("\x7fELF not really a plugin"), artifact.Manifest{Version: "v1", Kind: artifact.KindGoPlugin})
	_, err := h.LoadFile(context.Background(), "pricing", so)
	if !errors.Is(err, artifact.ErrKindMismatch) {
		t.Fatalf("LoadFile(a Go plugin) = %v; want ErrKindMismatch", err)
	}
	if _, ok := h.Retained(); ok {
		t.Errorf("Retained() reports plugins for a host that runs none")
	}
	events, err := h.History(context.Background(), audit.Filter{})
	if err != nil || len(events) == 0 || events[0].Result != audit.ResultRefused {
		t.Errorf("History() = %+v, %v; want the refusal first", events, err)
	}
}
