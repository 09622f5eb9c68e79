package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func event(target string, i int) Event {
	return Event{
		Time:   time.Date(2026, 1, 2, 15, 4, i, 0, time.UTC),
		Actor:  "cli",
		Action: ActionSwap,
		Target: target,
		From:   "sha256:" + strings.Repeat("a", 64),
		To:     "sha256:" + strings.Repeat("b", 64),
		Result: ResultOK,
	}
}

func openTest(t *testing.T, path string, opts Options) *Log {
	t.Helper()
	l, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open() = %v; want nil", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestRecordAndRead(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit", "audit.log")
	l := openTest(t, path, Options{})
	want := []Event{
		event("pricing", 1),
		{Time: time.Date(2026, 1, 2, 15, 4, 6, 0, time.UTC), Actor: PeerActor(1000, 42), Action: ActionLoad,
			Target: "billing", To: "sha256:" + strings.Repeat("c", 64), Result: ResultRefused,
			Error: "artifact billing.wasm refused: signature check failed"},
		event("pricing", 3),
	}
	for _, ev := range want {
		if err := l.Record(ctx, ev); err != nil {
			t.Fatalf("Record() = %v; want nil", err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("log has %d lines; want 3:\n%s", len(lines), data)
	}
	wantLine := `{"time":"2026-01-02T15:04:06Z","actor":"uid=1000 pid=42","action":"load","target":"billing",` +
		`"to":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","result":"refused",` +
		`"error":"artifact billing.wasm refused: signature check failed"}`
	if lines[1] != wantLine {
		t.Errorf("line 2 = %s; want %s", lines[1], wantLine)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %04o; want 0600", fi.Mode().Perm())
	}

	tests := []struct {
		name string
		f    Filter
		want []Event
	}{
		{"all, newest first", Filter{}, []Event{want[2], want[1], want[0]}},
		{"by target", Filter{Target: "pricing"}, []Event{want[2], want[0]}},
		{"by action", Filter{Action: ActionLoad}, []Event{want[1]}},
		{"limit", Filter{Limit: 1}, []Event{want[2]}},
		{"no match", Filter{Target: "nothing"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := l.Read(ctx, tt.f)
			if err != nil {
				t.Fatalf("Read() = %v; want nil", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("Read() = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestRecordRefusesInvalidEvent(t *testing.T) {
	l := openTest(t, filepath.Join(t.TempDir(), "audit.log"), Options{})
	for _, ev := range []Event{
		{Target: "x", Result: ResultOK},
		{Action: ActionLoad, Result: ResultOK},
		{Action: ActionLoad, Target: "x"},
	} {
		if err := l.Record(context.Background(), ev); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("Record(%+v) = %v; want %v", ev, err, ErrInvalidEvent)
		}
	}
}

func TestRecordFillsTimeAndCutsError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openTest(t, path, Options{})
	ev := Event{Action: ActionUpgrade, Target: "process", Result: ResultFailed, Error: strings.Repeat("é", maxErrorLen)}
	before := time.Now()
	if err := l.Record(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	got, err := Read(context.Background(), path, Filter{})
	if err != nil || len(got) != 1 {
		t.Fatalf("Read() = %v, %v; want 1 event", got, err)
	}
	if got[0].Time.Before(before.Add(-time.Second)) || got[0].Time.Location() != time.UTC {
		t.Errorf("Time = %v; want about %v, UTC", got[0].Time, before)
	}
	if n := len(got[0].Error); n > maxErrorLen+len("…") || !strings.HasSuffix(got[0].Error, "…") {
		t.Errorf("len(Error) = %d; want at most %d, ending in …", n, maxErrorLen+len("…"))
	}
}

func TestRotation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	line, _ := json.Marshal(event("m", 0))
	perLine := int64(len(line) + 1)
	l := openTest(t, path, Options{MaxSize: 3 * perLine, Keep: 2})
	for i := range 10 {
		if err := l.Record(ctx, event("m", i)); err != nil {
			t.Fatalf("Record(%d) = %v; want nil", i, err)
		}
	}
	// 10 records, 3 per file: live has 1 (9), .1 has 6-8, .2 has 3-5; 0-2 dropped.
	for _, f := range []struct {
		name  string
		lines int
	}{{"audit.log", 1}, {"audit.log.1", 3}, {"audit.log.2", 3}} {
		data, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Count(string(data), "\n"); got != f.lines {
			t.Errorf("%s has %d lines; want %d", f.name, got, f.lines)
		}
		if int64(len(data)) > 3*perLine {
			t.Errorf("%s is %d bytes; want at most MaxSize %d", f.name, len(data), 3*perLine)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.log.3")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("audit.log.3 exists (%v); want only Keep=2 rotated files", err)
	}
	got, err := l.Read(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var ns []int
	for _, ev := range got {
		ns = append(ns, ev.Time.Second())
	}
	if want := "[9 8 7 6 5 4 3]"; fmt.Sprint(ns) != want {
		t.Errorf("Read() order = %v; want %s", ns, want)
	}
}

// watchedFile wraps the real file to see writes and syncs and to inject
// failures.
type watchedFile struct {
	*os.File
	mu        *sync.Mutex
	ops       *[]string
	failWrite error
	failSync  error
}

func (w *watchedFile) Write(p []byte) (int, error) {
	w.mu.Lock()
	*w.ops = append(*w.ops, "write")
	w.mu.Unlock()
	if w.failWrite != nil {
		return 0, w.failWrite
	}
	return w.File.Write(p)
}

func (w *watchedFile) Sync() error {
	w.mu.Lock()
	*w.ops = append(*w.ops, "sync")
	w.mu.Unlock()
	if w.failSync != nil {
		return w.failSync
	}
	return w.File.Sync()
}

func TestRecordFsyncs(t *testing.T) {
	errDisk := errors.New("EIO from the disk")
	tests := []struct {
		name      string
		failWrite error
		failSync  error
		wantOps   string
		wantErr   error
	}{
		{"every record is fsync'd", nil, nil, "[write sync write sync]", nil},
		{"failed fsync is an error", nil, errDisk, "[write sync]", errDisk},
		{"failed write is an error", errDisk, nil, "[write]", errDisk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var ops []string
			opener := func(p string) (logFile, error) {
				f, err := openAppend(p)
				if err != nil {
					return nil, err
				}
				return &watchedFile{File: f.(*os.File), mu: &mu, ops: &ops, failWrite: tt.failWrite, failSync: tt.failSync}, nil
			}
			l, err := open(filepath.Join(t.TempDir(), "audit.log"), Options{}, opener)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			n := 2
			if tt.wantErr != nil {
				n = 1
			}
			for i := range n {
				err = l.Record(context.Background(), event("m", i))
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Record() = %v; want %v", err, tt.wantErr)
			}
			if fmt.Sprint(ops) != tt.wantOps {
				t.Errorf("file operations = %v; want %s", ops, tt.wantOps)
			}
		})
	}
}

func TestUnwritableLog(t *testing.T) {
	ctx := context.Background()
	t.Run("directory is a file", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
		if _, err := Open(filepath.Join(dir, "file", "audit.log"), Options{}); err == nil {
			t.Errorf("Open(under a regular file) = nil; want an error")
		}
	})
	t.Run("directory removed after open", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "logs")
		l := openTest(t, filepath.Join(dir, "audit.log"), Options{})
		if err := l.Record(ctx, event("m", 0)); err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(dir)
		if err := l.Record(ctx, event("m", 1)); err == nil {
			t.Errorf("Record(log directory gone) = nil; want an error")
		}
		// It recovers once the directory is back.
		os.MkdirAll(dir, 0o700)
		if err := l.Record(ctx, event("m", 2)); err != nil {
			t.Errorf("Record(directory back) = %v; want nil", err)
		}
	})
	t.Run("disk full", func(t *testing.T) {
		if _, err := os.Stat("/dev/full"); err != nil {
			t.Skip("no /dev/full on this system")
		}
		path := filepath.Join(t.TempDir(), "audit.log")
		os.WriteFile(path, nil, 0o600)
		l, err := open(path, Options{}, func(string) (logFile, error) {
			return os.OpenFile("/dev/full", os.O_WRONLY, 0)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Record(ctx, event("m", 0)); err == nil {
			t.Errorf("Record(to a full disk) = nil; want an error")
		}
	})
	t.Run("closed", func(t *testing.T) {
		l := openTest(t, filepath.Join(t.TempDir(), "audit.log"), Options{})
		l.Close()
		if err := l.Record(ctx, event("m", 0)); !errors.Is(err, ErrClosed) {
			t.Errorf("Record(closed) = %v; want %v", err, ErrClosed)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		l := openTest(t, filepath.Join(t.TempDir(), "audit.log"), Options{})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := l.Record(cctx, event("m", 0)); !errors.Is(err, context.Canceled) {
			t.Errorf("Record(cancelled) = %v; want %v", err, context.Canceled)
		}
	})
}

func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	// Two Logs on one path stand for two processes; small files force
	// rotations while both write.
	opts := Options{MaxSize: 4 << 10, Keep: 100}
	logs := []*Log{openTest(t, path, opts), openTest(t, path, opts)}
	const writers, each = 6, 40
	var wg sync.WaitGroup
	for w := range writers {
		l := logs[w%2]
		wg.Go(func() {
			for i := range each {
				ev := event(fmt.Sprintf("w%d", w), i)
				ev.Error = strings.Repeat("x", w*10) // lines of different lengths
				if err := l.Record(ctx, ev); err != nil {
					t.Errorf("Record() = %v; want nil", err)
				}
			}
		})
	}
	wg.Wait()
	got, err := Read(ctx, path, Filter{})
	if err != nil {
		t.Fatalf("Read() = %v; want nil (every line valid)", err)
	}
	if len(got) != writers*each {
		t.Fatalf("Read() = %d events; want %d", len(got), writers*each)
	}
	seen := map[string]bool{}
	for _, ev := range got {
		k := fmt.Sprint(ev.Target, ev.Time.Second())
		if seen[k] {
			t.Errorf("event %s read twice", k)
		}
		seen[k] = true
	}
	// Within one writer, newest first means descending sequence numbers.
	last := map[string]int{}
	for _, ev := range got {
		if n, ok := last[ev.Target]; ok && ev.Time.Second() >= n {
			t.Errorf("%s: event %d after %d; want newest first", ev.Target, ev.Time.Second(), n)
		}
		last[ev.Target] = ev.Time.Second()
	}
	files, _ := filepath.Glob(path + ".*[0-9]")
	if len(files) < 2 {
		t.Errorf("%d rotated files; want the test to have rotated", len(files))
	}
}

func TestTornLine(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.log")
	good, _ := json.Marshal(event("m", 1))
	os.WriteFile(path, append(append(good, '\n'), `{"time":"2026-01-02T15:04`...), 0o600)
	l := openTest(t, path, Options{})
	if err := l.Record(ctx, event("m", 2)); err != nil {
		t.Fatal(err)
	}
	got, err := l.Read(ctx, Filter{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "audit.log:2") {
		t.Errorf("Read() error = %v; want %v naming audit.log:2", err, ErrCorrupt)
	}
	if len(got) != 2 || got[0].Time.Second() != 2 || got[1].Time.Second() != 1 {
		t.Errorf("Read() = %v; want events 2 and 1", got)
	}
}

// TestNoFDLeak opens, writes (with rotations), reads and closes logs, and
// checks that no descriptor stays open.
func TestNoFDLeak(t *testing.T) {
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Skip("no /proc/self/fd to count descriptors:", err)
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.log")
	count := func() int { ents, _ := os.ReadDir("/proc/self/fd"); return len(ents) }
	before := count()
	for i := range 10 {
		l, err := Open(path, Options{MaxSize: 512, Keep: 2})
		if err != nil {
			t.Fatal(err)
		}
		for j := range 5 {
			if err := l.Record(ctx, event("m", i*5+j)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.Read(ctx, Filter{}); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := count(); after != before {
		t.Errorf("open descriptors = %d after; want %d as before", after, before)
	}
}
