// Command v1 is version 1 of the pricing module: list prices, no discount.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o pricing-v1.wasm ./examples/pricing/guests/v1
package main

import (
	"errors"

	"github.com/hotswapgo/hotswap/guest"
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
	// Quotes counts every quote served by any version: it lives in the
	// host's state, so it survives swaps.
	Quotes int64 `json:"quotes"`
}

func init() {
	guest.HandleJSON("quote", func(q Quote) (Price, error) {
		p, err := price(q)
		if err != nil {
			return Price{}, err
		}
		p.Quotes = guest.KVAdd("quotes", 1)
		return p, nil
	})
	guest.SelfTest(func() error {
		p, err := price(Quote{Item: "apple", Qty: 3})
		if err != nil || p.TotalCents != 3*p.UnitCents || p.UnitCents <= 0 {
			return errors.New("quote for 3 apples is wrong")
		}
		return nil
	})
}

func price(q Quote) (Price, error) {
	if q.Item == "" {
		return Price{}, errors.New("item is required")
	}
	if q.Qty <= 0 {
		return Price{}, errors.New("qty must be positive")
	}
	unit := unitCents(q.Item)
	return Price{Item: q.Item, Qty: q.Qty, UnitCents: unit, TotalCents: unit * int64(q.Qty), Version: "v1"}, nil
}

// unitCents derives a stable list price from the item name.
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
