package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// maxFiles bounds how many rotated files Read looks for.
const maxFiles = 1000

// Filter selects events. The zero value selects all.
type Filter struct {
	Target string // only events for this target
	Action Action // only events of this action
	Limit  int    // at most this many events (the newest); 0 means no limit
}

func (f Filter) match(ev *Event) bool {
	return (f.Target == "" || ev.Target == f.Target) && (f.Action == "" || ev.Action == f.Action)
}

// Read returns the events of the log at path and its rotated files (path.1,
// path.2, …) that match f, newest first. It reads while writers are held
// off (a shared flock on path + ".lock") when it can open the lock file.
//
// Lines that are not events (typically the last one of a file cut short by
// a crash) are skipped; Read then returns the events it could decode and an
// error wrapping ErrCorrupt that names every such line. Cancelling ctx stops
// Read between files.
func Read(ctx context.Context, path string, f Filter) ([]Event, error) {
	unlock, err := lockFile(path+".lock", false)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	defer unlock()
	var out []Event
	var corrupt []error
	for i := 0; i <= maxFiles; i++ {
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("read audit log: %w", err)
		}
		p := path
		if i > 0 {
			p = rotatedPath(path, i)
		}
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			if i == 0 {
				continue // rotated but not yet reopened, or never written
			}
			break
		}
		if err != nil {
			return out, fmt.Errorf("read audit log: %w", err)
		}
		lines := bytes.Split(data, []byte("\n"))
		for n := len(lines) - 1; n >= 0; n-- {
			line := lines[n]
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var ev Event
			if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" || ev.Target == "" {
				corrupt = append(corrupt, fmt.Errorf("%s:%d: %w", p, n+1, ErrCorrupt))
				continue
			}
			if !f.match(&ev) {
				continue
			}
			out = append(out, ev)
			if f.Limit > 0 && len(out) == f.Limit {
				return out, errors.Join(corrupt...)
			}
		}
	}
	return out, errors.Join(corrupt...)
}

// Read is the package function Read on this log's path.
func (l *Log) Read(ctx context.Context, f Filter) ([]Event, error) {
	return Read(ctx, l.path, f)
}
