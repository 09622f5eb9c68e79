// Package benchutil holds what the benchmark programs share: building the
// test guests, statistics and the RESULT line.
package benchutil

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hotswapgo/hotswap/internal/guestbuild"
)

// Guest builds (or reuses) a guest module of this repository and returns
// its bytes.
func Guest(pkg, ldflags string) ([]byte, error) { return guestbuild.Bytes(pkg, ldflags) }

// Percentile returns the p-th percentile (0..100) of xs by nearest rank.
func Percentile[T int64 | float64 | time.Duration](xs []T, p float64) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(p / 100 * float64(len(s)))
	return s[min(i, len(s)-1)]
}

// Result prints the final RESULT line.
func Result(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Printf("RESULT %s\n", b)
}

// VmRSS reads the process's resident set size, in bytes, from
// /proc/self/status.
func VmRSS() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}
