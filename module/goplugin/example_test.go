package goplugin_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/goplugin"
)

// Build a module as a plugin for the running binary and serve it. Not run:
// it needs the go command and a module source tree.
func Example() {
	ctx := context.Background()
	if _, err := goplugin.Build(ctx, goplugin.BuildOptions{Dir: "./guests/pricing", Out: "pricing.so"}); err != nil {
		log.Fatal(err)
	}
	b, err := goplugin.New(goplugin.Options{RequiredHandlers: []string{"quote"}})
	if err != nil {
		log.Fatal(err)
	}
	reg, err := module.New(module.Options{Backend: b})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close(ctx)
	so, err := os.ReadFile("pricing.so") // verify it first: see package artifact
	if err != nil {
		log.Fatal(err)
	}
	if _, err := reg.Load(ctx, "pricing", module.Source{Version: "v2", Artifact: so}); err != nil {
		log.Fatal(err) // a *module.LoadError naming the check; nothing changed
	}
	out, err := reg.Call(ctx, "pricing", "quote", []byte(`{"item":"apple","qty":12}`))
	fmt.Println(string(out), err)
	fmt.Println(b.Retained().MappedBytes > 0)
}

// The error a load past Options.MaxRetained returns.
func ExampleRetainedError() {
	fmt.Println(&goplugin.RetainedError{Retained: 32, Max: 32})
	// Output: too many plugin versions retained: this process holds 32 plugin versions (MaxRetained 32) and Go cannot unload them (golang/go#20461); a binary upgrade (hotswap upgrade) sheds them; the active version keeps serving
}
