package wasm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"github.com/hotswapgo/hotswap/module"
	"github.com/hotswapgo/hotswap/module/wasm/internal/guard"
)

// Causes with which the host stops a call (see halt). A call stopped while
// the caller's context was done fails with that context's error; one run
// by invoke under a context that ended fails with ErrTimeout (deadline) or
// context.Canceled.
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

	// flag is the stop flag (see halt).
	flag api.MutableGlobal
	// signal and grown are written by the instrumented guest code and
	// read only by the goroutine that owns the instance, after a call.
	signal, grown api.Global
	// halted holds the cause the instance was stopped with, nil until then.
	halted atomic.Pointer[haltCause]

	// Owned by the call that holds the instance.
	xptr, xcap uint32   // exchange buffer in guest memory
	stack      []uint64 // CallWithStack's parameters and results
	sinceYield int      // calls since the last maintenance yield
	yieldEvery int      // calls between light yields; adapts, see maintain
	memMark    uint32   // memory size at the last maintenance yield

	// held is set while a call holds the instance; guarded by pool.mu.
	held bool

	// memBytes and tableEntries mirror the memory size and the table
	// entries for Stats, which runs concurrently.
	memBytes, tableEntries atomic.Uint64
	// started is the watchdog tick at which the running call started (1
	// without a watchdog), 0 when idle, or killed once the watchdog claimed
	// the instance to stop it. Only a CompareAndSwap from the value it
	// stored ends a call, and the watchdog halts only an instance it
	// claimed, so it can never stop the wrong call: if the call ended
	// between the claim and the halt, its CompareAndSwap fails and the
	// instance is discarded, never reused.
	started atomic.Int64
}

const killed = -1

type haltCause struct{ err error }

// halt stops the call running on inst, from any goroutine, and poisons
// inst: the call traps with unreachable within guard.FuelPerYield units of
// work, and so would every later one, so an instance that was halted is
// discarded. The first cause is kept, and only the goroutine that stores it
// sets the flag, so the flag is written by one goroutine only.
//
// Setting the flag is a plain 8-byte store into the instance's globals
// (api.MutableGlobal.Set, in wazero's compiler engine), which the guest
// reads with a plain load (see package guard). No other Go code touches
// that word after instantiation (nobody calls Get), so the race detector
// sees no race. The guest's load is machine code wazero generates, outside
// the Go memory model: the store becomes visible to it through cache
// coherence, as wazero's own close-on-context-done relies on for its closed
// flag. The CompareAndSwap on halted (a full barrier) orders the cause
// before the flag, so a call that trapped on the flag finds the cause.
func (inst *instance) halt(cause error) {
	if inst.halted.CompareAndSwap(nil, &haltCause{cause}) {
		inst.flag.Set(1)
	}
}

// newInstance instantiates c and runs its start function and
// initialization under a deadline: ctx's, which must have one.
func newInstance(ctx context.Context, h *moduleHost, c *compiledModule) (*instance, error) {
	out := &output{}
	mod, err := h.rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, allocateMemory), c.cm, h.instanceConfig(out))
	if err != nil {
		return nil, fmt.Errorf("instantiate: %w", err)
	}
	inst := &instance{
		mod:      mod,
		mem:      mod.Memory(),
		call:     mod.ExportedFunction(exportCall),
		exchange: mod.ExportedFunction(exportExchange),
		yield:    mod.ExportedFunction(exportYield),
		out:      out,
		stack:    make([]uint64, 2),
		signal:   mod.ExportedGlobal(guard.SignalExport),
		grown:    mod.ExportedGlobal(guard.TableGrowthExport),
	}
	flag, ok := mod.ExportedGlobal(guard.StopExport).(api.MutableGlobal)
	if !ok || inst.mem == nil || inst.signal == nil || inst.grown == nil {
		inst.close()
		return nil, fmt.Errorf("instantiate: the instrumented module lacks its memory, stop flag or signals")
	}
	inst.flag = flag
	inst.tableEntries.Store(c.tables)
	// The start function, which wazero would have run inside
	// instantiation, out of reach of the flag.
	if start := mod.ExportedFunction(guard.StartExport); start != nil {
		if _, err := inst.invoke(ctx, start); err != nil {
			inst.close()
			return nil, err
		}
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

// errHalted stands for the failure of a call that returned normally on an
// instance halted under it.
var errHalted = errors.New("instance halted")

// invoke calls an export off the request path, translating failures. ctx
// ending stops the call by halting the instance.
func (inst *instance) invoke(ctx context.Context, fn api.Function, params ...uint64) (uint64, error) {
	stack := make([]uint64, max(len(params), 1))
	copy(stack, params)
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { inst.halt(ctx.Err()) })
	}
	err := fn.CallWithStack(ctx, stack)
	if stop != nil && !stop() {
		// ctx ended as the call ran: the flag is or will be set, so the
		// instance is poisoned even if the call returned.
		inst.halt(ctx.Err())
		if err == nil {
			err = errHalted
		}
	}
	if err != nil {
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
//
// The classification uses only what the guest cannot forge: the cause the
// host halted the instance with, the signal bits the instrumentation sets
// (a refused memory.grow or table.grow, a stack past MaxStack) and the
// runtime's own errors. What the guest printed is only the detail.
func (inst *instance) failure(ctx context.Context, err error) error {
	if h := inst.halted.Load(); h != nil {
		switch h.err {
		case errWatchdog:
			return module.Fail(module.ErrTimeout, "stopped by the watchdog")
		case errDrained:
			return module.Fail(module.ErrDrained, "")
		case errCallerStopped:
			if err := ctx.Err(); err != nil {
				return module.Fail(err, "the caller's context ended during the call")
			}
		case context.DeadlineExceeded:
			return module.Fail(module.ErrTimeout, context.DeadlineExceeded.Error())
		}
		return module.Fail(context.Canceled, "")
	}
	detail := firstLine(err.Error())
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		detail = fmt.Sprintf("the guest exited with code %d", exit.ExitCode())
	}
	if s := inst.out.summary(); s != "" {
		detail += ": " + s
	}
	sig := uint32(inst.signal.Get())
	switch {
	case sig&guard.SignalStack != 0 || stackOverflow(err):
		return module.Fail(module.ErrStackOverflow, detail)
	case sig&guard.SignalMemory != 0:
		return module.Fail(module.ErrMemoryLimit, fmt.Sprintf("memory.grow refused at %d bytes; %s", inst.mem.Size(), detail))
	case sig&guard.SignalTable != 0:
		return module.Fail(module.ErrMemoryLimit, fmt.Sprintf("table.grow refused past MaxTableEntries; %s", detail))
	}
	return module.Fail(module.ErrTrapped, detail)
}

// stackOverflow reports whether err is wazero's own stack overflow trap,
// which a frame too large for the weighted bound could reach first. wazero
// reports traps as an internal error type wrapped once; its text comes from
// wazero, never from the guest (unlike the stack trace that follows).
func stackOverflow(err error) bool {
	inner := errors.Unwrap(err)
	return inner != nil && inner.Error() == "stack overflow" && strings.HasPrefix(err.Error(), "wasm error: stack overflow\n")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// do runs one call; it appends the output to dst. dead reports that the
// instance must be discarded. The watchdog (when the module has a
// deadline), the caller's context and a forced drain stop the call by
// halting the instance.
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

	var stop func() bool
	if done := ctx.Done(); done != nil {
		select {
		case <-done: // refuse to start a call for a caller that gave up
			return dst, false, module.Fail(ctx.Err(), "")
		default:
		}
		stop = context.AfterFunc(ctx, func() { inst.halt(errCallerStopped) })
	}
	tick := int64(1)
	if c.wd != nil {
		tick = c.wd.tick.Load()
	}
	inst.started.Store(tick)
	callErr := inst.call.CallWithStack(c.bg, inst.stack)
	if !inst.started.CompareAndSwap(tick, 0) {
		dead = true // the watchdog claimed the instance and halts it
	}
	if stop != nil && !stop() {
		inst.halt(errCallerStopped) // (again: the first cause is kept)
		dead = true
	}
	if inst.halted.Load() != nil {
		dead = true // a drain halted it
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
	inst.mod.CloseWithExitCode(context.Background(), exitClosed)
}
