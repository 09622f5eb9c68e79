package wasm

import (
	"fmt"
	"os"
	"testing"
)

// testCacheDir is the compilation cache the tests of this package share, so
// that compiled code is reused across tests, as in production. TestMain
// creates it and removes it.
var testCacheDir string

// SharedTestCacheDir returns testCacheDir to the package's external tests.
func SharedTestCacheDir() string { return testCacheDir }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hotswap-wasm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	testCacheDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
