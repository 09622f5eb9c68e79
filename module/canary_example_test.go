package module_test

import (
	"context"
	"fmt"

	"github.com/hotswapgo/hotswap/module"
)

// A canary serves a share of the calls beside the active version: a call
// with a routing key sticks to one version, and widening keeps the keys
// that were in.
func ExamplePrepared_Canary() {
	ctx := context.Background()
	reg, _ := module.New(module.Options{Backend: goBackend{}})
	defer reg.Close(ctx)
	reg.Load(ctx, "greet", module.Source{Version: "v1", Artifact: []byte("Hello")})

	p, _ := reg.Prepare(ctx, "greet", module.Source{Version: "v2", Artifact: []byte("Bonjour")})
	c, _ := p.Canary(0.10) // v2 serves 10% of the calls
	onCanary := func() (n int) {
		for i := range 1000 {
			out, _ := reg.Module("greet").CallKey(ctx, fmt.Sprint("user-", i), "hi", []byte("world"))
			if string(out) == "Bonjour, world" {
				n++
			}
		}
		return n
	}
	fmt.Println("users on v2 at 10%:", onCanary())
	c.SetWeight(0.50)
	fmt.Println("users on v2 at 50%:", onCanary())

	_, err := reg.Load(ctx, "greet", module.Source{Version: "v3", Artifact: []byte("Hallo")})
	fmt.Println(err)

	c.Promote(ctx) // the ordinary activation: v1 stays warm as the previous version
	out, _ := reg.Call(ctx, "greet", "hi", []byte("world"))
	fmt.Println(string(out))
	// Output:
	// users on v2 at 10%: 84
	// users on v2 at 50%: 485
	// load greet@v3: greet@v2 is under canary (promote or abort it first)
	// Bonjour, world
}
