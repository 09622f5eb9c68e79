package guest

import "strconv"

// Level is a log level; the values match log/slog's so the host can pass them
// through unchanged.
type Level int32

// Log levels.
const (
	LevelDebug Level = -4
	LevelInfo  Level = 0
	LevelWarn  Level = 4
	LevelError Level = 8
)

// Log writes msg to the host's logger, tagged with the module and version.
// It is always granted.
func Log(level Level, msg string) { logMessage(level, msg) }

// KVGet returns the value stored under key in the module's host-kept store.
// It needs the "kv" capability; without it the module is refused at load.
func KVGet(key string) (value []byte, ok bool) { return kvGet(key) }

// KVSet stores value under key. It needs the "kv" capability.
func KVSet(key string, value []byte) { kvSet(key, value) }

// KVDelete removes key. It needs the "kv" capability.
func KVDelete(key string) { kvDelete(key) }

// KVAdd atomically adds delta to the decimal integer stored under key (a
// missing key counts as 0) and returns the new value. Concurrent instances
// of a module may call it at once without losing updates. It needs the "kv"
// capability.
func KVAdd(key string, delta int64) int64 { return kvAdd(key, delta) }

func itoa(i int) string { return strconv.Itoa(i) }
