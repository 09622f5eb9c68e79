// Command trapinit is a broken pricing module: it panics while initializing.
// The host refuses it at load (check "init", ErrInitFailed) with the panic
// message; the version that was serving keeps serving.
package main

import "github.com/hotswapgo/hotswap/guest"

var table map[string]int64

func init() {
	guest.HandleJSON("quote", func(struct{}) (int64, error) { return 0, nil })
	if table == nil {
		panic("pricing table missing")
	}
}

func main() {}
