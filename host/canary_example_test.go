package host_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/host"
)

// A canary of a signed artifact: verified, stored and prepared as for a
// load, then serving 1%, 5%, 25% and 50% of the calls before it is
// promoted, unless its numbers abort it first. (Compile-only: it needs a
// host serving traffic.)
func ExampleHost_CanaryFile() {
	var h *host.Host // see Example
	ctx := host.WithActor(context.Background(), "deploy")
	st, err := h.CanaryFile(ctx, "pricing", "pricing-v2.wasm", canary.Policy{Interval: 30 * time.Second})
	if err != nil {
		log.Fatal(err) // refused like a load; the active version serves alone
	}
	// Follow it to its end; h.CanaryCommand pauses, freezes, promotes or
	// aborts it meanwhile.
	seq := 0
	for {
		vs, cur, err := h.WatchCanary(ctx, "pricing", st.ID, seq)
		if err != nil {
			log.Fatal(err)
		}
		for _, v := range vs {
			log.Print(v, "; ", v.Window)
			seq = v.Seq
		}
		if cur.State == canary.Promoted || cur.State == canary.Aborted {
			if err := host.CanaryResult(cur); errors.Is(err, canary.ErrAborted) {
				log.Print(err) // the stable version serves every call
			}
			return
		}
	}
}
