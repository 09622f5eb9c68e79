package host_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/module/wasm"
	"github.com/hotswapgo/hotswap/upgrade"
)

// A service embeds a Host: it restores the modules that served before a
// restart, loads signed artifacts, calls its modules, rolls back and
// upgrades its own binary, every change verified and audited.
// (Compile-only: it serves HTTP until stopped.)
func Example() {
	ctx := context.Background()
	backend, err := wasm.New(wasm.Options{Modules: map[string]wasm.ModuleConfig{
		"pricing": {Grants: []wasm.Capability{wasm.CapKV}, RequiredHandlers: []string{"quote"}},
	}})
	if err != nil {
		log.Fatal(err)
	}
	// StateDir holds trust/ (the public keys of the signers), store/ and
	// audit.log; add a key with artifact.WritePublicKey or hotswap keygen.
	// Service is the name the service's binaries are signed with: an
	// upgrade to a binary signed as anything else is refused.
	h, err := host.New(host.Options{Backend: backend, Service: "pricing-svc", Upgrade: &upgrade.Options{}})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close(context.Background())

	// After a restart: the current version of each module, else its
	// last-known-good one, verified again.
	if err := h.RestoreModules(ctx); err != nil {
		log.Print(err) // a stored version refused; see h.History
	}
	if h.Module("pricing").Status().Active == nil {
		// pricing.wasm.manifest, written by hotswap sign, lies beside it.
		if _, err := h.LoadFile(host.WithActor(ctx, "boot"), "pricing", "pricing.wasm"); err != nil {
			log.Fatal(err)
		}
	}

	pricing := h.Module("pricing")
	mux := http.NewServeMux()
	mux.HandleFunc("/quote", func(w http.ResponseWriter, r *http.Request) {
		out, err := pricing.Call(r.Context(), "quote", []byte(`{"item":"apple","qty":3}`))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Write(out)
	})
	ln, err := h.Upgrader().Listen(ctx, "tcp", "127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(ln, mux)
	h.Upgrader().Ready()

	// Elsewhere, e.g. from an admin endpoint: swap, roll back, upgrade.
	ctx = host.WithActor(ctx, "ops")
	if _, err := h.LoadFile(ctx, "pricing", "pricing-v2.wasm"); err != nil {
		log.Print(err) // refused: v1 still serves
	}
	if _, err := h.Rollback(ctx, "pricing"); err != nil {
		log.Print(err)
	}
	if res, err := h.Upgrade(ctx, "/usr/local/bin/pricing-svc.new"); err != nil {
		log.Print(err) // this process keeps serving
	} else {
		log.Printf("pid %d took over", res.PID)
	}
	<-h.Upgrader().Exit()
}

// An artifact that fails verification is refused, with an error naming the
// artifact and the failed check, and the refusal is in the audit log.
func ExampleHost_LoadFile() {
	ctx := host.WithActor(context.Background(), "ops")
	state, _ := os.MkdirTemp("", "host-example")
	defer os.RemoveAll(state)
	backend, err := wasm.New(wasm.Options{CacheDir: filepath.Join(state, "cache")})
	if err != nil {
		fmt.Println(err)
		return
	}
	h, err := host.New(host.Options{Backend: backend, StateDir: state})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close(context.Background())

	path := filepath.Join(state, "pricing.wasm")
	os.WriteFile(path, []byte("\x00asm\x01\x00\x00\x00"), 0o644) // no manifest
	_, err = h.LoadFile(ctx, "pricing", path)
	var ve *artifact.VerifyError
	if errors.As(err, &ve) {
		fmt.Printf("trust=%s: refused at the %s check, unsigned: %v\n", h.TrustMode(), ve.Check, errors.Is(err, artifact.ErrUnsigned))
	}

	// Newest first: the refusal, then the record of the change starting,
	// written before any work.
	evs, _ := h.History(ctx, audit.Filter{Target: "pricing"})
	for _, ev := range evs {
		fmt.Println(ev.Actor, ev.Action, ev.Target, ev.Result, ev.Time.Before(time.Now()))
	}
	// Output:
	// trust=enforce: refused at the policy check, unsigned: true
	// ops swap pricing refused true
	// ops swap pricing started true
}
