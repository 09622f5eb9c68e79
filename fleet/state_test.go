package fleet_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hotswapgo/hotswap/fleet"
)

// TestSplitSpecValidate: a B version must be pinned, located, weighted
// within 0 to 100, differ from A and come without a canary policy; its
// digest and weight are part of the spec's ID.
func TestSplitSpecValidate(t *testing.T) {
	a := fleet.ModuleSpec{Version: "v1", Digest: "sha256:" + strings.Repeat("a", 64), URL: "file:///a.wasm"}
	b := fleet.SplitSpec{Version: "v2", Digest: "sha256:" + strings.Repeat("b", 64), URL: "file:///b.wasm", Weight: 30}
	with := func(edit func(m *fleet.ModuleSpec)) fleet.Spec {
		m := a
		bb := b
		m.B = &bb
		edit(&m)
		return fleet.Spec{Modules: map[string]fleet.ModuleSpec{"pricing": m}}
	}
	for _, tc := range []struct {
		name string
		spec fleet.Spec
		ok   bool
	}{
		{"valid", with(func(*fleet.ModuleSpec) {}), true},
		{"weight 0", with(func(m *fleet.ModuleSpec) { m.B.Weight = 0 }), true},
		{"weight 100", with(func(m *fleet.ModuleSpec) { m.B.Weight = 100 }), true},
		{"weight above 100", with(func(m *fleet.ModuleSpec) { m.B.Weight = 100.5 }), false},
		{"negative weight", with(func(m *fleet.ModuleSpec) { m.B.Weight = -1 }), false},
		{"bad digest", with(func(m *fleet.ModuleSpec) { m.B.Digest = "sha256:xyz" }), false},
		{"bad URL", with(func(m *fleet.ModuleSpec) { m.B.URL = "ftp://b" }), false},
		{"B is A", with(func(m *fleet.ModuleSpec) { m.B.Digest = a.Digest }), false},
		{"with a canary", with(func(m *fleet.ModuleSpec) { m.Canary = &fleet.CanaryPolicy{} }), false},
	} {
		err := tc.spec.Validate()
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, fleet.ErrInvalid)) {
			t.Errorf("%s: Validate() = %v; want ok %v (else ErrInvalid)", tc.name, err, tc.ok)
		}
	}
	plain := fleet.Spec{Modules: map[string]fleet.ModuleSpec{"pricing": a}}
	ids := map[string]string{
		"no B":      plain.ID(),
		"B at 30%":  with(func(*fleet.ModuleSpec) {}).ID(),
		"B at 60%":  with(func(m *fleet.ModuleSpec) { m.B.Weight = 60 }).ID(),
		"another B": with(func(m *fleet.ModuleSpec) { m.B.Digest = "sha256:" + strings.Repeat("c", 64) }).ID(),
	}
	seen := map[string]string{}
	for what, id := range ids {
		if other, dup := seen[id]; dup {
			t.Errorf("spec ID of %s = that of %s (%s); want them to differ", what, other, id)
		}
		seen[id] = what
	}
	if got := with(func(m *fleet.ModuleSpec) { m.B.URL = "https://elsewhere/b.wasm" }).ID(); got != ids["B at 30%"] {
		t.Errorf("spec ID changed with B's URL only: %s; want %s (the pins name the spec)", got, ids["B at 30%"])
	}
}
