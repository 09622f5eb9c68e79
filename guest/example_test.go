//go:build !wasip1

package guest_test

import (
	"fmt"
	"strings"

	"github.com/hotswapgo/hotswap/guest"
)

// A module registers its handlers from init. Outside WebAssembly, Invoke
// runs them in-process, so module code is unit-tested with plain go test.
func ExampleHandle() {
	guest.Handle("shout", func(in []byte) ([]byte, error) {
		return []byte(strings.ToUpper(string(in)) + "!"), nil
	})
	out, err := guest.Invoke("shout", []byte("hello"))
	fmt.Println(string(out), err)
	// Output: HELLO! <nil>
}

func ExampleHandleJSON() {
	type quote struct{ Qty int }
	type price struct{ Total int }
	guest.HandleJSON("quote", func(q quote) (price, error) {
		return price{Total: q.Qty * 250}, nil
	})
	out, err := guest.Invoke("quote", []byte(`{"Qty":4}`))
	fmt.Println(string(out), err)
	// Output: {"Total":1000} <nil>
}

func ExampleKVAdd() {
	guest.KVAdd("quotes", 41)
	fmt.Println(guest.KVAdd("quotes", 1))
	// Output: 42
}
