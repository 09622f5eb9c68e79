package control_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
)

// TestCanaryOverTheSocket: a canary started, inspected, paused, frozen,
// resumed and promoted through the control socket.
func TestCanaryOverTheSocket(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.load(t, e.artifact(t, testhost.V1, "1.0.0"))
	v2 := e.f.Sign(t, e.f.Trusted, "pricing-v2.wasm", guest(t, testhost.V2), artifact.Manifest{Version: "2.0.0"})
	ctx := ctxT(t, 2*time.Minute)

	var steps []string
	res, err := e.client.CanaryFile(ctx, "pricing", v2, control.CanaryPolicy{Steps: []float64{50}, IntervalMS: 3600e3}, false,
		func(p control.Progress) { steps = append(steps, p.Step) })
	if err != nil {
		t.Fatalf("CanaryFile() = %v", err)
	}
	if c := res.Canary; !res.OK || c == nil || c.State != "running" || c.Weight != 50 || c.Version.Version != "2.0.0" || c.Stable != "1.0.0" ||
		c.LastVerdict == nil || c.LastVerdict.Decision != "begin" {
		t.Fatalf("CanaryFile() = %+v (canary %+v); want 2.0.0 running at 50%% beside 1.0.0", res, res.Canary)
	}
	if want := "verify prepare store canary"; strings.Join(steps, " ") != want {
		t.Errorf("progress steps %v; want %s", steps, want)
	}
	st, err := e.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := st.Modules[0].Canary; c == nil || c.Version.Instances == 0 || c.ID != res.Canary.ID {
		t.Errorf("status canary %+v; want the running canary with its live version", c)
	}
	if _, err := e.client.Load(ctx, "pricing", e.artifact(t, testhost.V2, "2.0.1"), nil); !errors.Is(err, control.ErrBusy) || !strings.Contains(err.Error(), "2.0.0 is under canary") {
		t.Errorf("Load() during a canary = %v; want busy, naming the canary", err)
	}
	for _, c := range []struct{ cmd, state string }{{"pause", "paused"}, {"freeze", "frozen"}, {"resume", "running"}} {
		res, err := e.client.CanaryCommand(ctx, "pricing", c.cmd)
		if err != nil || res.Canary.State != c.state || res.Canary.LastVerdict.By == "" {
			t.Errorf("CanaryCommand(%s) = %+v, %v; want %s, naming the operator", c.cmd, res.Canary, err, c.state)
		}
	}
	res, err = e.client.CanaryCommand(ctx, "pricing", "promote")
	if err != nil || res.Serving.Version != "2.0.0" || res.Previous.Version != "1.0.0" || res.Canary.State != "promoted" || res.Canary.EndedAt == nil {
		t.Fatalf("CanaryCommand(promote) = %+v, %v; want 2.0.0 serving, 1.0.0 previous", res, err)
	}
	if v, err := e.quote(ctx); err != nil || v != "v2" {
		t.Errorf("after the promotion a quote answered %q, %v; want v2", v, err)
	}
	// Afterwards: the last canary is still described, commands refused.
	if res, err := e.client.CanaryStatus(ctx, "pricing", false, nil); err != nil || res.Canary.State != "promoted" {
		t.Errorf("CanaryStatus() = %+v, %v; want the promoted canary", res, err)
	}
	if _, err := e.client.CanaryCommand(ctx, "pricing", "abort"); !errors.Is(err, control.ErrNoCanary) {
		t.Errorf("CanaryCommand(abort) after the end = %v; want no_canary", err)
	}
	if st, _ := e.client.Status(ctx); st.Modules[0].Canary != nil {
		t.Errorf("status canary after the end = %+v; want null", st.Modules[0].Canary)
	}

	// Another canary, aborted over the socket.
	v3 := e.f.Sign(t, e.f.Trusted, "pricing-v3.wasm", guest(t, testhost.V1), artifact.Manifest{Version: "3.0.0"})
	if _, err := e.client.CanaryFile(ctx, "pricing", v3, control.CanaryPolicy{IntervalMS: 3600e3}, false, nil); err != nil {
		t.Fatal(err)
	}
	res, err = e.client.CanaryCommand(ctx, "pricing", "abort")
	if err != nil || res.Canary.State != "aborted" || res.Canary.Version.Version != "3.0.0" || res.Serving.Version != "2.0.0" || res.Canary.LastVerdict.By == "" {
		t.Errorf("CanaryCommand(abort) = %+v, %v; want 3.0.0 aborted by the operator, 2.0.0 serving", res.Canary, err)
	}
}

// TestCanaryFollowedToItsAbort: following a canary streams its verdicts and
// ends with kind aborted, naming why and what serves.
func TestCanaryFollowedToItsAbort(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.load(t, e.artifact(t, testhost.V1, "1.0.0"))
	flaky, err := guestbuild.Bytes("./examples/pricing/guests/canary", "-X main.label=flaky -X main.failPerMille=500")
	if err != nil {
		t.Fatal(err)
	}
	path := e.f.Sign(t, e.f.Trusted, "pricing-flaky.wasm", flaky, artifact.Manifest{Version: "1.1.0"})
	testhost.KeyedCalls(t, e.h.Module("pricing"), 2)
	ctx := ctxT(t, 2*time.Minute)
	var verdicts []*control.CanaryVerdict
	res, err := e.client.CanaryFile(ctx, "pricing", path, control.CanaryPolicy{Steps: []float64{10}, IntervalMS: 3600e3, MinCalls: 50}, true,
		func(p control.Progress) {
			if p.Verdict != nil {
				verdicts = append(verdicts, p.Verdict)
			}
		})
	if !errors.Is(err, control.ErrAborted) || !strings.Contains(err.Error(), "failure rate") || !strings.Contains(err.Error(), "pricing@1.0.0 keeps serving") {
		t.Fatalf("CanaryFile(follow) = %v; want aborted for its failure rate, 1.0.0 serving", err)
	}
	if len(verdicts) < 2 || verdicts[0].Decision != "begin" || verdicts[len(verdicts)-1].Decision != "abort" ||
		verdicts[len(verdicts)-1].Window.Canary.Calls < 50 {
		t.Errorf("verdicts %+v; want begin … abort, after at least 50 canary calls", verdicts)
	}
	if res.Canary == nil || res.Canary.State != "aborted" || res.Serving.Version != "1.0.0" {
		t.Errorf("result %+v; want the aborted canary and 1.0.0 serving", res)
	}
}

func TestCanaryRefusals(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := ctxT(t, 2*time.Minute)
	v1 := e.f.Sign(t, e.f.Trusted, "pricing-v1.wasm", guest(t, testhost.V1), artifact.Manifest{Version: "1.0.0"})
	if _, err := e.client.CanaryFile(ctx, "pricing", v1, control.CanaryPolicy{}, false, nil); !errors.Is(err, control.ErrNotFound) {
		t.Errorf("CanaryFile() of a first version = %v; want not_found", err)
	}
	e.load(t, e.artifact(t, testhost.V1, "1.0.0"))
	if _, err := e.client.CanaryFile(ctx, "pricing", v1, control.CanaryPolicy{Steps: []float64{5, 1}}, false, nil); !errors.Is(err, control.ErrBadRequest) {
		t.Errorf("CanaryFile() with decreasing steps = %v; want bad_request", err)
	}
	if _, err := e.client.CanaryCommand(ctx, "pricing", "pause"); !errors.Is(err, control.ErrNoCanary) {
		t.Errorf("CanaryCommand(pause) without a canary = %v; want no_canary", err)
	}
	if _, err := e.client.CanaryCommand(ctx, "pricing", "explode"); !errors.Is(err, control.ErrBadRequest) {
		t.Errorf("CanaryCommand(explode) = %v; want bad_request", err)
	}
	if _, err := e.client.CanaryStatus(ctx, "pricing", false, nil); !errors.Is(err, control.ErrNoCanary) {
		t.Errorf("CanaryStatus() without a canary = %v; want no_canary", err)
	}
	// A policy header that does not decode.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", e.socket)
	}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://x/v1/modules/pricing/canary", strings.NewReader("x"))
	req.Header.Set(control.PolicyHeader, `{"steps":"many"}`)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("canary with a malformed policy: HTTP %d; want 400", resp.StatusCode)
	}
}
