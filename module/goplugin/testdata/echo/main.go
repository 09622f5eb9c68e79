// Command echo is the plugin the tests of module/goplugin build.
package main

import (
	"errors"
	"strconv"
	"sync/atomic"

	"github.com/hotswapgo/hotswap/guest"
)

// echoes counts the calls of "echo" this build served.
var echoes atomic.Int64

func init() {
	guest.Handle("echo", func(in []byte) ([]byte, error) {
		echoes.Add(1)
		return in, nil
	})
	guest.Handle("echoes", func([]byte) ([]byte, error) { return strconv.AppendInt(nil, echoes.Load(), 10), nil })
	guest.Handle("panic", func(in []byte) ([]byte, error) { panic("boom: " + string(in)) })
	guest.Handle("fail", func(in []byte) ([]byte, error) { return nil, errors.New("refused: " + string(in)) })
	guest.Handle("count", func([]byte) ([]byte, error) { return strconv.AppendInt(nil, guest.KVAdd("count", 1), 10), nil })
	guest.SelfTest(func() error {
		if v, _ := guest.KVGet("fail-selftest"); string(v) == "yes" {
			return errors.New("told to fail by the host's state")
		}
		return nil
	})
	guest.Migrate(func(from string) error {
		guest.KVSet("migrated-from", []byte(from))
		return nil
	})
}

func main() {}
