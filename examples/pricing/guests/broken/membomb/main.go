// Command membomb is a broken pricing module: it allocates without bound
// while initializing. The host refuses it when it hits the module's memory
// limit (check "init", ErrMemoryLimit).
package main

import "github.com/hotswapgo/hotswap/guest"

var hoard [][]byte

func init() {
	guest.HandleJSON("quote", func(struct{}) (int64, error) { return 0, nil })
	for {
		b := make([]byte, 1<<20)
		b[0] = 1
		hoard = append(hoard, b)
	}
}

func main() {}
