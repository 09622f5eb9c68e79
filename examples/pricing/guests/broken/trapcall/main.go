// Command trapcall is a broken pricing module: it loads fine, but its quote
// handler indexes past the end of a slice for quantities above 3. That call
// fails with ErrTrapped and the panic message; its instance is discarded and
// the next call is served by a fresh one.
package main

import "github.com/hotswapgo/hotswap/guest"

type quote struct {
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

var tiers = []int64{100, 95, 90}

func init() {
	guest.HandleJSON("quote", func(q quote) (map[string]any, error) {
		unit := tiers[q.Qty-1]
		return map[string]any{"item": q.Item, "qty": q.Qty, "total_cents": unit * int64(q.Qty), "version": "trapcall"}, nil
	})
}

func main() {}
