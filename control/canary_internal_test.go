package control

import (
	"errors"
	"testing"

	"github.com/hotswapgo/hotswap/canary"
)

// FuzzCanaryPolicy: any PolicyHeader decodes into a policy that is valid
// or refused with ErrInvalidPolicy, without a panic.
func FuzzCanaryPolicy(f *testing.F) {
	f.Add(`{"steps":[1,5,25,50],"interval_ms":30000}`)
	f.Add(`{"steps":[50,100],"min_calls":10,"latency_floor_ns":1000}`)
	f.Add(`{"steps":[1e308],"false_abort_rate":-1}`)
	f.Add(`{"error_ratio":1e-320,"latency_ratio":"x"}`)
	f.Add(`{"unknown":1}`)
	f.Fuzz(func(t *testing.T, doc string) {
		var p CanaryPolicy
		if err := decodeStrict(doc, &p); err != nil {
			return
		}
		if err := p.policy().Validate(); err != nil && !errors.Is(err, canary.ErrInvalidPolicy) {
			t.Fatalf("Validate() = %v; want nil or ErrInvalidPolicy", err)
		}
	})
}
