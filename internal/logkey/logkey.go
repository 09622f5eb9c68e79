// Package logkey names the slog keys every hotswap package logs with, so
// that one query finds a module, version or process across all of them
// (docs/observability.md lists them). Span attributes use the same words
// under the "hotswap." prefix.
package logkey

// The keys.
const (
	Module     = "module"     // a module's name
	Version    = "version"    // a version's label, e.g. "v2"
	Digest     = "digest"     // an artifact's hex sha256
	Check      = "check"      // the check that refused a change, e.g. "signature", "init"
	PID        = "pid"        // a process id
	Generation = "generation" // a process's generation (1 when started fresh)
	Err        = "err"        // the error
)
