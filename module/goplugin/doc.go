// Package goplugin runs module versions that are Go plugins (.so files,
// artifact kind goplugin) behind the same registry as WebAssembly modules:
// native speed, with honest limits.
//
// A module's source is the same for both backends: a main package that
// registers its handlers with package guest. Build (the CLI's `hotswap build
// --plugin`) compiles it for one host binary, with that binary's Go version
// and build flags and with fresh import paths for the plugin's packages, so
// every build opens as a new plugin:
//
//	hotswap build --plugin ./examples/pricing/guests/v2 -o pricing-v2.so --key KEY
//
// Backend is a module.Backend. Before it opens a plugin it compares the
// plugin's build with the running host's, reading only the bytes (see
// Backend.Prepare), because a failed plugin.Open cannot be retried in the
// same process; the error names the first difference. A handler panic
// fails that call with module.ErrTrapped; a fatal error or os.Exit in a
// plugin ends the process, and a call cannot be stopped.
//
// Plugins never unload (golang/go#20461): a retired version stops
// receiving calls, drains and drops its handlers, but its code and data stay
// mapped until the process exits. Backend.Retained reports them and
// Options.MaxRetained caps them; a binary upgrade sheds them. See
// docs/goplugin.md for when to prefer WebAssembly.
package goplugin
