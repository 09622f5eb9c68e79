package conformance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/module"
)

// FuzzRustQuote: the Rust pricing guest (v3) answers every request exactly
// as the Go guest v2 does, byte for byte but for the version and the
// counter, and refuses what Go's encoding/json refuses with a handler
// error, never a trap. The expected answer is v2's code run here, on the
// request decoded by encoding/json as the Go guest decodes it.
func FuzzRustQuote(f *testing.F) {
	art := guest(f, language{"rust", func() ([]byte, error) {
		return guestbuild.RustBytes("examples/pricing/guests/rust/lib.rs")
	}})
	r := newRegistry(f, nil)
	mustLoad(f, r, "pricing", "v3", art)
	for _, seed := range []string{
		`{"item":"apple","qty":12}`, `{"item":"pear","qty":3}`, `{"ITEM":"fig","Qty":10,"qty":11}`,
		`{"item":"","qty":1}`, `{"item":"apple","qty":0}`, `{"item":"apple","qty":1.5}`, `{"item":7}`,
		`{"item":"a\u00e9\ud83d\ude00<&>\u2028\b\f\u0001","qty":9223372036854775807}`, `null`, `[]`,
		`{"item":"x","qty":-0}`, `{"item":"x","qty":1e2}`, "{\"item\":\"\xff\",\"qty\":2}", `{"item":"x","qty":2}x`,
		`{"item":"x","qty":2,"extra":[[[{}]]]}`, ` {"item" : "x" , "qty" : 10 } `, `{"item":null,"qty":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := r.Call(ctx, "pricing", "quote", in)
		want, wantErr := goQuote(in)
		switch {
		case wantErr != nil:
			if !errors.Is(err, module.ErrGuest) {
				t.Fatalf("quote(%q) = %q, %v; want ErrGuest, as Go answers %v", in, out, err, wantErr)
			}
			return
		case errors.Is(err, module.ErrGuest) && nesting(in) > 128:
			return // the Rust SDK's JSON reader refuses nesting Go accepts (see json::MAX_DEPTH)
		case err != nil:
			t.Fatalf("quote(%q) = %v; want %+v", in, err, want)
		}
		var got goPrice
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("quote(%q) = %q, not a price: %v", in, out, err)
		}
		want.Version, want.Quotes = "v3", got.Quotes
		wantJSON, _ := json.Marshal(want)
		if !bytes.Equal(out, wantJSON) {
			t.Fatalf("quote(%q) = %s; want %s", in, out, wantJSON)
		}
	})
}

// goPrice and goQuote are the Go guest v2's types and rules
// (examples/pricing/guests/v2).
type goPrice struct {
	Item          string `json:"item"`
	Qty           int    `json:"qty"`
	UnitCents     int64  `json:"unit_cents"`
	DiscountCents int64  `json:"discount_cents"`
	TotalCents    int64  `json:"total_cents"`
	Version       string `json:"version"`
	Quotes        int64  `json:"quotes"`
}

func goQuote(in []byte) (goPrice, error) {
	var q struct {
		Item string `json:"item"`
		Qty  int    `json:"qty"`
	}
	if err := json.Unmarshal(in, &q); err != nil {
		return goPrice{}, err
	}
	if q.Item == "" {
		return goPrice{}, errors.New("item is required")
	}
	if q.Qty <= 0 {
		return goPrice{}, errors.New("qty must be positive")
	}
	var h int64
	for _, c := range q.Item {
		h = h*31 + int64(c)
	}
	if h < 0 {
		h = -h
	}
	unit := 100 + h%900
	p := goPrice{Item: q.Item, Qty: q.Qty, UnitCents: unit, TotalCents: unit * int64(q.Qty)}
	if q.Qty >= 10 {
		p.DiscountCents = p.TotalCents / 10
		p.TotalCents -= p.DiscountCents
	}
	return p, nil
}

// nesting returns the deepest nesting of brackets in in, strings aside.
func nesting(in []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range in {
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == '[' || c == '{'):
			depth++
			deepest = max(deepest, depth)
		case !inString && (c == ']' || c == '}'):
			depth--
		}
	}
	return deepest
}
