package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/host"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/module/wasm"
)

// watchHelperEnv makes TestWatchHelperProcess act: as "hotswap" (the
// arguments after -- are "cli" and the CLI's arguments) or as a service
// watch starts ("service STATE DEVTRUST SOCKET").
const watchHelperEnv = "HOTSWAP_TEST_WATCH_HELPER"

func TestWatchHelperProcess(t *testing.T) {
	if os.Getenv(watchHelperEnv) != "1" {
		return
	}
	args := flag.Args()
	switch {
	case len(args) > 0 && args[0] == "cli":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, args[1:], os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "hotswap:", err)
			os.Exit(exitCode(err))
		}
		os.Exit(0)
	case len(args) == 4 && args[0] == "service":
		if err := helperService(args[1], args[2], args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "service:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "helper: unknown arguments %q\n", args)
	os.Exit(2)
}

// helperService serves a host's control API on socket until SIGTERM, with
// a child process of its own, as a service may have.
func helperService(state, devTrust, socket string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	b, err := wasm.New(wasm.Options{CacheDir: filepath.Join(state, "cache")})
	if err != nil {
		return err
	}
	h, err := host.New(host.Options{Backend: b, StateDir: state, DevTrustDir: devTrust})
	if err != nil {
		return err
	}
	defer h.Close(context.Background())
	ln, err := control.Listen(ctx, h, socket)
	if err != nil {
		return err
	}
	srv, err := control.New(h, control.Options{})
	if err != nil {
		return err
	}
	go srv.Serve(ln)
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

func TestWatchStopsOnSIGINT(t *testing.T) {
	root, err := guestbuild.Root()
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	mod := fmt.Sprintf("module example.com/dev\n\ngo 1.26.0\n\nrequire github.com/hotswapgo/hotswap v0.0.0\n\nreplace github.com/hotswapgo/hotswap => %s\n", root)
	if err := os.WriteFile(filepath.Join(tree, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(tree, "pricing"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A guest that does not compile: the first build fails fast, and is
	// printed with file:line.
	bad := "package main\n\nfunc main() {\n\tundefinedThing()\n}\n"
	if err := os.WriteFile(filepath.Join(tree, "pricing", "main.go"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	socket := testhost.SocketPath(t)
	devTrust := filepath.Join(state, "dev", "trust")

	cmd := exec.Command(os.Args[0], "-test.run=^TestWatchHelperProcess$", "--", "cli",
		"--socket", socket, "watch", "--dir", tree, "--module", "pricing=pricing", "--color", "never",
		"--", os.Args[0], "-test.run=^TestWatchHelperProcess$", "--", "service", filepath.Join(state, "svc"), devTrust, socket)
	cmd.Env = append(os.Environ(), watchHelperEnv+"=1", host.StateDirEnv+"="+state)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{}) // closed once watch exited; then waitErr is set
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(time.Minute):
			t.Errorf("watch did not exit within a minute of SIGKILL")
		}
	})
	var stdout []string
	waitLine := func(re *regexp.Regexp) []string {
		t.Helper()
		deadline := time.After(3 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended before printing %v\nstdout:\n%s\nstderr:\n%s", re, strings.Join(stdout, "\n"), stderr.String())
				}
				t.Logf("%s watch: %s", time.Now().Format("15:04:05.000"), l)
				stdout = append(stdout, l)
				if m := re.FindStringSubmatch(l); m != nil {
					return m
				}
			case <-deadline:
				t.Fatalf("watch did not print %v within 3 minutes\nstdout:\n%s", re, strings.Join(stdout, "\n"))
			}
		}
	}
	m := waitLine(regexp.MustCompile(`service +started pid (\d+)`))
	group, _ := strconv.Atoi(m[1])
	t.Cleanup(func() {
		if t.Failed() {
			// watch may have been killed before it stopped the service.
			syscall.Kill(-group, syscall.SIGKILL)
		}
	})
	waitLine(regexp.MustCompile(`pricing +built .* build failed; nothing keeps serving`))
	waitLine(regexp.MustCompile(`pricing/main\.go:4:\d+: undefined: undefinedThing`))

	// The service runs for development: status says so.
	if o := mustCtl(t, socket, "status"); !strings.Contains(o, "development mode: keys of "+devTrust) {
		t.Errorf("status:\n%s\nwant it to say development mode with %s", o, devTrust)
	}

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitLine(regexp.MustCompile(`^watch: stopped$`))
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("watch exited with %v after SIGINT; want 0\nstderr:\n%s", waitErr, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("watch did not exit within a minute of SIGINT")
	}
	if err := syscall.Kill(-group, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kill(-%d, 0) = %v after watch exited; want ESRCH: a process of the service is left", group, err)
	}
}

func TestWatchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"watch"},
		{"watch", "--module", "pricing"},
		{"watch", "--module", "=dir"},
		{"watch", "--module", "p=.", "--debounce", "0s"},
		{"watch", "--module", "p=.", "--color", "sometimes"},
	} {
		_, _, code, err := ctl(t, testhost.SocketPath(t), args...)
		if code != 2 {
			t.Errorf("hotswap %q = %v (exit %d); want a usage error (exit 2)", args, err, code)
		}
	}
}
