// Command loopinit is a broken pricing module: its initialization never
// ends. The host stops it at InitTimeout and refuses it (check "init",
// ErrTimeout).
package main

import "github.com/hotswapgo/hotswap/guest"

var spins int

func init() {
	guest.HandleJSON("quote", func(struct{}) (int64, error) { return 0, nil })
	for {
		spins++
	}
}

func main() {}
