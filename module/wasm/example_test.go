package wasm_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm"
)

func Example() {
	ctx := context.Background()
	// A module built with: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared
	code, err := guestbuild.Bytes("./internal/testguests/echo", "-X main.version=v1")
	if err != nil {
		log.Fatal(err)
	}

	// Compiled code is cached in a directory only this user may write;
	// a service keeps it in its state directory.
	state, err := os.MkdirTemp("", "example-state-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(state)
	backend, err := wasm.New(wasm.Options{
		CacheDir: filepath.Join(state, "cache", "wasm"),
		Modules: map[string]wasm.ModuleConfig{
			"echo": {
				Grants:      []wasm.Capability{wasm.CapKV}, // host-kept state
				CallTimeout: 100 * time.Millisecond,        // runaway calls are stopped
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	reg, _ := module.New(module.Options{Backend: backend})
	defer reg.Close(ctx)

	if _, err := reg.Load(ctx, "echo", module.Source{Version: "v1", Artifact: code}); err != nil {
		log.Fatal(err)
	}
	out, _ := reg.Call(ctx, "echo", "echo", []byte("hello"))
	fmt.Println(string(out))

	_, err = reg.Call(ctx, "echo", "loop", nil) // never returns by itself
	fmt.Println(err)
	// Output:
	// hello
	// call echo@v1 loop: guest ran past its deadline: stopped by the watchdog
}
