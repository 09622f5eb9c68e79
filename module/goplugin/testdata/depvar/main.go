// Command depvar is a plugin that uses golang.org/x/sys, which the tests
// build against another version of that module than the host's.
package main

import (
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hotswapgo/hotswap/guest"
)

func init() {
	guest.Handle("pid", func([]byte) ([]byte, error) { return strconv.AppendInt(nil, int64(unix.Getpid()), 10), nil })
}

func main() {}
