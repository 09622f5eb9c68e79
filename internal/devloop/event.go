package devloop

import (
	"fmt"
	"strings"
	"time"
)

// EventKind says what happened.
type EventKind int

const (
	// EventLoaded: a module was built and its new version serves.
	EventLoaded EventKind = iota + 1
	// EventUnchanged: a build produced the version that serves already.
	EventUnchanged
	// EventBuildFailed: the build failed (Output holds the compiler's
	// messages); the version that served keeps serving.
	EventBuildFailed
	// EventRefused: the service refused the build (a failed self-test, a
	// refused signature, ...); the version that served keeps serving.
	EventRefused
	// EventUpgraded: the service's binary was built and a new process
	// serves (PID), after OldPID handed its listeners over.
	EventUpgraded
	// EventUpgradeFailed: the new binary did not take over (Err has the
	// new process's stderr tail); the old process keeps serving.
	EventUpgradeFailed
	// EventStarted: the loop started the service (PID) and it answers on
	// its control socket.
	EventStarted
	// EventExited: the service the loop started exited (Output holds the
	// tail of its output); a change of its sources starts it again.
	EventExited
)

// Event is one line of the loop's output.
type Event struct {
	Time time.Time
	Kind EventKind
	// Target is the module's name, or the service's.
	Target string
	// Files are the changed files that caused the build, relative to the
	// source tree; none for the first build.
	Files []string
	// Build is how long the build took; 0 if there was none.
	Build time.Duration
	// Version and Digest (hex) name what serves after the event: the new
	// version, or the one that kept serving.
	Version, Digest string
	// Took is how long the load or upgrade took.
	Took time.Duration
	// PID is the process serving after the event; OldPID the one it
	// replaced.
	PID, OldPID int
	// Output is the compiler's output of a failed build, or the tail of an
	// exited service's output.
	Output string
	// Err says why a build, load or upgrade failed.
	Err error
}

// Built reports whether a build ran for the event.
func (e Event) Built() bool { return e.Build > 0 }

// Styles for Format.
const (
	red   = "\x1b[31m"
	green = "\x1b[32m"
	reset = "\x1b[0m"
)

// Format returns the event as one line (plus the compiler's or the
// service's output, indented, after a failure), coloured with ANSI escapes
// if color is set.
func Format(e Event, color bool) string {
	paint := func(style, s string) string {
		if !color {
			return s
		}
		return style + s + reset
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-8s", e.Time.Format("15:04:05"), e.Target)
	if e.Built() {
		fmt.Fprintf(&b, " built %.2fs ", e.Build.Seconds())
	}
	serving := "nothing"
	switch {
	case e.Version != "":
		serving = e.Target + "@" + e.Version
	case e.PID != 0:
		serving = fmt.Sprintf("pid %d", e.PID)
	}
	switch e.Kind {
	case EventLoaded:
		fmt.Fprintf(&b, " %s %s (sha256:%s…) %v", paint(green, "loaded"), e.Version, short(e.Digest), e.Took.Round(time.Millisecond))
	case EventUnchanged:
		fmt.Fprintf(&b, " unchanged: %s serves already", serving)
	case EventBuildFailed:
		fmt.Fprintf(&b, " %s; %s keeps serving", paint(red, "build failed"), serving)
	case EventRefused:
		fmt.Fprintf(&b, " %s: %v", paint(red, "refused"), e.Err)
	case EventUpgraded:
		fmt.Fprintf(&b, " %s pid %d → %d (%s) %v", paint(green, "upgraded"), e.OldPID, e.PID, e.Version, e.Took.Round(time.Millisecond))
	case EventUpgradeFailed:
		fmt.Fprintf(&b, " %s: %v", paint(red, "upgrade failed"), e.Err)
	case EventStarted:
		fmt.Fprintf(&b, " started pid %d %v", e.PID, e.Took.Round(time.Millisecond))
	case EventExited:
		fmt.Fprintf(&b, " %s (pid %d)", paint(red, "exited"), e.PID)
		if e.Err != nil {
			fmt.Fprintf(&b, ": %v", e.Err)
		}
	}
	for _, line := range strings.Split(strings.TrimRight(e.Output, "\n"), "\n") {
		if line == "" {
			continue
		}
		if color && e.Kind == EventBuildFailed && !strings.HasPrefix(line, "#") {
			line = paint(red, line)
		}
		b.WriteString("\n    " + line)
	}
	return b.String()
}

func short(hex string) string {
	if len(hex) > 12 {
		return hex[:12]
	}
	return hex
}
