package devloop

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMatcher(t *testing.T) {
	root := filepath.FromSlash("/src/app")
	m, err := newMatcher(root, DefaultInclude, append(DefaultExclude, "gen", "internal/*.pb.go"), filepath.Join(root, "out"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want bool
	}{
		{"main.go", true},
		{"go.mod", true},
		{"pricing/main.go", true},
		{"pricing/main_test.go", false},
		{"README.md", false},
		{".git/HEAD", false},
		{"node_modules/x/index.go", false},
		{"bin/x.go", false},
		{"out/pricing-1.wasm", false},
		{"out/x.go", false},
		{"gen/x.go", false},
		{"internal/api.pb.go", false},
		{"internal/api.go", true},
		{"../other/main.go", false},
		{"main.go~", false},
	} {
		rel, got := m.counts(filepath.Join(root, filepath.FromSlash(tt.path)))
		if got != tt.want {
			t.Errorf("counts(%s) = %v; want %v", tt.path, got, tt.want)
		}
		if got && rel != tt.path {
			t.Errorf("counts(%s) names it %q; want %q", tt.path, rel, tt.path)
		}
	}
	if _, err := newMatcher(root, []string{"["}, nil, ""); err == nil {
		t.Error("newMatcher(include [) = nil; want a pattern error")
	}
}

func TestFormat(t *testing.T) {
	at := time.Date(2026, 1, 2, 12, 3, 4, 0, time.UTC)
	for _, tt := range []struct {
		ev    Event
		color bool
		want  string
	}{
		{Event{Time: at, Kind: EventLoaded, Target: "pricing", Build: 410 * time.Millisecond, Version: "dev.7+ab12cd34",
			Digest: "ab12cd34ef5678", Took: 23 * time.Millisecond}, false,
			"12:03:04 pricing  built 0.41s  loaded dev.7+ab12cd34 (sha256:ab12cd34ef56…) 23ms"},
		{Event{Time: at, Kind: EventBuildFailed, Target: "pricing", Build: time.Second, Version: "dev.6+00",
			Output: "# example.com/p\np/main.go:3:1: syntax error\n"}, false,
			"12:03:04 pricing  built 1.00s  build failed; pricing@dev.6+00 keeps serving\n    # example.com/p\n    p/main.go:3:1: syntax error"},
		{Event{Time: at, Kind: EventBuildFailed, Target: "pricing", Build: time.Second, Output: "p/main.go:3:1: bad\n"}, true,
			"12:03:04 pricing  built 1.00s  \x1b[31mbuild failed\x1b[0m; nothing keeps serving\n    \x1b[31mp/main.go:3:1: bad\x1b[0m"},
		{Event{Time: at, Kind: EventBuildFailed, Target: "svc", Build: time.Second, PID: 42}, false,
			"12:03:04 svc      built 1.00s  build failed; pid 42 keeps serving"},
		{Event{Time: at, Kind: EventRefused, Target: "pricing", Build: time.Second, Err: errors.New("selftest check failed")}, false,
			"12:03:04 pricing  built 1.00s  refused: selftest check failed"},
		{Event{Time: at, Kind: EventUpgraded, Target: "svc", Build: 2 * time.Second, OldPID: 1, PID: 2, Version: "dev.2+aa", Took: 130 * time.Millisecond}, false,
			"12:03:04 svc      built 2.00s  upgraded pid 1 → 2 (dev.2+aa) 130ms"},
	} {
		if got := Format(tt.ev, tt.color); got != tt.want {
			t.Errorf("Format() =\n%q\nwant\n%q", got, tt.want)
		}
	}
	if s := Format(Event{Time: at, Kind: EventExited, Target: "svc", PID: 3, Output: strings.Repeat("x", 10)}, false); !strings.Contains(s, "exited (pid 3)") {
		t.Errorf("Format(exited) = %q; want it to name the pid", s)
	}
}
