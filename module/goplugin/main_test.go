package goplugin_test

import (
	"os"
	"testing"

	"github.com/hotswapgo/hotswap/internal/testhost"
)

// TestMain removes the scratch directories of the shared test set-up (built
// WebAssembly guests, compiled code) when the tests end.
func TestMain(m *testing.M) { os.Exit(testhost.Main(m)) }
