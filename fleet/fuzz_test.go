package fleet

import (
	"testing"
)

// FuzzRecords decodes hostile etcd records of every kind and uses them as
// the agent and the controller do: nothing may panic, and a rollout record
// that passes its check yields members within its list.
func FuzzRecords(f *testing.F) {
	f.Add([]byte(`{"spec":{"modules":{"pricing":{"version":"v1","digest":"sha256:` + zeros + `","url":"file:///a"}}},"waves":["1","10%","100%"]}`))
	f.Add([]byte(`{"revision":3,"phase":"running","members":["a","b"],"sizes":[1,2],"wave":1}`))
	f.Add([]byte(`{"revision":3,"phase":"running","members":["a"],"sizes":[5],"wave":-1}`))
	f.Add([]byte(`{"waves":["NaN%","1e400","0"]}`))
	f.Add([]byte(`{"spec":{"binary":{"version":"2","digest":"` + zeros + `","url":"https://x/svc"}}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if d, err := decode[Desired]("desired", raw); err == nil {
			if d.Spec.Validate() == nil {
				_ = d.Spec.ID()
			}
			if sizes, err := waveSizes(d.Waves, 50); err == nil {
				prev := 0
				for _, n := range sizes {
					if n <= prev || n > 50 {
						t.Fatalf("waveSizes(%q, 50) = %v; want growing sizes up to 50", d.Waves, sizes)
					}
					prev = n
				}
				if len(sizes) == 0 || sizes[len(sizes)-1] != 50 {
					t.Fatalf("waveSizes(%q, 50) = %v; want the last wave to cover all 50", d.Waves, sizes)
				}
			}
		}
		if r, err := decode[Rollout]("rollout", raw); err == nil {
			if got := r.Touched(); len(got) > len(r.Members) {
				t.Fatalf("Touched() = %d members of %d", len(got), len(r.Members))
			}
		}
		if a, err := decode[Assignment]("target", raw); err == nil && a.Spec.Validate() == nil {
			for _, m := range a.Spec.Modules {
				if _, err := parseDigest(m.Digest); err != nil {
					t.Fatalf("a valid spec holds digest %q: %v", m.Digest, err)
				}
			}
			if b := a.Spec.Binary; b != nil {
				if _, err := parseDigest(b.Digest); err != nil {
					t.Fatalf("a valid spec holds binary digest %q: %v", b.Digest, err)
				}
			}
		}
		if ap, err := decode[Applied]("applied", raw); err == nil {
			_ = ap.Failure()
		}
	})
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"
