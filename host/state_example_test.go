package host_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// A module's host-kept state survives a restart: it is kept in
// StateDir/state.db and restored when the host starts. Durability says when
// a write is on disk: here before Add returns.
func ExampleOptions_durability() {
	state, _ := os.MkdirTemp("", "host-example")
	defer os.RemoveAll(state)
	open := func() (*host.Host, error) {
		backend, err := wasm.New(wasm.Options{CacheDir: filepath.Join(state, "cache")})
		if err != nil {
			return nil, err
		}
		return host.New(host.Options{Backend: backend, StateDir: state, Durability: host.DurabilitySync})
	}
	h, err := open()
	if err != nil {
		fmt.Println(err)
		return
	}
	h.Module("pricing").State().Add("quotes", 41) // what a guest's kv_add does
	h.Module("pricing").State().Add("quotes", 1)
	h.Close(context.Background())

	h, err = open() // a restart, or a crash: every Add that returned is there
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close(context.Background())
	quotes, _ := h.Module("pricing").State().Get("quotes")
	st := h.StateStatus()
	fmt.Printf("quotes=%s durability=%s file=%s\n", quotes, st.Durability, filepath.Base(st.Path))
	// Output: quotes=42 durability=sync file=state.db
}
