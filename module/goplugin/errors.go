package goplugin

import (
	"errors"
	"fmt"

	"github.com/hotswapgo/hotswap/module"
)

// Conditions callers branch on. Prepare returns them inside a
// *module.LoadError naming the check, so they also match module.ErrRejected.
var (
	// ErrIncompatible: the plugin was not built like the host (Go version,
	// a build setting, a module version or a package differs), so
	// plugin.Open would fail, and its failure would stick for the life of
	// the process. The plugin was never opened.
	ErrIncompatible = errors.New("plugin built differently from the host")
	// ErrNotPlugin: the artifact is not a Go plugin built with
	// -buildmode=plugin and the hotswap plugin SDK. It matches
	// module.ErrInvalidModule.
	ErrNotPlugin = errors.New("not a hotswap Go plugin")
	// ErrRetainedLimit: the process already holds MaxRetained plugin
	// versions. Go cannot unload a plugin (golang/go#20461); a binary
	// upgrade starts a process that holds none. It matches
	// module.ErrLimitExceeded.
	ErrRetainedLimit = errors.New("too many plugin versions retained")
)

// IncompatibleError names the first difference between a plugin's build and
// the host's. It matches ErrIncompatible.
type IncompatibleError struct {
	// What differs: "Go version", "build setting -trimpath", "module
	// golang.org/x/sys", "package encoding/json", "plugin path".
	What   string
	Host   string
	Plugin string
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("%v: %s: host has %s, plugin has %s", ErrIncompatible, e.What, e.Host, e.Plugin)
}

// Is makes every IncompatibleError match ErrIncompatible.
func (e *IncompatibleError) Is(target error) bool { return target == ErrIncompatible }

// RetainedError reports a load refused because the process holds as many
// plugin versions as it may. It matches ErrRetainedLimit and
// module.ErrLimitExceeded.
type RetainedError struct {
	Retained int
	Max      int
}

func (e *RetainedError) Error() string {
	return fmt.Sprintf("%v: this process holds %d plugin versions (MaxRetained %d) and Go cannot unload them "+
		"(golang/go#20461); a binary upgrade (hotswap upgrade) sheds them; the active version keeps serving",
		ErrRetainedLimit, e.Retained, e.Max)
}

// Is makes every RetainedError match ErrRetainedLimit and
// module.ErrLimitExceeded.
func (e *RetainedError) Is(target error) bool {
	return target == ErrRetainedLimit || target == module.ErrLimitExceeded
}

// notPlugin builds the error for an artifact that is not a hotswap plugin.
func notPlugin(format string, args ...any) error {
	return fmt.Errorf("%w: %w: "+format, append([]any{module.ErrInvalidModule, ErrNotPlugin}, args...)...)
}
