package goplugin

import (
	"bytes"
	"cmp"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
)

// compatSettings are the build settings that change the code of shared
// packages or how they link; host and plugin must agree on each. Settings
// not listed (-ldflags, -buildmode, CGO_CFLAGS, vcs.*) do not reach the
// package hashes the runtime compares.
var compatSettings = []string{
	"-compiler", "-race", "-msan", "-asan", "-trimpath", "-tags", "-gcflags",
	"CGO_ENABLED", "GOOS", "GOARCH", "GOEXPERIMENT",
	"GOAMD64", "GOARM64", "GOARM", "GO386", "GOPPC64", "GORISCV64", "GOMIPS", "GOMIPS64",
}

// pkgHashPrefix names the symbols in which the linker records each
// package's fingerprint, in plugins and in executables that can load them.
// plugin.Open compares them and fails, for good, on the first difference.
const pkgHashPrefix = "go:link.pkghashbytes."

// identity is what a binary says about how it was built.
type identity struct {
	info *debug.BuildInfo
	// hashes maps a package path to its link-time fingerprint; empty when
	// the symbols were stripped.
	hashes map[string]string
}

// hostIdentity reads the running executable's build info and, where its
// symbols are present, its package fingerprints.
func hostIdentity() (*identity, error) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil, errors.New("the host binary carries no build info (built without module support?)")
	}
	id := &identity{info: info}
	exe, err := os.Executable()
	if err != nil {
		return id, nil // the build info still gates; the hashes are a second check
	}
	f, err := elf.Open(exe)
	if err != nil {
		return id, nil
	}
	defer f.Close()
	id.hashes = packageHashes(f)
	return id, nil
}

// pluginIdentity reads a plugin's build info and package fingerprints from
// its bytes, without loading it.
func pluginIdentity(so []byte) (*identity, error) {
	f, err := elf.NewFile(bytes.NewReader(so))
	if err != nil {
		return nil, notPlugin("not an ELF shared object: %v", err)
	}
	defer f.Close()
	if f.Type != elf.ET_DYN {
		return nil, notPlugin("ELF type %v, want a shared object", f.Type)
	}
	info, err := buildinfo.Read(bytes.NewReader(so))
	if err != nil {
		return nil, notPlugin("no Go build info: %v", err)
	}
	if mode := setting(info, "-buildmode"); mode != "plugin" {
		return nil, notPlugin("built with -buildmode=%s, want plugin", cmp.Or(mode, "exe"))
	}
	return &identity{info: info, hashes: packageHashes(f)}, nil
}

// packageHashes returns the fingerprint of every package f records, from its
// dynamic symbols or, failing that, its symbol table.
func packageHashes(f *elf.File) map[string]string {
	hashes := make(map[string]string)
	for _, read := range []func() ([]elf.Symbol, error){f.DynamicSymbols, f.Symbols} {
		syms, err := read()
		if err != nil {
			continue
		}
		for _, s := range syms {
			pkg, ok := strings.CutPrefix(s.Name, pkgHashPrefix)
			if !ok || s.Size == 0 || s.Size > 64 || int(s.Section) >= len(f.Sections) {
				continue
			}
			sec := f.Sections[s.Section]
			if s.Value < sec.Addr || s.Value+s.Size > sec.Addr+sec.Size || sec.Type == elf.SHT_NOBITS {
				continue
			}
			b := make([]byte, s.Size)
			if _, err := sec.ReadAt(b, int64(s.Value-sec.Addr)); err != nil {
				continue
			}
			hashes[pkg] = string(b)
		}
		if len(hashes) > 0 {
			break
		}
	}
	return hashes
}

func setting(info *debug.BuildInfo, key string) string {
	for _, s := range info.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}

// compatible reports the first difference between the plugin's build and
// the host's that would make plugin.Open fail, or nil. loaded holds the
// package fingerprints of plugins already open in this process: a package
// they brought in must match too.
func compatible(host, plug *identity, loaded map[string]string) error {
	if host.info.GoVersion != plug.info.GoVersion {
		return &IncompatibleError{What: "Go version", Host: host.info.GoVersion, Plugin: plug.info.GoVersion}
	}
	for _, key := range compatSettings {
		h, p := setting(host.info, key), setting(plug.info, key)
		if h != p {
			return &IncompatibleError{What: "build setting " + key, Host: show(h), Plugin: show(p)}
		}
	}
	hostMods := make(map[string]*debug.Module, len(host.info.Deps)+1)
	hostMods[host.info.Main.Path] = &host.info.Main
	for _, d := range host.info.Deps {
		hostMods[d.Path] = d
	}
	for _, d := range append([]*debug.Module{&plug.info.Main}, plug.info.Deps...) {
		h := hostMods[d.Path]
		if h == nil {
			continue // a module only the plugin uses cannot clash
		}
		if hv, pv := moduleVersion(h), moduleVersion(d); hv != pv {
			return &IncompatibleError{What: "module " + d.Path, Host: hv, Plugin: pv}
		}
	}
	for pkg, p := range plug.hashes {
		if h, ok := host.hashes[pkg]; ok && h != p {
			return &IncompatibleError{What: "package " + pkg, Host: fmt.Sprintf("%x", h), Plugin: fmt.Sprintf("%x", p)}
		}
		if l, ok := loaded[pkg]; ok && l != p {
			return &IncompatibleError{What: "package " + pkg, Host: fmt.Sprintf("%x (from a plugin already loaded)", l), Plugin: fmt.Sprintf("%x", p)}
		}
	}
	return nil
}

// moduleVersion renders a module's version, sum and replacement.
func moduleVersion(m *debug.Module) string {
	s := m.Version
	if m.Sum != "" {
		s += " " + m.Sum
	}
	if r := m.Replace; r != nil {
		s += " => " + r.Path
		if r.Version != "" {
			s += " " + r.Version
		}
		if r.Sum != "" {
			s += " " + r.Sum
		}
	}
	return s
}

func show(v string) string {
	if v == "" {
		return "(unset)"
	}
	return v
}
