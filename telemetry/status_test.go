package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/host"

	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/telemetry"
	"github.com/hotswapgo/hotswap/upgrade"
)

// ArtifactsEnv names a directory where tests keep what a person should
// look at after a CI run (the status page screenshot); .ci/run sets it.
// Without it they write under t.TempDir().
const artifactsEnv = "HOTSWAP_ARTIFACTS"

// TestStatusJSON checks the status page's feed after a swap.
func TestStatusJSON(t *testing.T) {
	r := newRig(t, testhost.HostOptions{})
	r.load(t, r.v1)
	r.calls(t, 4)
	r.load(t, r.v2)
	r.calls(t, 2)
	addr := serve(t, telemetry.AdminHandler(r.h, r.reg))
	res, err := http.Get("http://" + addr + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var snap telemetry.StatusSnapshot
	if err := json.NewDecoder(res.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Modules) != 1 || snap.Modules[0].Name != "pricing" {
		t.Fatalf("modules = %+v; want pricing", snap.Modules)
	}
	roles := map[string]string{}
	calls := map[string]uint64{}
	for _, v := range snap.Modules[0].Versions {
		roles[v.Version], calls[v.Version] = v.Role, v.Calls
	}
	if roles["v2"] != "active" || roles["v1"] != "previous" || calls["v1"] != 4 || calls["v2"] != 2 {
		t.Errorf("versions = %+v; want v2 active with 2 calls, v1 previous with 4", snap.Modules[0].Versions)
	}
	if snap.TrustMode != "enforce" || snap.Process.Generation != 1 || snap.Process.Phase != "idle" {
		t.Errorf("trust %q, generation %d, upgrade phase %q; want enforce, 1, idle", snap.TrustMode, snap.Process.Generation, snap.Process.Phase)
	}
	if len(snap.Audit) == 0 || snap.Audit[0].Action != "swap" || !strings.HasPrefix(snap.Audit[0].To, "v2@") {
		t.Errorf("audit tail starts with %+v; want the swap to v2", snap.Audit[:min(len(snap.Audit), 1)])
	}
}

// TestStatusPageInChromium opens the status page in headless Chromium
// while calls run, swaps pricing from v1 to v2, and checks that the page
// shows the swap: v2 active, v1 previous, the swap in the audit tail. Then
// it starts a binary upgrade to a signed stand-in that never says ready
// and checks that the page shows its phase, and the failure once the
// stand-in exits. It saves a screenshot taken during the upgrade (to
// $HOTSWAP_ARTIFACTS when set).
func TestStatusPageInChromium(t *testing.T) {
	chromium := lookPath(t, "chromium", "chromium")
	release := filepath.Join(t.TempDir(), "release")
	r := newRig(t, testhost.HostOptions{Upgrade: &upgrade.Options{NoSignals: true, UpgradeTimeout: time.Minute,
		Env: []string{"RELEASE=" + release}}})
	// The stand-in for a new binary: it waits until the test releases it,
	// then exits before saying ready, so the upgrade fails harmlessly.
	standIn := r.f.Sign(t, r.f.Trusted, "svc-next", []byte("#!/bin/sh\n"+
		"while [ ! -e \"$RELEASE\" ]; do sleep 0.05; done\necho released by the test >&2\nexit 3\n"),
		artifact.Manifest{Name: "svc", Version: "2", Kind: artifact.KindBinary})
	r.load(t, r.v1)
	addr := serve(t, telemetry.AdminHandler(r.h, r.reg))

	testhost.KeyedCalls(t, r.h.Module("pricing"), 1)

	profile := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.UserDataDir(profile), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1200, 900))...)
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer func() {
		cancelBrowser()
		cancelAlloc()
		deadline := time.Now().Add(10 * time.Second)
		for pids := processesUsing(profile); len(pids) > 0; pids = processesUsing(profile) {
			if time.Now().After(deadline) {
				t.Errorf("chromium processes %v still run 10s after the test", pids)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	activeRow := func(v string) string { return `#modules tr[data-role="active"][data-version="` + v + `"]` }
	if err := chromedp.Do(browser,
		chromedp.Navigate("http://"+addr+"/"),
		chromedp.WaitVisible(chromedp.CSS(activeRow("v1"))),
	); err != nil {
		t.Fatalf("open the status page: %v", err)
	}
	before, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS(`#modules tbody`)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(before, "v2") {
		t.Fatalf("the page shows v2 before the swap: %q", before)
	}

	r.load(t, r.v2)
	if err := chromedp.Do(browser,
		chromedp.WaitVisible(chromedp.CSS(activeRow("v2"))),
		chromedp.WaitVisible(chromedp.CSS(`#modules tr[data-role="previous"][data-version="v1"]`)),
	); err != nil {
		t.Fatalf("the page did not show the swap: %v", err)
	}
	after, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS(`#modules tbody`)))
	if err != nil {
		t.Fatal(err)
	}
	audit, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS(`#audit tbody`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(audit, "swap") || !strings.Contains(audit, "v2") {
		t.Errorf("audit tail on the page = %q; want the swap to v2", audit)
	}
	// The chart draws both versions' rates (two points each at least)
	// and marks the swap.
	if _, err := chromedp.Run(browser, chromedp.Poll[bool](`(() => {
			const c = document.querySelector('#modules canvas[data-module="pricing"]');
			return c !== null && c.dataset.lines === "2" && c.dataset.swaps === "1"; })()`,
		chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
		t.Fatalf("the chart shows no lines for v1 and v2 and no swap: %v", err)
	}
	upgradeBadge := func(phase string) chromedp.Action[chromedp.Void] {
		return chromedp.WaitVisible(chromedp.CSS(`#upgrade[data-phase="` + phase + `"]`))
	}
	if err := chromedp.Do(browser, upgradeBadge("idle")); err != nil {
		t.Fatalf("the page shows no idle upgrade badge: %v", err)
	}
	upgraded := make(chan error, 1)
	go func() {
		_, err := r.h.Upgrade(host.WithActor(testhost.Context(t, timeout), "test"), standIn)
		upgraded <- err
	}()
	if err := chromedp.Do(browser, upgradeBadge("waiting for ready")); err != nil {
		t.Fatalf("the page did not show the upgrade waiting for its new process: %v", err)
	}
	during, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS(`#upgrade`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(during, "upgrade: waiting for ready (pid ") {
		t.Errorf("upgrade badge during the upgrade = %q; want the phase and the new pid", during)
	}
	shot, err := chromedp.Run(browser, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-upgraded:
		if !errors.Is(err, upgrade.ErrChildExited) {
			t.Errorf("Upgrade(stand-in) = %v; want %v", err, upgrade.ErrChildExited)
		}
	case <-time.After(timeout):
		t.Fatal("the upgrade did not end after the stand-in was released")
	}
	if err := chromedp.Do(browser, upgradeBadge("idle")); err != nil {
		t.Fatalf("the page did not show the upgrade ended: %v", err)
	}
	ended, err := chromedp.Run(browser, chromedp.Text(chromedp.CSS(`#upgrade`)))
	if err != nil {
		t.Fatal(err)
	}
	if ended != "upgrade: idle · last: failed" {
		t.Errorf("upgrade badge after the upgrade = %q; want %q", ended, "upgrade: idle · last: failed")
	}
	if _, err := png.DecodeConfig(bytes.NewReader(shot)); err != nil {
		t.Fatalf("the screenshot is not a PNG image: %v", err)
	}
	dir := os.Getenv(artifactsEnv)
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "status-page.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("status page before the swap: %q; after: %q; upgrade badge during the upgrade: %q; screenshot %s", before, after, during, path)
}

// processesUsing returns the PIDs of the processes whose command line
// names dir.
func processesUsing(dir string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(dir)) {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// TestStatusAuditTailCached checks that the status feed reads the audit
// log again only when it changed: an edit that keeps the file's size and
// time is not seen (the tail was kept), a new event is.
func TestStatusAuditTailCached(t *testing.T) {
	r := newRig(t, testhost.HostOptions{})
	r.load(t, r.v1)
	addr := serve(t, telemetry.AdminHandler(r.h, r.reg))
	get := func() telemetry.StatusSnapshot {
		t.Helper()
		res, err := http.Get("http://" + addr + "/status.json")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var snap telemetry.StatusSnapshot
		if err := json.NewDecoder(res.Body).Decode(&snap); err != nil {
			t.Fatal(err)
		}
		return snap
	}
	targets := func(s telemetry.StatusSnapshot) []string {
		var out []string
		for _, e := range s.Audit {
			out = append(out, e.Target)
		}
		return out
	}
	first := get()
	if len(first.Audit) == 0 || first.Audit[0].Target != "pricing" {
		t.Fatalf("audit tail = %v; want the load of pricing", targets(first))
	}

	// Rename the target in place, keeping the file's size and times.
	path := r.h.AuditPath()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.ReplaceAll(data, []byte(`"target":"pricing"`), []byte(`"target":"pricinX"`))
	if bytes.Equal(edited, data) {
		t.Fatalf("the audit log names no target pricing:\n%s", data)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(edited, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if got := targets(get()); !slices.Equal(got, targets(first)) {
		t.Errorf("audit tail after an edit that kept the file's size and time = %v; want the kept %v", got, targets(first))
	}

	// A new event changes the file: the tail is read again.
	r.load(t, r.v2)
	second := get()
	if len(second.Audit) < 2 || second.Audit[0].Target != "pricing" || second.Audit[len(second.Audit)-1].Target != "pricinX" {
		t.Errorf("audit tail after a new event = %v; want it first, and the edited events read again", targets(second))
	}
}
