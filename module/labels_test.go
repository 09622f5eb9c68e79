package module_test

import (
	"bytes"
	"context"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// TestProfileLabels checks that with Options.ProfileLabels a call runs
// with the pprof labels of its module and version, that the calling
// goroutine gets its context's labels back afterwards, and that without
// the option calls carry no labels.
func TestProfileLabels(t *testing.T) {
	for _, tt := range []struct {
		name      string
		labels    bool
		timeCalls float64
	}{
		{name: "labels", labels: true},
		{name: "labels and timing", labels: true, timeCalls: 1},
		{name: "off"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := module.New(module.Options{Backend: &fakeBackend{}, ProfileLabels: tt.labels, TimeCalls: tt.timeCalls})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			defer r.Close(ctx)
			if _, err := r.Load(ctx, "labelled", module.Source{Version: "v7", Artifact: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			const want = `"version":"v7"`
			// The caller's own labels, which the goroutine must carry again
			// after the call.
			pprof.Do(ctx, pprof.Labels("caller", "test"), func(ctx context.Context) {
				out, err := r.Module("labelled").Call(ctx, "goroutines", nil)
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.Contains(string(out), want) && strings.Contains(string(out), `"module":"labelled"`); got != tt.labels {
					t.Errorf("labels module=labelled, version=v7 during the call: %v; want %v", got, tt.labels)
				}
				var after bytes.Buffer
				pprof.Lookup("goroutine").WriteTo(&after, 1)
				if strings.Contains(after.String(), want) {
					t.Errorf("the version's labels outlived the call:\n%s", after.String())
				}
				if !strings.Contains(after.String(), `"caller":"test"`) {
					t.Errorf("the caller's labels are gone after the call")
				}
			})
		})
	}
}

// TestCallAllocatesNothing checks that the call path allocates nothing
// with the counters a metrics collector reads, with every call timed, and
// with profiling labels.
func TestCallAllocatesNothing(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters allocate")
	}
	for _, tt := range []struct {
		name string
		opts module.Options
	}{
		{name: "plain"},
		{name: "timed", opts: module.Options{TimeCalls: 1}},
		{name: "labels", opts: module.Options{ProfileLabels: true}},
		{name: "timed and labels", opts: module.Options{TimeCalls: 1, ProfileLabels: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Backend = &fakeBackend{}
			r, err := module.New(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			defer r.Close(ctx)
			if _, err := r.Load(ctx, "m", module.Source{Version: "v1", Artifact: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			m := r.Module("m")
			dst := make([]byte, 0, 64)
			allocs := testing.AllocsPerRun(1000, func() {
				if _, err := m.AppendCall(ctx, dst[:0], "h", nil); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("AppendCall allocates %v times per call; want 0", allocs)
			}
		})
	}
}
