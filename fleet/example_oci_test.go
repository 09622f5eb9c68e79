package fleet_test

import (
	"context"
	"fmt"
	"log"

	"github.com/hotswapgo/hotswap/fleet"
)

// A signed artifact goes to a registry once; the spec PushOCI returns is
// what a group's desired state pins, and what each agent fetches and
// verifies. Compile-only: it needs a registry.
func ExampleSource_PushOCI() {
	ctx := context.Background()
	var src fleet.Source // anonymous; plain HTTP to a loopback registry only
	m, err := src.PushOCI(ctx, "pricing-v2.wasm", "oci://127.0.0.1:5000/team/pricing:v2", false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.URL, m.Digest, m.Version)

	f, err := src.Fetch(ctx, m, 32<<20) // payload checked against m.Digest
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(f.Payload), f.Manifest != nil)
}
