package canary_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hotswapgo/hotswap/canary"
	"github.com/hotswapgo/hotswap/module"
)

// echoBackend's versions answer with their artifact: enough to run a canary.
// Real services use module/wasm, through package host.
type echoBackend struct{}

func (echoBackend) Prepare(_ context.Context, s module.Spec) (module.Code, error) {
	return &echo{answer: s.Artifact}, nil
}
func (echoBackend) Close(context.Context) error { return nil }

type echo struct {
	answer []byte
	calls  atomic.Uint64 // a canary compares the versions' counts of calls
}

func (e *echo) AppendCall(_ context.Context, dst []byte, _ string, _ []byte) ([]byte, error) {
	e.calls.Add(1)
	return append(dst, e.answer...), nil
}
func (*echo) Migrate(context.Context, string) error { return nil }
func (e *echo) Stats() module.CodeStats             { return module.CodeStats{Calls: e.calls.Load()} }
func (*echo) Close(context.Context) error           { return nil }

// A Rollout drives a module's canary through its steps and promotes it, or
// aborts it at the first regression its tests can prove.
func Example() {
	ctx := context.Background()
	reg, _ := module.New(module.Options{Backend: echoBackend{}})
	defer reg.Close(ctx)
	reg.Load(ctx, "greet", module.Source{Version: "v1", Artifact: []byte("hello")})
	m := reg.Module("greet")
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the service's traffic
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m.CallKey(ctx, fmt.Sprint("user-", i%5000), "hi", nil)
		}
	}()

	p, _ := reg.Prepare(ctx, "greet", module.Source{Version: "v2", Artifact: []byte("bonjour")})
	c, _ := p.Canary(0)
	ro, err := canary.Start(c, canary.Options{Policy: canary.Policy{
		Steps: []float64{10, 50}, Interval: 50 * time.Millisecond, MinCalls: 200,
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	<-ro.Done()
	st := ro.Status()
	fmt.Println(st.State, st.Last.Decision)
	out, _ := m.Call(ctx, "hi", nil)
	fmt.Println(string(out))
	// Output:
	// promoted promote
	// bonjour
}
