package control_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// A service serves the control API of its host on the default socket.
func Example_serve() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "hotswap-example")
	defer os.RemoveAll(dir)
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(dir, "cache")})
	if err != nil {
		log.Fatal(err)
	}
	h, err := host.New(host.Options{Backend: b, StateDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close(ctx)

	socket := filepath.Join(dir, "hotswap.sock") // a service uses control.DefaultSocketPath()
	ln, err := control.Listen(ctx, h, socket)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := control.New(h, control.Options{})
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Shutdown(ctx)

	st, err := control.NewClient(socket).Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.OK, st.TrustMode, st.Process.Generation, len(st.Modules))
	// Output: true enforce 1 0
}

// A caller branches on the kind of a failed operation and shows its
// message, which says what still serves.
func ExampleError() {
	var err error = &control.Error{Op: "load pricing", Kind: control.KindRejected, Check: "init",
		Message: "pricing@v3: init check failed: panic: pricing table missing", Serving: "pricing@v2"}
	var ce *control.Error
	if errors.As(err, &ce) && errors.Is(err, control.ErrRejected) {
		fmt.Println("failed check:", ce.Check)
	}
	fmt.Println(err)
	// Output:
	// failed check: init
	// load pricing refused: pricing@v3: init check failed: panic: pricing table missing; pricing@v2 keeps serving
}
