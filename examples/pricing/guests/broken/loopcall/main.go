// Command loopcall is a broken pricing module: it loads fine, but its quote
// handler never returns for a zero quantity. In untrusted mode the watchdog
// stops that call at CallTimeout (ErrTimeout) and discards the instance.
package main

import "github.com/hotswapgo/hotswap/guest"

type quote struct {
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

var spins int

func init() {
	guest.HandleJSON("quote", func(q quote) (map[string]any, error) {
		for q.Qty == 0 {
			spins++
		}
		return map[string]any{"item": q.Item, "qty": q.Qty, "total_cents": 100 * int64(q.Qty), "version": "loopcall"}, nil
	})
}

func main() {}
