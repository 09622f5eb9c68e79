package testhost

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// KeyedCalls calls m's quote handler with QuoteRequest from workers
// goroutines, each call with a fresh routing key, until the test ends, and
// returns a function counting the calls made. Errors are the caller's to
// look for in the module's counters: calls here only make traffic.
func KeyedCalls(t testing.TB, m *module.Module, workers int) (calls func() int64) {
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				m.CallKey(ctx, fmt.Sprintf("user-%d-%d", w, k), "quote", QuoteRequest)
				cancel()
				n.Add(1)
			}
		})
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return n.Load
}
