package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzRead reads arbitrary log files: Read must not panic, and its only
// complaint about content is ErrCorrupt.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"time":"2026-01-02T15:04:05Z","action":"swap","target":"m","result":"ok"}` + "\n"))
	f.Add([]byte("{\n}\n\n{\"action\":1}"))
	f.Add([]byte(`{"time":"x","action":"swap","target":"m"}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "audit.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		evs, err := Read(context.Background(), path, Filter{})
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Read() = %v; want nil or %v", err, ErrCorrupt)
		}
		for _, ev := range evs {
			if ev.Action == "" || ev.Target == "" {
				t.Fatalf("Read() returned %+v without action or target", ev)
			}
		}
	})
}
