package wasm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// code is one prepared version of a module.
type code struct {
	host     *moduleHost
	cfg      *ModuleConfig
	version  string
	handlers map[string]uint32
	names    []string
	pool     *pool
	wd       *watchdog       // nil without a call deadline
	bg       context.Context // the context calls run under: it carries logs
	logs     *logStats
	prepared time.Duration
	compiled *compiledModule
	release  func(keep bool) // releases compiled; keep once the version was accepted

	// refused counts calls failed before reaching an instance.
	refused atomic.Uint64

	mu        sync.Mutex // protects validator, accepted
	validator *instance  // kept from validation until Migrate or Close
	accepted  bool       // Migrate succeeded
	closeOnce sync.Once
}

var _ module.Code = (*code)(nil)

func (c *code) AppendCall(ctx context.Context, dst []byte, handler string, in []byte) ([]byte, error) {
	id, ok := c.handlers[handler]
	if !ok {
		c.refused.Add(1)
		return dst, module.Fail(module.ErrNoHandler, fmt.Sprintf("%q (the module has %s)", handler, strings.Join(c.names, ", ")))
	}
	if len(in) > c.cfg.MaxInput {
		c.refused.Add(1)
		return dst, module.Fail(module.ErrTooLarge, fmt.Sprintf("input of %d bytes exceeds MaxInput %d", len(in), c.cfg.MaxInput))
	}
	inst, err := c.pool.get(ctx)
	if err != nil {
		return dst, err
	}
	out, dead, err := inst.do(ctx, c, dst, id, in)
	c.pool.done(inst, dead, err != nil)
	return out, err
}

func (c *code) Migrate(ctx context.Context, from string) error {
	c.mu.Lock()
	v := c.validator
	c.validator = nil
	c.mu.Unlock()
	if v == nil {
		return errors.New("migrate: version already migrated or closed")
	}
	if err := c.runMigrate(context.WithValue(ctx, logStatsKey{}, c.logs), v, from); err != nil {
		v.close()
		return module.Reject("migrate", err)
	}
	c.mu.Lock()
	c.accepted = true
	c.mu.Unlock()
	c.pool.add(v) // the validation instance serves like any other
	return nil
}

func (c *code) runMigrate(ctx context.Context, v *instance, from string) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.InitTimeout)
	defer cancel()
	if len(from) > int(v.xcap) {
		if err := v.growExchange(ctx, len(from)); err != nil {
			return loadFailure(err)
		}
	}
	v.mem.Write(v.xptr, []byte(from))
	r, err := v.invoke(ctx, v.mod.ExportedFunction(exportMigrate), uint64(len(from)))
	if err != nil {
		return loadFailure(err)
	}
	if _, err := v.result(r); err != nil {
		return fmt.Errorf("%w: %v", module.ErrMigrateFailed, err)
	}
	return nil
}

func (c *code) Stats() module.CodeStats {
	s := c.pool.stats()
	return module.CodeStats{
		Instances:       s.instances,
		IdleInstances:   s.idle,
		MemoryBytes:     s.memory,
		TableEntries:    s.tables,
		Calls:           s.calls + c.refused.Load(),
		Failures:        s.failures + c.refused.Load(),
		Discarded:       s.drop,
		PrepareTime:     c.prepared,
		DroppedLogLines: c.logs.dropped.Load(),
	}
}

// Close closes the version. A version that never passed Migrate was
// refused: the compiled code its compile added to the cache is removed
// (unless another version uses it).
func (c *code) Close(ctx context.Context) error {
	c.closeOnce.Do(func() {
		if c.wd != nil {
			c.wd.close()
		}
		c.mu.Lock()
		if c.validator != nil {
			c.validator.close()
			c.validator = nil
		}
		accepted := c.accepted
		c.mu.Unlock()
		c.pool.close(true)
		c.release(accepted)
	})
	return nil
}

// loadFailure turns a call failure during validation into the error a
// LoadError carries: the sentinel and the diagnostics, without the call
// framing.
func loadFailure(err error) error {
	var ce *module.CallError
	if errors.As(err, &ce) {
		if ce.Detail == "" {
			return ce.Kind
		}
		return fmt.Errorf("%w: %s", ce.Kind, ce.Detail)
	}
	return err
}
