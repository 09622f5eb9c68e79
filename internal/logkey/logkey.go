// Package logkey names the slog keys every hotswap package logs with, so
// that one query finds a module, version or process across all of them
// (docs/observability.md lists them). Span attributes use the same words
// under the "hotswap." prefix. A test in this package fails on a log call
// that spells one of these keys, or a synonym, as a literal.
package logkey

// The keys.
const (
	Module     = "module"     // a module's name
	Version    = "version"    // a version's label, e.g. "v2"
	From       = "from"       // the version a change replaced
	Handler    = "handler"    // a module's handler, e.g. "quote"
	Digest     = "digest"     // an artifact's hex sha256
	Check      = "check"      // the check that refused a change, e.g. "signature", "init"
	Slot       = "slot"       // an eBPF program slot's name
	PID        = "pid"        // a process id
	Generation = "generation" // a process's generation (1 when started fresh)
	Path       = "path"       // a file, directory or socket path
	Err        = "err"        // the error
)
