package goplugin

import (
	"errors"
	"os"
	"runtime/debug"
	"testing"
)

func buildInfo(goVersion string, settings map[string]string, deps ...*debug.Module) *debug.BuildInfo {
	info := &debug.BuildInfo{GoVersion: goVersion, Main: debug.Module{Path: "example.com/svc", Version: "(devel)"}, Deps: deps}
	for k, v := range settings {
		info.Settings = append(info.Settings, debug.BuildSetting{Key: k, Value: v})
	}
	return info
}

func TestCompatible(t *testing.T) {
	base := map[string]string{"CGO_ENABLED": "1", "GOOS": "linux", "GOARCH": "amd64", "GOAMD64": "v1", "-trimpath": "true"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range base {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	sys := &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:new"}
	host := &identity{info: buildInfo("go1.26.8", base, sys), hashes: map[string]string{"fmt": "AAAAAAAA"}}
	for _, tc := range []struct {
		name   string
		plugin *identity
		loaded map[string]string
		what   string // "" for compatible
	}{
		{"same build", &identity{info: buildInfo("go1.26.8", with("-buildmode", "plugin"), sys), hashes: map[string]string{"fmt": "AAAAAAAA", "own": "B"}}, nil, ""},
		{"Go version", &identity{info: buildInfo("go1.26.7", base, sys)}, nil, "Go version"},
		{"trimpath missing", &identity{info: buildInfo("go1.26.8", with("-trimpath", ""), sys)}, nil, "build setting -trimpath"},
		{"race added", &identity{info: buildInfo("go1.26.8", with("-race", "true"), sys)}, nil, "build setting -race"},
		{"tags", &identity{info: buildInfo("go1.26.8", with("-tags", "x"), sys)}, nil, "build setting -tags"},
		{"GOAMD64", &identity{info: buildInfo("go1.26.8", with("GOAMD64", "v3"), sys)}, nil, "build setting GOAMD64"},
		{"CGO_ENABLED", &identity{info: buildInfo("go1.26.8", with("CGO_ENABLED", "0"), sys)}, nil, "build setting CGO_ENABLED"},
		{"dependency version", &identity{info: buildInfo("go1.26.8", base, &debug.Module{Path: "golang.org/x/sys", Version: "v0.45.0", Sum: "h1:old"})}, nil, "module golang.org/x/sys"},
		{"dependency sum", &identity{info: buildInfo("go1.26.8", base, &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:evil"})}, nil, "module golang.org/x/sys"},
		{"dependency replaced", &identity{info: buildInfo("go1.26.8", base, &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:new", Replace: &debug.Module{Path: "../sys"}})}, nil, "module golang.org/x/sys"},
		{"plugin-only dependency", &identity{info: buildInfo("go1.26.8", base, sys, &debug.Module{Path: "example.com/extra", Version: "v1.0.0"})}, nil, ""},
		{"package hash", &identity{info: buildInfo("go1.26.8", base, sys), hashes: map[string]string{"fmt": "BBBBBBBB"}}, nil, "package fmt"},
		{"package of an earlier plugin", &identity{info: buildInfo("go1.26.8", base, sys), hashes: map[string]string{"lib": "BBBBBBBB"}}, map[string]string{"lib": "CCCCCCCC"}, "package lib"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := compatible(host, tc.plugin, tc.loaded)
			var ie *IncompatibleError
			switch {
			case tc.what == "" && err != nil:
				t.Errorf("compatible() = %v; want nil", err)
			case tc.what != "" && (!errors.As(err, &ie) || ie.What != tc.what || !errors.Is(err, ErrIncompatible)):
				t.Errorf("compatible() = %v; want an IncompatibleError about %s", err, tc.what)
			}
		})
	}
}

// FuzzPluginIdentity feeds hostile bytes to the reader of a plugin's build
// identity, which runs on every artifact before anything else: it must fail
// cleanly, never panic.
func FuzzPluginIdentity(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00\x3e\x00"))
	f.Add([]byte("\xff Go buildinf:\x08\x02"))
	if exe, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(exe); err == nil && len(b) > 1<<16 {
			f.Add(b[:1<<16]) // a truncated ELF with real headers
		}
	}
	f.Fuzz(func(t *testing.T, so []byte) {
		id, err := pluginIdentity(so)
		if err == nil && (id.info == nil || setting(id.info, "-buildmode") != "plugin") {
			t.Fatalf("pluginIdentity() accepted a non-plugin: %+v", id)
		}
		if err != nil && !errors.Is(err, ErrNotPlugin) {
			t.Fatalf("pluginIdentity() = %v; want ErrNotPlugin", err)
		}
	})
}
