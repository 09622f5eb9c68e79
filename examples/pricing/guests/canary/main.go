// Command canary is a pricing module for canary experiments: it answers
// quotes as v1 does, and at build time it can be told to fail a share of
// them and to work longer per quote:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared \
//	  -ldflags='-X main.label=v3 -X main.failPerMille=60 -X main.spin=20000' \
//	  -o pricing-v3.wasm ./examples/pricing/guests/canary
//
// failPerMille quotes in a thousand fail with a handler error, drawn at
// random per call; spin is the number of rounds of extra arithmetic per
// quote. bench/canary builds its stable, good, bad and slow versions from
// it, and the demo its broken-flaky module.
package main

import (
	"errors"
	"math/rand/v2"
	"strconv"

	"github.com/hotswapgo/hotswap/guest"
)

// Set with -ldflags -X.
var (
	label        = "canary"
	failPerMille = "0"
	spin         = "0"
)

// Quote is a request for a price.
type Quote struct {
	Item string `json:"item"`
	Qty  int    `json:"qty"`
}

// Price answers a Quote.
type Price struct {
	Item       string `json:"item"`
	Qty        int    `json:"qty"`
	UnitCents  int64  `json:"unit_cents"`
	TotalCents int64  `json:"total_cents"`
	Version    string `json:"version"`
	Work       uint64 `json:"work,omitempty"`
}

func init() {
	fail, err := strconv.Atoi(failPerMille)
	if err != nil || fail < 0 || fail > 1000 {
		panic("failPerMille must be an integer from 0 to 1000")
	}
	rounds, err := strconv.Atoi(spin)
	if err != nil || rounds < 0 {
		panic("spin must be a non-negative integer")
	}
	guest.HandleJSON("quote", func(q Quote) (Price, error) {
		if q.Item == "" || q.Qty <= 0 {
			return Price{}, errors.New("item and a positive qty are required")
		}
		if rand.IntN(1000) < fail {
			return Price{}, errors.New("simulated failure")
		}
		unit := unitCents(q.Item)
		return Price{Item: q.Item, Qty: q.Qty, UnitCents: unit, TotalCents: unit * int64(q.Qty), Version: label,
			Work: work(uint64(unit), rounds)}, nil
	})
	guest.SelfTest(func() error {
		if unitCents("apple") <= 0 {
			return errors.New("no price for apples")
		}
		return nil
	})
}

// work runs rounds of a multiply-xorshift mix, standing for the cost of a
// heavier pricing rule.
func work(x uint64, rounds int) uint64 {
	for range rounds {
		x ^= x >> 29
		x *= 0xbf58476d1ce4e5b9
	}
	return x
}

// unitCents derives a stable list price from the item name (as in v1).
func unitCents(item string) int64 {
	var h int64
	for _, c := range item {
		h = h*31 + int64(c)
	}
	if h < 0 {
		h = -h
	}
	return 100 + h%900
}

func main() {}
