package audit_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/audit"
)

func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "audit-example")
	defer os.RemoveAll(dir)

	log, err := audit.Open(filepath.Join(dir, "audit.log"), audit.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer log.Close()

	at := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	swap := audit.Event{Time: at, Actor: audit.PeerActor(1000, 4242), Action: audit.ActionSwap,
		Target: "pricing", From: "sha256:aaaa", To: "sha256:bbbb", Result: audit.ResultOK}
	if err := log.Record(ctx, swap); err != nil {
		fmt.Println("refusing the swap:", err) // nothing unaudited runs
		return
	}
	refused := audit.Event{Time: at.Add(time.Minute), Actor: "cli", Action: audit.ActionLoad,
		Target: "pricing", To: "sha256:cccc", Result: audit.ResultRefused,
		Error: "artifact pricing.wasm refused: signature check failed"}
	if err := log.Record(ctx, refused); err != nil {
		fmt.Println(err)
		return
	}

	history, _ := log.Read(ctx, audit.Filter{Target: "pricing"})
	for _, ev := range history {
		fmt.Println(ev.Time.Format(time.TimeOnly), ev.Actor, ev.Action, ev.Result, ev.Error)
	}
	// Output:
	// 15:05:05 cli load refused artifact pricing.wasm refused: signature check failed
	// 15:04:05 uid=1000 pid=4242 swap ok
}
