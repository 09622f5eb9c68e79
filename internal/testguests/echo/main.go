// Command echo is the guest the registry's tests and benchmarks run. Build
// variants set its behaviour with -ldflags -X:
//
//	main.version       what the "version" handler answers (default "dev")
//	main.selfTest      "fail" makes the self-test fail
//	main.migrateResult "fail" makes the migrate hook fail
package main

import (
	"errors"
	"strconv"

	"github.com/hotswapgo/hotswap/guest"
)

var (
	version       = "dev"
	selfTest      = "pass"
	migrateResult = "pass"
)

var sink []byte

func init() {
	guest.Handle("echo", func(in []byte) ([]byte, error) { return in, nil })
	guest.Handle("version", func([]byte) ([]byte, error) { return []byte(version), nil })
	// alloc allocates 256 KiB per call and keeps only the latest: garbage
	// the guest's collector must reclaim.
	guest.Handle("alloc", func(in []byte) ([]byte, error) {
		sink = make([]byte, 256<<10)
		sink[len(in)%len(sink)] = 1
		return in, nil
	})
	// wait spins until the host-kept key named by the input exists, then
	// answers with the version: a call that stays in flight as long as the
	// test wants.
	guest.Handle("wait", func(in []byte) ([]byte, error) {
		for {
			if _, ok := guest.KVGet(string(in)); ok {
				return []byte(version), nil
			}
		}
	})
	guest.Handle("count", func([]byte) ([]byte, error) {
		return strconv.AppendInt(nil, guest.KVAdd("count", 1), 10), nil
	})
	guest.Handle("fail", func(in []byte) ([]byte, error) { return nil, errors.New("refused: " + string(in)) })
	guest.Handle("panic", func(in []byte) ([]byte, error) { panic("handler panicked: " + string(in)) })
	guest.Handle("loop", func([]byte) ([]byte, error) {
		for {
		}
	})
	// recurse recurses as deep as its input says and answers the depth.
	guest.Handle("recurse", func(in []byte) ([]byte, error) {
		n, err := strconv.Atoi(string(in))
		return strconv.AppendInt(nil, int64(depth(n)), 10), err
	})
	guest.Handle("big", func(in []byte) ([]byte, error) {
		n, err := strconv.Atoi(string(in))
		return make([]byte, n), err
	})
	guest.SelfTest(func() error {
		if selfTest == "fail" {
			return errors.New("self-test: answers are wrong")
		}
		return nil
	})
	guest.Migrate(func(from string) error {
		if migrateResult == "fail" {
			return errors.New("cannot migrate state from " + from)
		}
		guest.KVSet("migrated", []byte(from+"->"+version))
		return nil
	})
}

// depth recurses n deep, through a frame of typical size, and returns n.
func depth(n int) int {
	var frame [8]int
	frame[n%8] = n
	if n <= 0 {
		return frame[0]
	}
	return depth(n-1) + 1 + frame[(n+1)%8]*0
}

func main() {}
