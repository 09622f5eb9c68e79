package wasm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"

	"github.com/hotswapgo/hotswap/module"
)

// Causes with which the host stops a running call, by cancelling the
// instance's context: wazero then closes the instance from the call's own
// goroutine, which is the only race-free way to close it under a call.
var (
	errWatchdog      = errors.New("call ran past CallTimeout")
	errDrained       = errors.New("version closed under the call")
	errCallerStopped = errors.New("the caller's context ended")
)

// exitClosed is the exit code an idle instance is closed with.
const exitClosed uint32 = 0xeffffff0

// initialExchange is the exchange buffer size requested from a new instance.
const initialExchange = 16 << 10

// instance is one instantiated module. It runs one call at a time: a call
// owns it from pool.get until pool.done.
type instance struct {
	mod      api.Module
	mem      api.Memory
	call     api.Function
	exchange api.Function
	yield    api.Function
	out      *output

	// ctx is what calls run under in guarded runtimes; cancel stops the
	// running call (see errWatchdog) and ends the instance.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// Owned by the call that holds the instance.
	xptr, xcap uint32   // exchange buffer in guest memory
	stack      []uint64 // CallWithStack's parameters and results
	sinceYield int      // calls since the last maintenance yield
	yieldEvery int      // calls between light yields; adapts, see maintain
	memMark    uint32   // memory size at the last maintenance yield

	// memBytes mirrors the memory size for Stats, which runs concurrently.
	memBytes atomic.Uint64
	// started is the watchdog tick at which the running call started, 0
	// when idle, or killed once the watchdog closed the instance. Only a
	// CompareAndSwap from the value it stored ends a call, so the watchdog
	// can never close an instance for the wrong call.
	started atomic.Int64
}

const killed = -1

// newInstance instantiates cm and runs its initialization under a deadline.
func newInstance(ctx context.Context, h *moduleHost, rt wazero.Runtime, cm wazero.CompiledModule) (*instance, error) {
	out := &output{}
	mod, err := rt.InstantiateModule(ctx, cm, h.instanceConfig(out))
	if err != nil {
		return nil, fmt.Errorf("instantiate: %w", err)
	}
	ictx, cancel := context.WithCancelCause(context.Background())
	inst := &instance{
		ctx:      ictx,
		cancel:   cancel,
		mod:      mod,
		mem:      mod.Memory(),
		call:     mod.ExportedFunction(exportCall),
		exchange: mod.ExportedFunction(exportExchange),
		yield:    mod.ExportedFunction(exportYield),
		out:      out,
		stack:    make([]uint64, 2),
	}
	if inst.mem == nil {
		inst.close()
		return nil, fmt.Errorf("%w: the module exports no memory", module.ErrMissingExport)
	}
	if _, err := inst.invoke(ctx, mod.ExportedFunction(exportInit)); err != nil {
		inst.close()
		return nil, err
	}
	if err := inst.growExchange(ctx, initialExchange); err != nil {
		inst.close()
		return nil, err
	}
	inst.memMark = inst.mem.Size()
	inst.memBytes.Store(uint64(inst.memMark))
	return inst, nil
}

// invoke calls a parameterless export, translating failures.
func (inst *instance) invoke(ctx context.Context, fn api.Function, params ...uint64) (uint64, error) {
	stack := make([]uint64, max(len(params), 1))
	copy(stack, params)
	if err := fn.CallWithStack(ctx, stack); err != nil {
		return 0, inst.failure(ctx, err)
	}
	return stack[0], nil
}

// result reads a packed result; status error becomes err with the text.
func (inst *instance) result(r uint64) ([]byte, error) {
	addr, status, n := unpack(r)
	b, ok := inst.mem.Read(addr, n)
	if !ok {
		return nil, fmt.Errorf("%w: result %d+%d is outside guest memory", module.ErrTrapped, addr, n)
	}
	if status != statusOK {
		return nil, errors.New(string(b))
	}
	return b, nil
}

func (inst *instance) growExchange(ctx context.Context, n int) error {
	r, err := inst.invoke(ctx, inst.exchange, uint64(n))
	if err != nil {
		return err
	}
	inst.xptr, inst.xcap = uint32(r), uint32(n)
	return nil
}

// failure classifies an error from a guest call into a call sentinel with
// diagnostics. Every such failure leaves the instance unusable.
func (inst *instance) failure(ctx context.Context, err error) error {
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return module.Fail(module.ErrTimeout, context.DeadlineExceeded.Error())
		case sys.ExitCodeContextCanceled:
			switch cause := context.Cause(inst.ctx); cause {
			case errWatchdog:
				return module.Fail(module.ErrTimeout, "stopped by the watchdog")
			case errDrained:
				return module.Fail(module.ErrDrained, "")
			case errCallerStopped:
				if err := ctx.Err(); err != nil {
					return module.Fail(err, "the caller's context ended during the call")
				}
			}
			return module.Fail(context.Canceled, "")
		}
	}
	detail := inst.out.summary()
	if strings.Contains(detail, "out of memory") {
		return module.Fail(module.ErrMemoryLimit, detail)
	}
	if detail == "" {
		detail = err.Error()
	} else {
		detail = firstLine(err.Error()) + ": " + detail
	}
	return module.Fail(module.ErrTrapped, detail)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// do runs one call; it appends the output to dst. dead reports that the
// instance must be discarded.
func (inst *instance) do(ctx context.Context, c *code, dst []byte, id uint32, in []byte) (out []byte, dead bool, err error) {
	if len(in) > int(inst.xcap) {
		if err := inst.growExchange(ctx, len(in)); err != nil {
			return dst, true, err
		}
	}
	if !inst.mem.Write(inst.xptr, in) {
		return dst, true, module.Fail(module.ErrTrapped, "exchange buffer outside guest memory")
	}
	inst.stack[0], inst.stack[1] = uint64(id), uint64(len(in))

	if done := ctx.Done(); done != nil {
		select {
		case <-done: // refuse to start a call for a caller that gave up
			return dst, false, module.Fail(ctx.Err(), "")
		default:
		}
	}
	var callErr error
	if c.wd != nil {
		// Guarded: the watchdog and the caller's context stop the call
		// by cancelling the instance's context.
		var stop func() bool
		if ctx.Done() != nil {
			stop = context.AfterFunc(ctx, func() { inst.cancel(errCallerStopped) })
		}
		tick := c.wd.tick.Load()
		inst.started.Store(tick)
		callErr = inst.call.CallWithStack(inst.ctx, inst.stack)
		if !inst.started.CompareAndSwap(tick, 0) {
			dead = true // the watchdog stopped the instance
		}
		if stop != nil && !stop() {
			dead = true // the caller's context ended: the instance is cancelled
		}
	} else {
		// Trusted: nothing can stop the call once it runs.
		callErr = inst.call.CallWithStack(c.bg, inst.stack)
	}
	if callErr != nil {
		return dst, true, inst.failure(ctx, callErr)
	}

	addr, status, n := unpack(inst.stack[0])
	if int(n) > c.cfg.MaxOutput {
		return dst, dead, module.Fail(module.ErrTooLarge, fmt.Sprintf("output of %d bytes exceeds MaxOutput %d", n, c.cfg.MaxOutput))
	}
	b, ok := inst.mem.Read(addr, n)
	if !ok {
		return dst, true, module.Fail(module.ErrTrapped, fmt.Sprintf("output %d+%d is outside guest memory", addr, n))
	}
	if status != statusOK {
		return dst, dead, module.Fail(module.ErrGuest, string(b))
	}
	return append(dst, b...), dead, nil
}

// Pacing of light yields: a guest that allocated less than quietAllocs
// since its last yield has little for its collector to finish, so its next
// yield comes twice as many calls later, up to MaintainEvery times
// maxYieldBackoff; one that allocated more yields every MaintainEvery calls.
const (
	quietAllocs     = 1 << 20
	maxYieldBackoff = 64
)

// maintain yields to the guest runtime so its garbage collector can finish:
// a full collection when memory grew since the last time, else a light
// yield.
func (inst *instance) maintain(ctx context.Context, every int) error {
	full := uint64(0)
	if inst.mem.Size() > inst.memMark {
		full = 1
	}
	allocated, err := inst.invoke(ctx, inst.yield, full)
	if err != nil {
		return err
	}
	if allocated < quietAllocs {
		inst.yieldEvery = min(max(inst.yieldEvery, every)*2, every*maxYieldBackoff)
	} else {
		inst.yieldEvery = every
	}
	inst.sinceYield = 0
	inst.memMark = inst.mem.Size()
	inst.memBytes.Store(uint64(inst.memMark))
	return nil
}

// close closes an instance no call is running on.
func (inst *instance) close() {
	inst.cancel(errDrained)
	inst.mod.CloseWithExitCode(context.Background(), exitClosed)
}
