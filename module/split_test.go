package module_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// startSplit loads v1 of module "m" in r, prepares v2 (artifact tells the
// fake backend how it differs) and splits it in with salt at weight w.
func startSplit(t *testing.T, r *module.Registry, artifact, salt string, w float64) *module.Canary {
	t.Helper()
	mustLoad(t, r, "v1", "")
	p, err := r.Prepare(context.Background(), "m", module.Source{Version: "v2", Artifact: []byte(artifact)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Split(salt, w)
	if err != nil {
		t.Fatalf("Split(%q, %v) = %v", salt, w, err)
	}
	return c
}

// TestSplitSameSaltSameRoute: two registries (two processes) that split
// the same module with the same salt send every key to the same version,
// even when the B versions' artifacts differ; the share is within a point
// of the weight; a weight change moves keys only from A to B; another salt
// picks other keys.
func TestSplitSameSaltSameRoute(t *testing.T) {
	a := newTestRegistry(t, &fakeBackend{}, time.Second)
	b := newTestRegistry(t, &fakeBackend{}, time.Second)
	other := newTestRegistry(t, &fakeBackend{}, time.Second)
	ca := startSplit(t, a, "", "group/m/sha256:b", 0.2)
	cb := startSplit(t, b, "different bytes, different digest", "group/m/sha256:b", 0.2)
	startSplit(t, other, "", "group/m/sha256:c", 0.2)
	const keys = 100000
	onB := make([]bool, keys)
	for _, w := range []float64{0.2, 0.3, 0.75} {
		for _, c := range []*module.Canary{ca, cb} {
			if err := c.SetWeight(w); err != nil {
				t.Fatalf("SetWeight(%v) = %v", w, err)
			}
		}
		n, differ := 0, 0
		for k := range keys {
			key := fmt.Sprintf("user-%d", k)
			va, vb := callKey(t, a.Module("m"), key), callKey(t, b.Module("m"), key)
			if va != vb {
				t.Fatalf("weight %v: key %s went to %s on one instance and %s on the other", w, key, va, vb)
			}
			if w == 0.2 && callKey(t, other.Module("m"), key) != va {
				differ++
			}
			if onB[k] && va != "v2" {
				t.Fatalf("weight %v: key %s went back to A from B", w, key)
			}
			onB[k] = va == "v2"
			if onB[k] {
				n++
			}
		}
		if share := float64(n) / keys; math.Abs(share-w) > 0.01 {
			t.Errorf("weight %v: %.4f of the keys on B; want within ±0.01", w, share)
		}
		if w == 0.2 && differ < keys/10 {
			t.Errorf("another salt routed all but %d of %d keys alike; want an independent split", differ, keys)
		}
	}
	// 0 and 1 are all A and all B.
	for _, tc := range []struct {
		w    float64
		want string
	}{{0, "v1"}, {1, "v2"}} {
		ca.SetWeight(tc.w)
		for k := range 1000 {
			if v := callKey(t, a.Module("m"), fmt.Sprintf("user-%d", k)); v != tc.want {
				t.Fatalf("weight %v: key user-%d went to %s; want %s", tc.w, k, v, tc.want)
			}
		}
	}
	// Ending the split leaves A serving everything.
	ca.Abort()
	if v := callKey(t, a.Module("m"), "user-1"); v != "v1" {
		t.Errorf("after Abort, a call went to %s; want v1", v)
	}
}
