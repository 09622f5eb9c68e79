package module

import (
	"context"
	"testing"
)

type nopTracer struct{}

func (nopTracer) StartCall(ctx context.Context, _, _, _ string) (context.Context, bool) {
	return ctx, false
}
func (nopTracer) EndCall(context.Context, error, FailureKind) {}

// TestBaseRoute checks that a module without a canary gets a route only
// when its calls are timed, labelled or traced, so that with none of them
// a call takes the route-less path, and that the route carries the tracer.
func TestBaseRoute(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
		want bool
	}{
		{name: "nothing on"},
		{name: "traced", opts: Options{CallTracer: nopTracer{}}, want: true},
		{name: "timed", opts: Options{TimeCalls: 0.5}, want: true},
		{name: "labelled", opts: Options{ProfileLabels: true}, want: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Backend = nopBackend{}
			r, err := New(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			rt := r.Module("m").route.Load()
			if (rt != nil) != tt.want {
				t.Fatalf("route = %+v; want one: %v", rt, tt.want)
			}
			if rt != nil && rt.spans != tt.opts.CallTracer {
				t.Errorf("route tracer = %v; want %v", rt.spans, tt.opts.CallTracer)
			}
			if c := r.canaryRoute(nil, 0, 0.5); c.spans != tt.opts.CallTracer {
				t.Errorf("canary route tracer = %v; want %v", c.spans, tt.opts.CallTracer)
			}
		})
	}
}

type nopBackend struct{}

func (nopBackend) Prepare(context.Context, Spec) (Code, error) { return nil, ErrInvalidModule }
func (nopBackend) Close(context.Context) error                 { return nil }
