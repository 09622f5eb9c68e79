// Package devloop is the development loop behind "hotswap watch": it
// watches a source tree, waits until a burst of saves has settled, and
// then, for each module whose sources changed, builds the guest, signs it
// with a development key and loads it into the running service through its
// control socket; for a change of the service's own sources it builds,
// signs and upgrades the binary (listeners handed over). A build, a
// self-test or a start that fails leaves the last good version serving, and
// the loop reports why.
//
// The loop owns no load or upgrade logic: it is a client of the control
// socket, like "hotswap load" and "hotswap upgrade".
package devloop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/control"
	"github.com/hotswapgo/hotswap/internal/logkey"
)

// DefaultDebounce is how long the sources must stay unchanged after a save
// before the loop builds.
const DefaultDebounce = 200 * time.Millisecond

// DefaultStartTimeout bounds how long a service the loop started may take
// to answer on its control socket.
const DefaultStartTimeout = 2 * time.Minute

// DefaultInclude are the base-name patterns of the files whose changes
// count.
var DefaultInclude = []string{"*.go", "go.mod", "go.sum"}

// DefaultExclude are the patterns of files and directories never watched:
// version control, dependencies, build outputs and tests.
var DefaultExclude = []string{".git", ".hg", "node_modules", "bin", "dist", "*_test.go"}

// Module is a module whose sources the loop watches.
type Module struct {
	// Name is the module's name in the service.
	Name string
	// Dir is the guest package's directory, relative to Options.Dir or
	// absolute; a change of any watched file under it rebuilds the module.
	Dir string
}

// Options configures a Loop. The zero value of each field means its
// default; Client, Signer and BuildDir are required.
type Options struct {
	// Dir is the source tree: the root of the watched files and the
	// directory builds run in. Defaults to ".".
	Dir string
	// Modules are the modules to build and load. Defaults to none.
	Modules []Module
	// ServicePkg is the Go package of the service's binary (e.g.
	// "./cmd/mysvc"): a change of a watched file outside every module's
	// directory rebuilds it and upgrades the service to it. Defaults to "":
	// those changes are ignored.
	ServicePkg string
	// ServiceName is the name the service's binaries are signed with (see
	// host.Options.Service). Defaults to the last element of ServicePkg.
	ServiceName string
	// Run starts the service: with ServicePkg, the arguments of the built
	// binary; without, a whole command (e.g. "go", "run", "./cmd/mysvc").
	// The loop stops it, and every process it started, when Run returns.
	// Defaults to nil: the service runs already.
	Run []string
	// ServiceOutput receives the started service's standard output and
	// error. Defaults to discarding.
	ServiceOutput io.Writer
	// StartTimeout bounds how long a started service may take to answer
	// on the control socket. Defaults to DefaultStartTimeout (2m).
	StartTimeout time.Duration
	// Client talks to the service's control socket. Required.
	Client *control.Client
	// Signer signs every build: the development key, which the service
	// must trust (host.Options.DevTrustDir). Required.
	Signer *artifact.Signer
	// BuildDir receives the builds; it is never watched. Required.
	BuildDir string
	// Debounce is how long the sources must stay unchanged after a save
	// before a build. Defaults to DefaultDebounce (200ms).
	Debounce time.Duration
	// Include are base-name patterns (filepath.Match) of the files whose
	// changes count. Defaults to DefaultInclude.
	Include []string
	// Exclude are patterns of files and directories to ignore, matched
	// against each path element and against the slash-separated path
	// relative to Dir; added to DefaultExclude.
	Exclude []string
	// Report receives every event, in order, from Run's goroutine.
	// Defaults to discarding them.
	Report func(Event)
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Loop is the development loop. Run it once; it is not safe for concurrent
// use.
type Loop struct {
	opts    Options
	dir     string // absolute Options.Dir
	modules []Module
	match   matcher
	log     *slog.Logger
	builds  int      // numbers the builds, for version labels
	svc     *service // the service the loop started; nil if none
	binary  string   // the build the loop started the service from, if any
}

// New validates opts and returns a Loop.
func New(opts Options) (*Loop, error) {
	if opts.Client == nil || opts.Signer == nil || opts.BuildDir == "" {
		return nil, errors.New("devloop: Options.Client, Signer and BuildDir are required")
	}
	if opts.Debounce < 0 || opts.StartTimeout < 0 {
		return nil, fmt.Errorf("devloop: negative Debounce %v or StartTimeout %v", opts.Debounce, opts.StartTimeout)
	}
	opts.Debounce = cmpOr(opts.Debounce, DefaultDebounce)
	opts.StartTimeout = cmpOr(opts.StartTimeout, DefaultStartTimeout)
	if opts.ServicePkg != "" && opts.ServiceName == "" {
		opts.ServiceName = path.Base(filepath.ToSlash(opts.ServicePkg))
	}
	if opts.Report == nil {
		opts.Report = func(Event) {}
	}
	if opts.ServiceOutput == nil {
		opts.ServiceOutput = io.Discard
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cmpOr(opts.Dir, "."))
	if err != nil {
		return nil, fmt.Errorf("devloop: %w", err)
	}
	buildDir, err := filepath.Abs(opts.BuildDir)
	if err != nil {
		return nil, fmt.Errorf("devloop: %w", err)
	}
	opts.BuildDir = buildDir
	l := &Loop{opts: opts, dir: dir, log: log}
	seen := map[string]bool{}
	for _, m := range opts.Modules {
		if m.Name == "" || m.Dir == "" {
			return nil, fmt.Errorf("devloop: module %q in %q: want a name and a directory", m.Name, m.Dir)
		}
		if seen[m.Name] {
			return nil, fmt.Errorf("devloop: module %s given twice", m.Name)
		}
		seen[m.Name] = true
		abs := m.Dir
		if !filepath.IsAbs(abs) {
			abs = filepath.Join(dir, abs)
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("devloop: module %s: %s is not a directory", m.Name, m.Dir)
		}
		l.modules = append(l.modules, Module{Name: m.Name, Dir: abs})
	}
	if len(l.modules) == 0 && opts.ServicePkg == "" {
		return nil, errors.New("devloop: nothing to watch: give a module or the service's package")
	}
	include := opts.Include
	if len(include) == 0 {
		include = DefaultInclude
	}
	l.match, err = newMatcher(dir, include, append(slices.Clone(DefaultExclude), opts.Exclude...), buildDir)
	if err != nil {
		return nil, fmt.Errorf("devloop: %w", err)
	}
	return l, nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Run starts the service if Options.Run says so, builds and loads every
// module once, then rebuilds what each settled change touches until ctx
// ends. It then stops the service it started (every process of it) and
// returns nil; it returns an error only if the loop could not start
// (watching the tree failed, or the started service never answered).
// Failed builds, loads and upgrades are reported, not returned.
func (l *Loop) Run(ctx context.Context) (err error) {
	if err := os.MkdirAll(l.opts.BuildDir, 0o700); err != nil {
		return fmt.Errorf("devloop: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("devloop: watch %s: %w", l.dir, err)
	}
	defer w.Close()
	if err := l.watchTree(w, l.dir); err != nil {
		return err
	}
	defer func() {
		if l.binary != "" {
			removeBuild(l.binary) // after the service stopped
		}
	}()
	defer func() {
		if l.svc == nil {
			return
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		defer cancel()
		if serr := l.svc.stop(sctx); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	if len(l.opts.Run) > 0 {
		if err := l.startService(ctx); err != nil {
			return err
		}
	}
	for _, m := range l.modules {
		l.buildModule(ctx, m, nil)
	}

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	pending := map[string][]string{} // target → changed files (relative)
	for {
		var exited <-chan struct{}
		if l.svc != nil {
			exited = l.svc.done
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			return fmt.Errorf("devloop: watch %s: %w", l.dir, err)
		case <-exited:
			l.report(Event{Kind: EventExited, Target: l.serviceLabel(), PID: l.svc.pid, Output: l.svc.tail()})
			l.svc = nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() {
					if err := l.watchTree(w, ev.Name); err != nil {
						l.log.Warn("watch a new directory", logkey.Path, ev.Name, logkey.Err, err)
					}
				}
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			target, rel, ok := l.classify(ev.Name)
			if !ok {
				continue
			}
			if !slices.Contains(pending[target], rel) {
				pending[target] = append(pending[target], rel)
			}
			debounce.Reset(l.opts.Debounce)
		case <-debounce.C:
			for _, m := range l.modules {
				if files, ok := pending[m.Name]; ok {
					l.buildModule(ctx, m, files)
				}
			}
			if files, ok := pending[serviceTarget]; ok {
				l.buildService(ctx, files)
			}
			clear(pending)
		}
	}
}

// serviceTarget keys the service's own sources among the pending changes;
// no module can be named so (module names are file names).
const serviceTarget = "/service"

// classify names what a changed file belongs to: a module's name, or
// serviceTarget; ok is false for a file whose change does not count.
func (l *Loop) classify(name string) (target, rel string, ok bool) {
	rel, ok = l.match.counts(name)
	if !ok {
		return "", "", false
	}
	for _, m := range l.modules {
		if within(m.Dir, name) {
			return m.Name, rel, true
		}
	}
	if l.opts.ServicePkg == "" {
		return "", "", false
	}
	return serviceTarget, rel, true
}

// watchTree adds dir and every directory under it that is not excluded.
func (l *Loop) watchTree(w *fsnotify.Watcher, dir string) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return fmt.Errorf("devloop: watch %s: %w", p, err)
			}
			return nil // removed while walking
		}
		if !d.IsDir() {
			return nil
		}
		if p != l.dir && l.match.excluded(p) {
			return filepath.SkipDir
		}
		if err := w.Add(p); err != nil {
			return fmt.Errorf("devloop: watch %s: %w", p, err)
		}
		return nil
	})
}

func (l *Loop) report(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	l.opts.Report(ev)
}

func (l *Loop) serviceLabel() string { return cmpOr(l.opts.ServiceName, "service") }
