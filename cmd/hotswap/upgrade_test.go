package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/upgrade"
)

func TestUpgradeRefused(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho 'boom: config missing' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	keeps := fmt.Sprintf("; pid %d keeps serving", os.Getpid())
	t.Run("no upgrader", func(t *testing.T) {
		s := newService(t, serviceOptions{})
		out, _, code, err := ctl(t, s.socket, "upgrade")
		if code != 1 || err.Error() != "upgrade failed: binary upgrades are not enabled in this service"+keeps || out != "" {
			t.Errorf("hotswap upgrade = %v (exit %d), output %q; want exit 1, not enabled%s", err, code, out, keeps)
		}
	})
	t.Run("bad binary", func(t *testing.T) {
		s := newService(t, serviceOptions{dev: true, upgrade: &upgrade.Options{NoSignals: true, UpgradeTimeout: 30 * time.Second}})
		out, errOut, code, err := ctl(t, s.socket, "upgrade", "--binary", bad)
		if code != 1 || err == nil {
			t.Fatalf("hotswap upgrade --binary bad = %v (exit %d), output %q; want exit 1", err, code, out)
		}
		msg := err.Error()
		for _, want := range []string{"upgrade failed: new process ", "failed during init", "exit status 3", keeps,
			"standard error of the new process (tail):\nboom: config missing"} {
			if !strings.Contains(msg, want) {
				t.Errorf("hotswap upgrade error = %q; want it to contain %q", msg, want)
			}
		}
		if !strings.Contains(errOut, "verify ") || !strings.Contains(errOut, "hand over") {
			t.Errorf("hotswap upgrade progress = %q; want verify and hand over", errOut)
		}
		st := mustCtl(t, s.socket, "status")
		if !strings.Contains(st, fmt.Sprintf("process  pid %d", os.Getpid())) || !strings.Contains(st, ": failed, new pid ") {
			t.Errorf("hotswap status after a failed upgrade = %q; want this pid, last attempt failed", st)
		}
	})
	t.Run("relative path", func(t *testing.T) {
		// The path is the caller's: resolved in the CLI's working
		// directory, not in the service's.
		s := newService(t, serviceOptions{upgrade: &upgrade.Options{NoSignals: true}})
		t.Chdir(filepath.Dir(bad))
		_, _, code, err := ctl(t, s.socket, "upgrade", "--binary", "./"+filepath.Base(bad))
		if code != 1 || !strings.HasPrefix(err.Error(), "upgrade refused: "+bad+": policy check failed") {
			t.Errorf("hotswap upgrade --binary ./bad from its directory = %v (exit %d); want the absolute path %s refused by the policy check", err, code, bad)
		}
	})
	t.Run("unsigned binary", func(t *testing.T) {
		s := newService(t, serviceOptions{upgrade: &upgrade.Options{NoSignals: true}})
		_, _, code, err := ctl(t, s.socket, "upgrade", "--binary", bad)
		if code != 1 || !strings.HasPrefix(err.Error(), "upgrade refused: "+bad+": policy check failed") || !strings.HasSuffix(err.Error(), keeps) {
			t.Errorf("hotswap upgrade --binary unsigned = %v (exit %d); want exit 1, policy check failed%s", err, code, keeps)
		}
	})
}
