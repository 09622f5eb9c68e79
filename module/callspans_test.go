package module_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// recordingTracer is a module.CallTracer that traces the calls trace
// says and records what it was told.
type recordingTracer struct {
	trace bool

	mu     sync.Mutex // protects starts and ends
	starts []string   // "module version handler"
	ends   []ended
}

type ended struct {
	span any // the span marker the call's context carried
	err  error
	kind module.FailureKind
}

type spanKey struct{}

func (r *recordingTracer) StartCall(ctx context.Context, mod, version, handler string) (context.Context, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, mod+" "+version+" "+handler)
	if !r.trace {
		return ctx, false
	}
	return context.WithValue(ctx, spanKey{}, len(r.starts)), true
}

func (r *recordingTracer) EndCall(ctx context.Context, err error, kind module.FailureKind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends = append(r.ends, ended{span: ctx.Value(spanKey{}), err: err, kind: kind})
}

// TestCallTracer checks what the registry tells a CallTracer: every call
// with its module, version (the canary's for a call the canary serves)
// and handler; the end of each traced call with its context and error;
// nothing more for a call the tracer does not trace.
func TestCallTracer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, trace := range []bool{true, false} {
		tr := &recordingTracer{trace: trace}
		r, err := module.New(module.Options{Backend: &fakeBackend{}, CallTracer: tr})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close(ctx)
		mustLoad(t, r, "v1", "a")
		m := r.Module("m")
		if _, err := m.Call(ctx, "f", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Call(ctx, "g", []byte("fail")); !errors.Is(err, module.ErrGuest) {
			t.Fatalf("Call(fail) = %v; want %v", err, module.ErrGuest)
		}
		p, err := r.Prepare(ctx, "m", module.Source{Version: "v2", Artifact: []byte("b")})
		if err != nil {
			t.Fatal(err)
		}
		c, err := p.Canary(1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.CallKey(ctx, "user-1", "f", nil); err != nil {
			t.Fatal(err)
		}
		c.Abort()

		if want := []string{"m v1 f", "m v1 g", "m v2 f"}; !slices.Equal(tr.starts, want) {
			t.Errorf("trace %v: StartCall got %q; want %q", trace, tr.starts, want)
		}
		if !trace {
			if len(tr.ends) != 0 {
				t.Errorf("EndCall called %d times for calls not traced; want none", len(tr.ends))
			}
			continue
		}
		if len(tr.ends) != 3 {
			t.Fatalf("EndCall called %d times; want 3", len(tr.ends))
		}
		for i, e := range tr.ends {
			if e.span != i+1 {
				t.Errorf("EndCall %d got the context of span %v; want the one StartCall returned (%d)", i, e.span, i+1)
			}
		}
		if e := tr.ends[0]; e.err != nil {
			t.Errorf("EndCall of a call that succeeded got %v", e.err)
		}
		var ce *module.CallError
		if e := tr.ends[1]; !errors.As(e.err, &ce) || ce.Version != "v1" || ce.Handler != "g" || e.kind != module.FailGuest {
			t.Errorf("EndCall of the failed call got %v, kind %v; want a *CallError of v1 g, kind guest", e.err, e.kind)
		}
	}
}
