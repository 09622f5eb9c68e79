package control_test

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/control"
)

// rawClient talks HTTP to the control socket with nothing between: no
// retries, no keep-alive.
func rawClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives:     true,
		ExpectContinueTimeout: time.Minute,
	}}
}

// watchedBody is a request body that records whether it was ever read and
// never yields a byte.
type watchedBody struct {
	read atomic.Bool
	stop chan struct{}
}

func (b *watchedBody) Read([]byte) (int, error) {
	b.read.Store(true)
	<-b.stop
	return 0, io.EOF
}

func (b *watchedBody) Close() error { return nil }

// TestUploadRefusedBeforeItsPayload: an upload whose manifest refuses it
// (too large here, 1 TiB) is answered without the service asking for its
// body, so the client never sends it.
func TestUploadRefusedBeforeItsPayload(t *testing.T) {
	e := newEnv(t, envOptions{})
	sm, err := e.f.Trusted.Sign(artifact.Manifest{Name: "pricing", Version: "huge", Kind: artifact.KindWasm,
		Digest: artifact.DigestOf(nil), Size: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	body := &watchedBody{stop: make(chan struct{})}
	defer close(body.stop)
	req, err := http.NewRequestWithContext(ctxT(t, 30*time.Second), http.MethodPost, "http://hotswap/v1/modules/pricing/load", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = 1 << 40
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Expect", "100-continue")
	req.Header.Set(control.LabelHeader, "huge.wasm")
	req.Header.Set(control.ManifestHeader, base64.StdEncoding.EncodeToString(raw))
	resp, err := rawClient(e.socket).Do(req)
	if err != nil {
		t.Fatalf("POST load = %v", err)
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if !strings.Contains(string(answer), `"check":"payload"`) || !strings.Contains(string(answer), "payload too large") {
		t.Errorf("answer = %s; want a refusal at the payload check", answer)
	}
	if body.read.Load() {
		t.Error("the client was asked for the body of an upload its manifest refused")
	}
}

// TestMalformedRequestsAudited: malformed requests are refused and
// recorded, at most BadRequestBurst of a burst.
func TestMalformedRequestsAudited(t *testing.T) {
	e := newEnv(t, envOptions{})
	hc := rawClient(e.socket)
	for i := range 3 * control.BadRequestBurst {
		var req *http.Request
		switch i % 3 {
		case 0:
			req, _ = http.NewRequest(http.MethodGet, "http://hotswap/v1/nothing", nil)
		case 1:
			req, _ = http.NewRequest(http.MethodPost, "http://hotswap/v1/upgrade", strings.NewReader("{not json"))
		case 2:
			req, _ = http.NewRequest(http.MethodPost, "http://hotswap/v1/modules/pricing/load", strings.NewReader("x"))
			req.Header.Set(control.ManifestHeader, "%%% not base64")
		}
		resp, err := hc.Do(req.WithContext(ctxT(t, 30*time.Second)))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 4 {
			t.Errorf("request %d: HTTP %d; want a 4xx refusal", i, resp.StatusCode)
		}
	}
	evs, err := e.h.History(ctxT(t, 10*time.Second), audit.Filter{Target: "control", Action: control.ActionRequest})
	if err != nil {
		t.Fatal(err)
	}
	// The burst passes; the rest of the 30 requests, sent within a second
	// or two, adds at most a couple of records.
	if len(evs) < control.BadRequestBurst || len(evs) > control.BadRequestBurst+5 {
		t.Fatalf("%d audit records of malformed requests; want about %d (the burst)", len(evs), control.BadRequestBurst)
	}
	for _, ev := range evs {
		if ev.Result != audit.ResultRefused || ev.Actor == "" || ev.Error == "" {
			t.Errorf("audit record %+v; want a refusal naming the peer and the error", ev)
		}
	}
}

// TestCanceledLoad: a client that gives up during a load gets a canceled
// error (exit code 4 in the CLI), and the service records the load as
// canceled; what served keeps serving.
func TestCanceledLoad(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.load(t, e.artifact(t, v1, "v1"))
	ctx, cancel := context.WithCancel(ctxT(t, time.Minute))
	start := time.Now()
	// The module initializes forever: only the cancellation (or InitTimeout,
	// 10 s by default) can end its preparation.
	_, err := e.client.Load(ctx, "pricing", e.artifact(t, "./examples/pricing/guests/broken/loopinit", "loop"), func(p control.Progress) {
		if p.Step == "prepare" {
			cancel()
		}
	})
	if !errors.Is(err, control.ErrCanceled) || errors.Is(err, control.ErrUnreachable) {
		t.Fatalf("Load() canceled = %v; want ErrCanceled", err)
	}
	var ev audit.Event
	deadline := time.Now().Add(8 * time.Second)
	for {
		evs, err := e.h.History(context.Background(), audit.Filter{Target: "pricing", Limit: 1})
		if err == nil && len(evs) == 1 && evs[0].Result != audit.ResultStarted {
			ev = evs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no outcome recorded for the canceled load within 8s of its start (history: %+v)", evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ev.Result != audit.ResultCanceled || ev.Artifact != "loopinit.wasm" {
		t.Errorf("audit record of the canceled load = %+v after %v; want canceled", ev, time.Since(start))
	}
	if got, err := e.quote(ctxT(t, 10*time.Second)); err != nil || got != "v1" {
		t.Errorf("quote after a canceled load = %q, %v; want v1", got, err)
	}
}
