package module_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/hotswapgo/hotswap/module"
)

// goBackend is a toy Backend whose "artifacts" are greetings: enough to show
// the registry's contract. Real services use module/wasm.
type goBackend struct{}

func (goBackend) Prepare(_ context.Context, s module.Spec) (module.Code, error) {
	if len(s.Artifact) == 0 {
		return nil, module.Reject("selftest", errors.New("empty greeting"))
	}
	return greeter(s.Artifact), nil
}

func (goBackend) Close(context.Context) error { return nil }

type greeter []byte

func (g greeter) AppendCall(_ context.Context, dst []byte, _ string, in []byte) ([]byte, error) {
	return append(append(append(dst, g...), ", "...), in...), nil
}
func (greeter) Migrate(context.Context, string) error { return nil }
func (greeter) Stats() module.CodeStats               { return module.CodeStats{} }
func (greeter) Close(context.Context) error           { return nil }

func Example() {
	ctx := context.Background()
	reg, _ := module.New(module.Options{Backend: goBackend{}})
	defer reg.Close(ctx)

	reg.Load(ctx, "greet", module.Source{Version: "v1", Artifact: []byte("Hello")})
	out, _ := reg.Call(ctx, "greet", "hi", []byte("world"))
	fmt.Println(string(out))

	reg.Load(ctx, "greet", module.Source{Version: "v2", Artifact: []byte("Bonjour")})
	out, _ = reg.Call(ctx, "greet", "hi", []byte("world"))
	fmt.Println(string(out))

	_, err := reg.Load(ctx, "greet", module.Source{Version: "v3"}) // refused: v2 keeps serving
	fmt.Println(err, errors.Is(err, module.ErrRejected))

	reg.Rollback(ctx, "greet")
	out, _ = reg.Call(ctx, "greet", "hi", []byte("world"))
	fmt.Println(string(out))
	// Output:
	// Hello, world
	// Bonjour, world
	// load greet@v3: selftest check failed: empty greeting true
	// Hello, world
}
