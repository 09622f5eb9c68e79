package goplugin

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// maxPanicStack bounds the stack trace a panicking call reports.
const maxPanicStack = 4 << 10

// code is one version served by an open plugin.
type code struct {
	b        *Backend
	lib      *library
	migrate  func(string) error
	prepared time.Duration

	// handlers is the version's handler table; nil once the version is
	// closed, so a call that starts after Close finds nothing to run.
	handlers atomic.Pointer[map[string]func([]byte) ([]byte, error)]
	calls    atomic.Uint64
	failures atomic.Uint64
	trapped  atomic.Uint64
}

// AppendCall runs the handler on the caller's goroutine. A handler that
// panics fails the call with ErrTrapped; the plugin keeps serving. A call
// still running when the version is closed (its drain deadline passed)
// fails with ErrDrained when it returns: native code cannot be stopped.
//
// The handler gets in itself, not a copy, and must not keep it; its output
// is copied to dst.
func (c *code) AppendCall(ctx context.Context, dst []byte, handler string, in []byte) ([]byte, error) {
	hs := c.handlers.Load()
	if hs == nil {
		c.fail()
		return dst, module.Fail(module.ErrDrained, "the plugin version was closed")
	}
	h := (*hs)[handler]
	if h == nil {
		c.fail()
		return dst, module.Fail(module.ErrNoHandler, fmt.Sprintf("the plugin registers no handler %q", handler))
	}
	out, err := c.invoke(h, in)
	c.calls.Add(1)
	if err != nil {
		c.failures.Add(1)
		return dst, err
	}
	if c.handlers.Load() == nil {
		c.failures.Add(1)
		return dst, module.Fail(module.ErrDrained, "the plugin version was closed while the call ran")
	}
	return append(dst, out...), nil
}

func (c *code) fail() {
	c.calls.Add(1)
	c.failures.Add(1)
}

// invoke runs h, turning a panic into ErrTrapped and a handler error into
// ErrGuest.
func (c *code) invoke(h func([]byte) ([]byte, error), in []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.trapped.Add(1)
			stack := debug.Stack()
			if len(stack) > maxPanicStack {
				stack = stack[:maxPanicStack]
			}
			out, err = nil, module.Fail(module.ErrTrapped, fmt.Sprintf("panic: %v\n%s", r, stack))
		}
	}()
	out, err = h(in)
	if err != nil {
		return nil, module.Fail(module.ErrGuest, err.Error())
	}
	return out, nil
}

// Migrate runs the plugin's migrate hook, bounded by InitTimeout and ctx.
func (c *code) Migrate(ctx context.Context, from string) error {
	if err := c.b.runHook(ctx, "migrate hook", func() error { return c.migrate(from) }); err != nil {
		return fmt.Errorf("%w: %w", module.ErrMigrateFailed, err)
	}
	return nil
}

// Stats reports the version's calls and the plugin's mapped size.
func (c *code) Stats() module.CodeStats {
	return module.CodeStats{
		MemoryBytes: c.lib.mapped,
		Calls:       c.calls.Load(),
		Failures:    c.failures.Load(),
		Discarded:   c.trapped.Load(),
		PrepareTime: c.prepared,
	}
}

// Close drops the version's handlers. The plugin stays mapped; see
// Backend.Retained.
func (c *code) Close(ctx context.Context) error {
	if c.handlers.Swap(nil) != nil {
		c.lib.live.Add(-1)
	}
	return nil
}
