package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
)

// TestCanaryCLI: a canary started detached, shown, paused and promoted with
// the CLI; then one followed to its automatic abort under load.
func TestCanaryCLI(t *testing.T) {
	s := newService(t, serviceOptions{})
	mustCtl(t, s.socket, "load", "pricing", s.artifact(t, guestV1, "pricing-v1.wasm", "v1"))
	v2 := s.artifact(t, guestV2, "pricing-v2.wasm", "v2")

	out := mustCtl(t, s.socket, "canary", "pricing", v2, "--steps", "50", "--interval", "1h", "--detach")
	if !strings.Contains(out, "pricing@v2 serves 50% beside pricing@v1 (step 1 of 1") {
		t.Errorf("canary --detach printed %q; want what serves beside what", out)
	}
	if out := mustCtl(t, s.socket, "canary", "status", "pricing"); !strings.Contains(out, "pricing@v2 beside pricing@v1: running, step 1 of 1 at 50%") ||
		!strings.Contains(out, "evidence failures") {
		t.Errorf("canary status printed %q; want the running canary and its numbers", out)
	}
	if out := mustCtl(t, s.socket, "status"); !strings.Contains(out, "canary    pricing@v2 beside pricing@v1: running, step 1 of 1 at 50%") ||
		!strings.Contains(out, "last      begin at step 1 (50%)") {
		t.Errorf("status printed %q; want the running canary under the modules", out)
	}
	var res control.CanaryResult
	if err := json.Unmarshal([]byte(mustCtl(t, s.socket, "canary", "status", "pricing", "-o", "json")), &res); err != nil || !res.OK || res.Canary.State != "running" {
		t.Errorf("canary status -o json = %+v, %v; want ok and running", res, err)
	}
	if out := mustCtl(t, s.socket, "canary", "pause", "pricing"); !strings.Contains(out, "canary pricing@v2 paused at step 1 of 1 (50%)") {
		t.Errorf("canary pause printed %q", out)
	}
	_, _, code, err := ctl(t, s.socket, "load", "pricing", v2)
	if code != 1 || !strings.Contains(fmt.Sprint(err), "pricing@v2 is under canary (promote or abort it first)") {
		t.Errorf("load during a canary: exit %d, %v; want 1, naming the canary", code, err)
	}
	if out := mustCtl(t, s.socket, "canary", "promote", "pricing"); !strings.Contains(out, "pricing@v2 serves (canary promoted); pricing@v1 is kept warm") {
		t.Errorf("canary promote printed %q", out)
	}
	if _, _, code, err := ctl(t, s.socket, "canary", "abort", "pricing"); code != 1 || !strings.Contains(fmt.Sprint(err), "no canary running") {
		t.Errorf("canary abort without a canary: exit %d, %v; want 1, no canary", code, err)
	}
	if _, _, code, _ := ctl(t, s.socket, "canary", "pricing"); code != 2 {
		t.Errorf("canary with one argument: exit %d; want 2", code)
	}

	// Followed to its abort, under load.
	payload, err := guestbuild.Bytes("./examples/pricing/guests/canary", "-X main.label=flaky -X main.failPerMille=500")
	if err != nil {
		t.Fatal(err)
	}
	flaky := s.f.Sign(t, s.f.Trusted, "pricing-flaky.wasm", payload, artifact.Manifest{Version: "v3-flaky"})
	testhost.KeyedCalls(t, s.h.Module("pricing"), 2)
	out, errOut, code, err := ctl(t, s.socket, "canary", "pricing", flaky, "--steps", "10", "--min-calls", "50", "--interval", "1h")
	if code != 1 || !strings.Contains(fmt.Sprint(err), "canary aborted: failure rate") || !strings.Contains(fmt.Sprint(err), "pricing@v2 keeps serving") {
		t.Errorf("canary of a flaky version: exit %d, %v\nstdout %q\nstderr %q\nwant exit 1, aborted for its failure rate", code, err, out, errOut)
	}
	for _, want := range []string{"verify", "prepare", "begin at step 1 (10%)", "abort at step 1 (10%)", "evidence failures"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("canary progress lacks %q:\n%s", want, errOut)
		}
	}
	if out := mustCtl(t, s.socket, "history", "pricing", "--limit", "3"); !strings.Contains(out, "canary") || !strings.Contains(out, "aborted: failure rate") {
		t.Errorf("history printed %q; want the canary's abort", out)
	}
}
