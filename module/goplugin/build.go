package goplugin

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/buildinfo"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultGoCmd is the go command Build runs.
const DefaultGoCmd = "go"

// guestImport is the SDK package a module imports, as WASM or as a plugin.
const guestImport = "github.com/hotswapgo/hotswap/guest"

// The SDK code a build adds: the plugin's side of package guest (in place of
// local.go), and the exported symbols Backend looks up.
var (
	//go:embed sdk/guest.go.txt
	sdkGuest string
	//go:embed sdk/main.go.txt
	sdkMain string
)

// BuildOptions configures Build. The zero value of each field means its
// default; Dir and Out are required.
type BuildOptions struct {
	// Dir is the module's main package, the same source that builds to WASM.
	// Its subdirectories are part of the plugin and get fresh import paths
	// too. Required.
	Dir string
	// Out is the .so file to write. Required.
	Out string
	// Name goes into the fresh import path. Defaults to the base name of Dir.
	Name string
	// Host is the build the plugin must match: its Go version, settings
	// (-race, -trimpath, -tags, -gcflags, CGO_ENABLED, GOOS, GOARCH,
	// GOAMD64, …) are mirrored. Defaults to the running binary's build
	// info; pass buildinfo.ReadFile of the service's binary to build for it.
	Host *debug.BuildInfo
	// GoCmd is the go command. Its version must be the host's. Defaults to
	// DefaultGoCmd ("go").
	GoCmd string
	// Vars sets string variables of the main package at link time, as
	// -ldflags "-X main.name=value" does for a binary (the plugin's main
	// package has another import path, which Build fills in). A -ldflags
	// in Flags replaces this. Defaults to none.
	Vars map[string]string
	// Flags are extra go build flags, after the mirrored ones. Defaults to
	// none.
	Flags []string
	// Env is extra environment for the go command. Defaults to none.
	Env []string
	// WorkDir receives the generated sources; Build removes what it wrote
	// there. Defaults to a new directory in os.TempDir().
	WorkDir string
}

// Built describes a plugin Build wrote.
type Built struct {
	// Path is the .so written (BuildOptions.Out).
	Path string
	// ImportPath is the plugin's main package path, fresh for this build.
	ImportPath string
	// Identity is what the plugin records about its build, which a host
	// compares with its own before opening it.
	Identity Identity
}

// Identity is a build's identity as the compatibility check sees it.
type Identity struct {
	GoVersion string            `json:"go_version"`
	Path      string            `json:"path"`
	Settings  map[string]string `json:"settings"`
	Modules   []string          `json:"modules"` // "path version sum [=> replacement]"
}

// Build builds the Go plugin of the module at opts.Dir so that a host built
// as opts.Host can open it: with the host's toolchain version and flags,
// -buildmode=plugin, and fresh import paths for the plugin's packages and
// its copy of package guest, so that every build, even of unchanged source,
// opens as a new plugin. The module's source is not modified: the renamed
// packages are given to the go command as an overlay.
//
// Packages the plugin imports from outside opts.Dir keep their import
// paths, so they must be identical in the host; the host's check names any
// that differ.
func Build(ctx context.Context, opts BuildOptions) (*Built, error) {
	if opts.Dir == "" || opts.Out == "" {
		return nil, errors.New("build plugin: BuildOptions.Dir and Out are required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	out, err := filepath.Abs(opts.Out)
	if err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	host := opts.Host
	if host == nil {
		var ok bool
		if host, ok = debug.ReadBuildInfo(); !ok {
			return nil, fmt.Errorf("build plugin %s: the running binary carries no build info", opts.Dir)
		}
	}
	if setting(host, "CGO_ENABLED") != "1" {
		return nil, fmt.Errorf("build plugin %s: the host was built with CGO_ENABLED=%s and cannot open plugins", opts.Dir, show(setting(host, "CGO_ENABLED")))
	}
	flags, env := mirror(host)
	g := &gocmd{cmd: cmp.Or(opts.GoCmd, DefaultGoCmd), env: append(append(os.Environ(), env...), opts.Env...)}

	lines, err := g.run(ctx, dir, "env", "GOVERSION", "GOMOD")
	if err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	if len(lines) < 2 || lines[1] == "" || lines[1] == os.DevNull {
		return nil, fmt.Errorf("build plugin %s: not inside a Go module", opts.Dir)
	}
	if lines[0] != host.GoVersion {
		return nil, fmt.Errorf("build plugin %s: %s is %s but the host was built with %s", opts.Dir, g.cmd, lines[0], host.GoVersion)
	}
	modRoot := filepath.Dir(lines[1])

	listArgs := append(append([]string{"list"}, flags...), opts.Flags...)
	listArgs = append(listArgs, "-f", "{{.Name}}|{{.ImportPath}}|{{.Module.Path}}|{{.Dir}}|{{join .GoFiles \",\"}}", ".", guestImport)
	pkgs, err := g.run(ctx, dir, listArgs...)
	if err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	if len(pkgs) != 2 {
		return nil, fmt.Errorf("build plugin %s: go list printed %d packages, want 2", opts.Dir, len(pkgs))
	}
	self, guest := strings.Split(pkgs[0], "|"), strings.Split(pkgs[1], "|")
	if len(self) != 5 || len(guest) != 5 {
		return nil, fmt.Errorf("build plugin %s: unexpected go list output %q", opts.Dir, pkgs)
	}
	if self[0] != "main" {
		return nil, fmt.Errorf("build plugin %s: package %s is %q, want a main package", opts.Dir, self[1], self[0])
	}
	modPath := self[2]

	// The fresh root lives inside the module, so the plugin resolves its
	// dependencies with the module's go.mod, like the host.
	stamp := make([]byte, 4)
	rand.Read(stamp)
	name := safeName(cmp.Or(opts.Name, filepath.Base(dir)))
	fresh := fmt.Sprintf("hotswapbuild_%s_%s%s", strings.ToLower(name), strconv.FormatInt(time.Now().Unix(), 36), hex.EncodeToString(stamp))
	freshImport, freshDir := path.Join(modPath, fresh), filepath.Join(modRoot, fresh)

	work := opts.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "hotswap-build-"); err != nil {
			return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
		}
		defer os.RemoveAll(work)
	} else if work, err = os.MkdirTemp(work, "build-"); err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	} else {
		defer os.RemoveAll(work)
	}
	ov := &overlay{work: work, replace: make(map[string]string)}
	rename := map[string]string{self[1]: freshImport + "/main", guestImport: freshImport + "/guest"}
	if err := ov.addTree(dir, filepath.Join(freshDir, "main"), rename); err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	for _, f := range strings.Split(guest[4], ",") {
		if f != "local.go" { // replaced by the plugin side of the SDK
			ov.replace[filepath.Join(freshDir, "guest", f)] = filepath.Join(guest[3], f)
		}
	}
	if err := ov.add(filepath.Join(freshDir, "guest", "hotswap_plugin.go"), sdkGuest); err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	shim := strings.NewReplacer("HOTSWAP_GUEST_IMPORT", freshImport+"/guest", "HOTSWAP_PLUGIN_ABI", strconv.Itoa(PluginABI)).Replace(sdkMain)
	if err := ov.add(filepath.Join(freshDir, "main", "zz_hotswap_plugin.go"), shim); err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	ovFile, err := ov.write()
	if err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}

	args := append([]string{"build", "-buildmode=plugin", "-overlay", ovFile, "-o", out}, flags...)
	if len(opts.Vars) > 0 {
		var x []string
		for _, k := range slices.Sorted(maps.Keys(opts.Vars)) {
			x = append(x, "-X", strconv.Quote(freshImport+"/main."+k+"="+opts.Vars[k]))
		}
		args = append(args, "-ldflags="+strings.Join(x, " "))
	}
	args = append(append(args, opts.Flags...), freshImport+"/main")
	if _, err := g.run(ctx, modRoot, args...); err != nil {
		return nil, fmt.Errorf("build plugin %s: %w", opts.Dir, err)
	}
	info, err := buildinfo.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("build plugin %s: read the build info of %s: %w", opts.Dir, out, err)
	}
	return &Built{Path: out, ImportPath: freshImport + "/main", Identity: identityOf(info)}, nil
}

// mirror returns the go build flags and environment that reproduce host's
// build settings.
func mirror(host *debug.BuildInfo) (flags, env []string) {
	env = []string{"CGO_ENABLED=1"}
	for _, s := range host.Settings {
		switch s.Key {
		case "-race", "-msan", "-asan", "-trimpath":
			if s.Value == "true" {
				flags = append(flags, s.Key)
			}
		case "-tags", "-gcflags":
			flags = append(flags, s.Key+"="+s.Value)
		case "GOOS", "GOARCH", "GOEXPERIMENT", "GOAMD64", "GOARM64", "GOARM", "GO386", "GOPPC64", "GORISCV64", "GOMIPS", "GOMIPS64":
			env = append(env, s.Key+"="+s.Value)
		}
	}
	return flags, env
}

// identityOf extracts what the compatibility check compares.
func identityOf(info *debug.BuildInfo) Identity {
	id := Identity{GoVersion: info.GoVersion, Path: info.Path, Settings: make(map[string]string)}
	for _, key := range compatSettings {
		if v := setting(info, key); v != "" {
			id.Settings[key] = v
		}
	}
	for _, m := range append([]*debug.Module{&info.Main}, info.Deps...) {
		id.Modules = append(id.Modules, m.Path+" "+moduleVersion(m))
	}
	return id
}

// Digest returns a short hash of the identity, e.g. for a manifest's ABI
// field.
func (id Identity) Digest() string {
	b, _ := json.Marshal(id) // map keys are sorted: stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// gocmd runs the go command.
type gocmd struct {
	cmd string
	env []string
}

// run runs the go command in dir and returns its output lines.
func (g *gocmd) run(ctx context.Context, dir string, args ...string) ([]string, error) {
	cmd := exec.CommandContext(ctx, g.cmd, args...)
	cmd.Dir, cmd.Env = dir, g.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 4096 {
			msg = "…" + msg[len(msg)-4096:]
		}
		return nil, fmt.Errorf("%s %s: %w\n%s", g.cmd, args[0], err, msg)
	}
	return strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n"), nil
}

// overlay collects the files of a go command overlay: each virtual path
// inside the module and the real file backing it.
type overlay struct {
	work    string
	replace map[string]string
	n       int
}

// add backs the virtual path with content.
func (o *overlay) add(virtual, content string) error {
	o.n++
	real := filepath.Join(o.work, fmt.Sprintf("%d-%s", o.n, filepath.Base(virtual)))
	if err := os.WriteFile(real, []byte(content), 0o600); err != nil {
		return err
	}
	o.replace[virtual] = real
	return nil
}

// addTree adds the Go files of the package tree at src under dst, with the
// import paths in rename (and their subpackages) rewritten.
func (o *overlay) addTree(src, dst string, rename map[string]string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != src && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || exists(filepath.Join(p, "go.mod"))) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") || !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		content, err := rewriteImports(p, rename)
		if err != nil {
			return err
		}
		return o.add(filepath.Join(dst, rel), content)
	})
}

// write writes the overlay file and returns its path.
func (o *overlay) write() (string, error) {
	b, err := json.Marshal(struct{ Replace map[string]string }{o.replace})
	if err != nil {
		return "", err
	}
	p := filepath.Join(o.work, "overlay.json")
	return p, os.WriteFile(p, b, 0o600)
}

// rewriteImports returns the Go file at p with every import of a path in
// rename, or of a package below one, renamed.
func rewriteImports(p string, rename map[string]string) (string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
	if err != nil {
		return "", err
	}
	for _, imp := range f.Imports {
		old, err := strconv.Unquote(imp.Path.Value)
		if err != nil {
			return "", fmt.Errorf("%s: import %s: %w", p, imp.Path.Value, err)
		}
		for from, to := range rename {
			if old == from || strings.HasPrefix(old, from+"/") {
				imp.Path.Value = strconv.Quote(to + old[len(from):])
				break
			}
		}
	}
	var buf bytes.Buffer
	if err := format.Node(&buf, fset, f); err != nil {
		return "", err
	}
	return buf.String(), nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
