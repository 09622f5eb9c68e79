// Command go is the conformance guest in Go. It answers the same handlers
// as the C and Rust conformance guests (see package conformance).
package main

import (
	"errors"
	"strconv"
	"strings"

	"github.com/hotswapgo/hotswap/guest"
)

// Sinks keep the compiler from discarding work.
var (
	spins uint64
	held  [][]byte
)

func init() {
	guest.Handle("echo", func(in []byte) ([]byte, error) { return in, nil })
	guest.Handle("fail", func(in []byte) ([]byte, error) { return nil, errors.New("refused: " + string(in)) })
	guest.Handle("trap", func(in []byte) ([]byte, error) { panic("trapped: " + string(in)) })
	guest.Handle("loop", func([]byte) ([]byte, error) {
		for {
			spins++
		}
	})
	guest.Handle("spin", func([]byte) ([]byte, error) { return strconv.AppendUint(nil, spin(64), 10), nil })
	guest.Handle("recurse", func(in []byte) ([]byte, error) {
		n, err := strconv.ParseUint(string(in), 10, 64)
		if err != nil {
			return nil, errors.New("not a number: " + string(in))
		}
		return strconv.AppendUint(nil, recurse(n), 10), nil
	})
	guest.Handle("grow", func([]byte) ([]byte, error) {
		for {
			b := make([]byte, 1<<20)
			b[0] = 1
			held = append(held, b)
		}
	})
	guest.Handle("count", func([]byte) ([]byte, error) {
		return strconv.AppendInt(nil, guest.KVAdd("count", 1), 10), nil
	})
	guest.Handle("put", func(in []byte) ([]byte, error) {
		k, v, ok := strings.Cut(string(in), "=")
		if !ok {
			return nil, errors.New("want key=value: " + string(in))
		}
		guest.KVSet(k, []byte(v))
		return nil, nil
	})
	guest.Handle("get", func(in []byte) ([]byte, error) {
		v, ok := guest.KVGet(string(in))
		if !ok {
			return nil, errors.New("missing: " + string(in))
		}
		return v, nil
	})
	guest.Handle("del", func(in []byte) ([]byte, error) {
		guest.KVDelete(string(in))
		return nil, nil
	})
	guest.Handle("log", func(in []byte) ([]byte, error) {
		guest.Log(guest.LevelInfo, string(in))
		return nil, nil
	})
	// The self-test fails while the host-kept key "selftest" holds "fail".
	guest.SelfTest(func() error {
		if v, _ := guest.KVGet("selftest"); string(v) == "fail" {
			return errors.New("self-test: answers are wrong")
		}
		return nil
	})
	// migrate records the version it replaces under "migrated".
	guest.Migrate(func(from string) error {
		guest.KVSet("migrated", []byte(from))
		return nil
	})
}

// spin recurses twice per level and never loops: it runs about forever
// with a stack only depth deep.
func spin(depth int) uint64 {
	spins++
	if depth == 0 {
		return 1
	}
	return spin(depth-1)*31 ^ spin(depth-1)
}

// recurse recurses n deep and answers n.
func recurse(n uint64) uint64 {
	if n == 0 {
		return 0
	}
	spins++
	return recurse(n-1) + 1
}

func main() {}
