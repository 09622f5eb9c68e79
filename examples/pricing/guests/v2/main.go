// Command v2 is version 2 of the pricing module: 10% off from 10 items on.
// Its migrate hook records the schema version in the host's state.
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o pricing-v2.wasm ./examples/pricing/guests/v2
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
	Item          string `json:"item"`
	Qty           int    `json:"qty"`
	UnitCents     int64  `json:"unit_cents"`
	DiscountCents int64  `json:"discount_cents"`
	TotalCents    int64  `json:"total_cents"`
	Version       string `json:"version"`
	Quotes        int64  `json:"quotes"`
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
		p, err := price(Quote{Item: "apple", Qty: 10})
		if err != nil || p.DiscountCents*10 != p.UnitCents*10 || p.TotalCents != 9*p.UnitCents {
			return errors.New("volume discount for 10 apples is wrong")
		}
		return nil
	})
	guest.Migrate(func(from string) error {
		guest.KVSet("schema", []byte("2"))
		guest.Log(guest.LevelInfo, "pricing v2 active, migrated from "+from)
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
	p := Price{Item: q.Item, Qty: q.Qty, UnitCents: unit, TotalCents: unit * int64(q.Qty), Version: "v2"}
	if q.Qty >= 10 {
		p.DiscountCents = p.TotalCents / 10
		p.TotalCents -= p.DiscountCents
	}
	return p, nil
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
