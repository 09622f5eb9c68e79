package kernel_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/kernel"
)

// A slot counting UDP datagrams on eth0's ingress, replaced by version 2
// with a health check, then rolled back. Compile-only: it needs root and an
// interface.
func Example_swap() {
	ctx := context.Background()
	trust, _ := artifact.LoadTrustStore("/var/lib/hotswap/trust")
	verifier, _ := artifact.NewVerifier(trust, artifact.VerifierOptions{})
	log, _ := audit.Open("/var/lib/hotswap/audit.log", audit.Options{})
	defer log.Close()

	slot, err := kernel.New(kernel.Options{
		Name: "udpcount", Program: "count_tcx", Attach: kernel.AttachTCXIngress, Interface: "eth0",
		Verifier: verifier, Audit: log,
		Health: func(ctx context.Context, v *kernel.Version) error {
			// Read v.Map("dropped") before and after a window; fail with the numbers.
			select {
			case <-time.After(time.Second):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer slot.Close()
	if _, err := slot.Load(ctx, "count_v1.o"); err != nil { // count_v1.o.manifest beside it
		fmt.Println(err)
		return
	}
	st, err := slot.Load(ctx, "count_v2.o")
	switch {
	case errors.Is(err, kernel.ErrUnhealthy):
		fmt.Println("v2 failed its check; v1 serves again:", err)
	case err != nil:
		fmt.Println("v2 refused; v1 serves:", err)
	default:
		fmt.Println("serving", st.Version)
		slot.Rollback(ctx) // v1 again, in one link update
	}
}
