package devloop

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/internal/guestbuild"
)

// buildModule builds module m, signs it and loads it into the service, and
// reports the outcome.
func (l *Loop) buildModule(ctx context.Context, m Module, files []string) {
	ev := Event{Target: m.Name, Files: files}
	l.builds++
	out := filepath.Join(l.opts.BuildDir, fmt.Sprintf("%s-%d.wasm", m.Name, l.builds))
	// The service keeps what it loads in its own store.
	defer removeBuild(out)
	start := time.Now()
	msg, err := run(guestbuild.Command(ctx, l.dir, l.pkgPath(m.Dir), out, ""))
	ev.Build = time.Since(start)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		ev.Kind, ev.Err, ev.Output = EventBuildFailed, err, msg
		ev.Version, ev.Digest = l.serving(ctx, m.Name)
		l.report(ev)
		return
	}
	sm, err := l.sign(ctx, out, m.Name, artifact.KindWasm)
	if err != nil {
		ev.Kind, ev.Err = EventRefused, err
		l.report(ev)
		return
	}
	if v, d := l.serving(ctx, m.Name); d == sm.Manifest.Digest.Hex() {
		ev.Kind, ev.Version, ev.Digest = EventUnchanged, v, d
		l.report(ev)
		return
	}
	res, err := l.opts.Client.LoadFile(ctx, m.Name, out, nil)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		ev.Kind, ev.Err = EventRefused, err
		if res != nil && res.Serving != nil {
			ev.Version, ev.Digest = res.Serving.Version, res.Serving.Digest
		}
		l.report(ev)
		return
	}
	ev.Kind, ev.Took = EventLoaded, time.Duration(res.TookMS)*time.Millisecond
	if res.Serving != nil {
		ev.Version, ev.Digest = res.Serving.Version, res.Serving.Digest
	}
	l.report(ev)
}

// buildService builds the service's binary and signs it, then upgrades the
// service to it, or starts it if the loop runs it and it is not running.
func (l *Loop) buildService(ctx context.Context, files []string) {
	ev := Event{Target: l.opts.ServiceName, Files: files}
	bin, err := l.buildBinary(ctx, &ev)
	if err != nil {
		return // reported
	}
	if l.svc == nil && len(l.opts.Run) > 0 {
		// It exited: start the new build.
		if err := l.start(ctx, bin, ev); err != nil {
			l.report(Event{Kind: EventExited, Target: ev.Target, Err: err})
		}
		return
	}
	defer removeBuild(bin)
	begin := time.Now()
	res, err := l.opts.Client.Upgrade(ctx, bin, nil)
	if ctx.Err() != nil {
		return
	}
	ev.Took = time.Since(begin)
	if res != nil {
		ev.PID, ev.OldPID = res.ServingPID, res.PID
	}
	if err != nil {
		ev.Kind, ev.Err = EventUpgradeFailed, err
		l.report(ev)
		return
	}
	ev.Kind = EventUpgraded
	l.report(ev)
}

// buildBinary builds and signs the service's binary; on failure it reports
// the event and returns an error.
func (l *Loop) buildBinary(ctx context.Context, ev *Event) (string, error) {
	l.builds++
	out := filepath.Join(l.opts.BuildDir, fmt.Sprintf("%s-%d", l.opts.ServiceName, l.builds))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, l.opts.ServicePkg)
	cmd.Dir = l.dir
	start := time.Now()
	msg, err := run(cmd)
	ev.Build = time.Since(start)
	if err == nil {
		var sm *artifact.SignedManifest
		if sm, err = l.sign(ctx, out, l.opts.ServiceName, artifact.KindBinary); err == nil {
			ev.Version, ev.Digest = sm.Manifest.Version, sm.Manifest.Digest.Hex()
			return out, nil
		}
		msg = ""
	}
	removeBuild(out)
	if ctx.Err() == nil {
		ev.Kind, ev.Err, ev.Output = EventBuildFailed, err, msg
		if l.svc != nil {
			ev.PID = l.svc.pid
		}
		if st, serr := l.opts.Client.Status(ctx); serr == nil {
			ev.PID = st.Process.PID
		}
		l.report(*ev)
	}
	return "", err
}

// startService starts the service the first time: building it first if
// the loop builds it.
func (l *Loop) startService(ctx context.Context) error {
	if l.opts.ServicePkg == "" {
		return l.start(ctx, "", Event{Target: l.serviceLabel()})
	}
	ev := Event{Target: l.opts.ServiceName}
	bin, err := l.buildBinary(ctx, &ev)
	if err != nil {
		return fmt.Errorf("devloop: build the service: %w", err)
	}
	return l.start(ctx, bin, ev)
}

// start runs the service (bin, if set, with Options.Run as its arguments)
// and waits until it answers on the control socket.
func (l *Loop) start(ctx context.Context, bin string, ev Event) error {
	argv := l.opts.Run
	if bin != "" {
		argv = append([]string{bin}, argv...)
	}
	begin := time.Now()
	svc, err := startProcess(l.dir, argv, l.opts.ServiceOutput)
	if err != nil {
		return fmt.Errorf("devloop: %w", err)
	}
	l.svc = svc
	if bin != "" {
		// The build started before is no longer needed: upgrades run
		// from the service's store.
		if l.binary != "" {
			removeBuild(l.binary)
		}
		l.binary = bin
	}
	wctx, cancel := context.WithTimeout(ctx, l.opts.StartTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		// The socket may be another service's, or a stale one: only an
		// answer from a process of ours counts.
		if st, err := l.opts.Client.Status(wctx); err == nil && svc.member(st.Process.PID) {
			ev.Kind, ev.PID, ev.Took = EventStarted, st.Process.PID, time.Since(begin)
			l.report(ev)
			return nil
		}
		select {
		case <-tick.C:
		case <-svc.done:
			l.svc = nil
			return fmt.Errorf("devloop: the service exited before it answered on %s:\n%s", l.opts.Client.Socket(), svc.tail())
		case <-wctx.Done():
			return fmt.Errorf("devloop: the service did not answer on %s within %v: %w", l.opts.Client.Socket(), l.opts.StartTimeout, wctx.Err())
		}
	}
}

// sign signs the build at path with the development key under a version
// label of its own: the build's number and its digest.
func (l *Loop) sign(ctx context.Context, path, name string, kind artifact.Kind) (*artifact.SignedManifest, error) {
	payload, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	version := fmt.Sprintf("dev.%d+%s", l.builds, artifact.DigestOf(payload).Hex()[:8])
	sm, err := l.opts.Signer.SignFile(ctx, path, artifact.Manifest{Name: name, Version: version, Kind: kind})
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", filepath.Base(path), err)
	}
	return sm, nil
}

// serving returns the version and digest of module name that serves; ""
// if none, or if the service cannot say.
func (l *Loop) serving(ctx context.Context, name string) (version, digest string) {
	st, err := l.opts.Client.Status(ctx)
	if err != nil {
		return "", ""
	}
	for _, m := range st.Modules {
		if m.Name == name && m.Active != nil {
			return m.Active.Version, m.Active.Digest
		}
	}
	return "", ""
}

// pkgPath returns the package path the go command takes for dir.
func (l *Loop) pkgPath(dir string) string {
	if rel, err := filepath.Rel(l.dir, dir); err == nil && within(l.dir, dir) {
		return "./" + filepath.ToSlash(rel)
	}
	return dir
}

// run runs a build command in a process group of its own, so that
// cancelling it stops the compilers it started too, and returns its output.
func run(cmd *exec.Cmd) (string, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		return err.Error(), err
	}
	return string(out), err
}

// removeBuild removes a build and its manifest.
func removeBuild(path string) {
	os.Remove(path)
	os.Remove(artifact.ManifestPath(path))
}
