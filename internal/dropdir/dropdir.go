// Package dropdir watches a directory for artifacts dropped into it: a
// payload file, optionally with its manifest beside it. It reports each
// artifact once its files have stopped changing, so a copy in progress is
// never picked up half written.
package dropdir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/hotswapgo/hotswap/artifact"
)

// DefaultSettle is how long an artifact's files must stay unchanged before
// it is reported.
const DefaultSettle = 300 * time.Millisecond

// Watch calls found with the payload path of every artifact written or
// moved into dir (payloads are files ending in ext, e.g. ".wasm") until ctx
// ends. Calls to found are sequential.
func Watch(ctx context.Context, dir, ext string, settle time.Duration, found func(path string)) error {
	if settle <= 0 {
		settle = DefaultSettle
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	pending := make(map[string]time.Time) // payload path → last change
	tick := time.NewTicker(settle / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			return fmt.Errorf("watch %s: %w", dir, err)
		case ev := <-w.Events:
			if !ev.Has(fsnotify.Create) && !ev.Has(fsnotify.Write) && !ev.Has(fsnotify.Rename) {
				continue
			}
			payload := strings.TrimSuffix(ev.Name, artifact.ManifestSuffix)
			if filepath.Ext(payload) == ext {
				pending[payload] = time.Now()
			}
		case now := <-tick.C:
			for p, changed := range pending {
				if now.Sub(changed) < settle {
					continue
				}
				delete(pending, p)
				if _, err := os.Stat(p); err == nil {
					found(p)
				}
			}
		}
	}
}
