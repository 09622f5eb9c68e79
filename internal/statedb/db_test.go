package statedb

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/hotswapgo/hotswap/module"
)

func mustOpen(t *testing.T, path string, opts Options) *DB {
	t.Helper()
	db, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s) = %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func load(t *testing.T, db *DB) map[string]map[string]string {
	t.Helper()
	all, err := db.Load()
	if err != nil {
		t.Fatalf("Load() = %v", err)
	}
	out := make(map[string]map[string]string)
	for name, kv := range all {
		out[name] = make(map[string]string)
		for k, v := range kv {
			out[name][k] = string(v)
		}
	}
	return out
}

func equal(a, b map[string]map[string]string) bool {
	return maps.EqualFunc(a, b, func(x, y map[string]string) bool { return maps.Equal(x, y) })
}

func set(k, v string) module.KVChange {
	return module.KVChange{Op: module.KVSet, Key: k, Value: []byte(v)}
}
func del(k string) module.KVChange { return module.KVChange{Op: module.KVDelete, Key: k} }
func reset() module.KVChange       { return module.KVChange{Op: module.KVReset} }

func TestChangesSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := mustOpen(t, path, Options{})
	a, b := db.Sink("a"), db.Sink("b")
	for _, c := range []module.KVChange{set("x", "1"), set("y", "2"), set("x", "3"), del("y"), set("", "empty key"), set("e", "")} {
		a.Changed(c)
	}
	for _, c := range []module.KVChange{set("old", "1"), reset(), set("new", "2")} {
		b.Changed(c)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v; want 0600", path, fi.Mode().Perm())
	}

	db = mustOpen(t, path, Options{})
	want := map[string]map[string]string{"a": {"x": "3", "": "empty key", "e": ""}, "b": {"new": "2"}}
	if got := load(t, db); !equal(got, want) {
		t.Errorf("Load() after reopen = %q; want %q", got, want)
	}
	// A reset drops what an earlier commit stored.
	db.Sink("a").Changed(reset())
	db.Sink("a").Changed(set("only", "1"))
	db.Close()
	db = mustOpen(t, path, Options{})
	want["a"] = map[string]string{"only": "1"}
	if got := load(t, db); !equal(got, want) {
		t.Errorf("Load() after a reset = %q; want %q", got, want)
	}
}

func TestSyncWritersShareCommits(t *testing.T) {
	db := mustOpen(t, filepath.Join(t.TempDir(), "state.db"), Options{Sync: true})
	const writers, each = 8, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			s := db.Sink("m")
			for i := range each {
				key := string(rune('a'+w)) + string(rune('0'+i%10))
				ticket := s.Changed(set(key, "v"))
				if ticket == 0 {
					t.Errorf("Changed() = ticket 0 with Sync; want one to wait for")
					return
				}
				s.Wait(ticket)
				// Acknowledged: a reader sees it in the file already.
				if got := load(t, db)["m"][key]; got != "v" {
					t.Errorf("after Wait, %s = %q in the file; want v", key, got)
					return
				}
			}
		})
	}
	wg.Wait()
	st := db.Stats()
	if st.Changes != writers*each || st.Commits == 0 || st.Commits >= st.Changes {
		t.Errorf("Stats() = %+v; want %d changes in fewer commits", st, writers*each)
	}
	t.Logf("%d changes in %d commits", st.Changes, st.Commits)
}

func TestWindowGroupsChanges(t *testing.T) {
	const window = 100 * time.Millisecond
	db := mustOpen(t, filepath.Join(t.TempDir(), "state.db"), Options{Window: window})
	s := db.Sink("m")
	start := time.Now()
	for i := range 1000 {
		if ticket := s.Changed(set("n", string(rune('0'+i%10)))); ticket != 0 {
			t.Fatalf("Changed() = ticket %d without Sync; want 0", ticket)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for db.Stats().Commits == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing committed 10s after the changes; Stats() = %+v", db.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if took := time.Since(start); took < window {
		t.Errorf("first commit %v after the first change; want no earlier than the window %v", took, window)
	}
	if got := load(t, db)["m"]["n"]; got != "9" {
		t.Errorf("n = %q in the file; want the last value 9", got)
	}
	if st := db.Stats(); st.Commits > 2 {
		t.Errorf("Stats() = %+v; want 1000 changes within the window in one or two commits", st)
	}
}

func TestLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := mustOpen(t, path, Options{Sync: true})
	s := db.Sink("m")
	write := func(c module.KVChange) { s.Wait(s.Changed(c)) }
	write(set("big", "small for now"))
	write(set(strings.Repeat("k", MaxKeySize), "longest key"))
	write(set(strings.Repeat("k", MaxKeySize+1), "too long a key"))
	write(module.KVChange{Op: module.KVSet, Key: "big", Value: make([]byte, MaxValueSize+1)})
	if st := db.Stats(); st.Skipped != 2 || st.Failures != 0 {
		t.Errorf("Stats() = %+v; want 2 changes skipped, no failure", st)
	}
	got := load(t, db)["m"]
	if _, ok := got["big"]; ok {
		t.Errorf("a value over MaxValueSize left the older value in the file; want the key removed")
	}
	if len(got) != 1 || got[strings.Repeat("k", MaxKeySize)] != "longest key" {
		t.Errorf("file holds %d keys; want only the longest allowed key", len(got))
	}
}

// TestFailedCommitRetried: a commit that fails (here: the file may not
// grow) keeps its changes, under newer ones, and retries them.
func TestFailedCommitRetried(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := open(path, Options{Sync: true}, bbolt.Options{MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := db.Sink("m")
	s.Wait(s.Changed(set("a", "1")))
	s.Wait(s.Changed(module.KVChange{Op: module.KVSet, Key: "huge", Value: make([]byte, 2<<20)}))
	st := db.Stats()
	if st.Failures == 0 || st.LastError == "" {
		t.Fatalf("Stats() = %+v after writing more than the file may hold; want a failed commit", st)
	}
	// The newer change to the same key replaces the failed one.
	s.Wait(s.Changed(del("huge")))
	s.Wait(s.Changed(set("b", "2")))
	deadline := time.Now().Add(10 * time.Second)
	for db.Stats().LastError != "" {
		if time.Now().After(deadline) {
			t.Fatalf("commits still failing 10s later: %+v", db.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	want := map[string]map[string]string{"m": {"a": "1", "b": "2"}}
	if got := load(t, db); !equal(got, want) {
		t.Errorf("Load() = %q; want %q", got, want)
	}
}

func TestSecondOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	mustOpen(t, path, Options{})
	start := time.Now()
	_, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open() = %v; want ErrLocked naming %s", err, path)
	}
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Errorf("second Open() gave up after %v; want it to wait LockTimeout", took)
	}
}

func TestCloseCommitsAndReleases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db := mustOpen(t, path, Options{Window: time.Hour})
	db.Sink("m").Changed(set("n", "1"))
	if err := db.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := db.Close(); err != nil {
		t.Errorf("second Close() = %v; want nil", err)
	}
	if ticket := db.Sink("m").Changed(set("n", "2")); ticket != 0 {
		t.Errorf("Changed() after Close = ticket %d; want 0", ticket)
	}
	db = mustOpen(t, path, Options{})
	if got := load(t, db)["m"]["n"]; got != "1" {
		t.Errorf("n = %q after Close; want the change made before Close, 1", got)
	}
}

// TestRefusedFiles: a file that is not a state file, or that others could
// have written, is refused with an error naming it, and left untouched.
func TestRefusedFiles(t *testing.T) {
	foreign := func(t *testing.T, path string) {
		b, err := bbolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		b.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err })
		b.Close()
	}
	tests := []struct {
		name    string
		make    func(t *testing.T, path string)
		corrupt bool
	}{
		{"garbage", func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Repeat([]byte("not bolt "), 2000), 0o600)
		}, true},
		{"short", func(t *testing.T, path string) { os.WriteFile(path, []byte("x"), 0o600) }, true},
		{"another program's bbolt file", foreign, true},
		{"another format version", func(t *testing.T, path string) {
			b, err := bbolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			b.Update(func(tx *bbolt.Tx) error {
				m, _ := tx.CreateBucket(bucketMeta)
				return m.Put(keyFormat, []byte("hotswap-state 99"))
			})
			b.Close()
		}, true},
		{"a key without prefix", func(t *testing.T, path string) {
			db, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			db.bolt.Update(func(tx *bbolt.Tx) error {
				m, _ := tx.Bucket(bucketModules).CreateBucket([]byte("m"))
				return m.Put([]byte("noprefix"), []byte("v"))
			})
			db.Close()
		}, true},
		{"a symlink", func(t *testing.T, path string) {
			target := path + ".target"
			if _, err := Open(target, Options{}); err != nil {
				t.Fatal(err)
			}
			os.Symlink(target, path)
		}, true},
		{"group-writable", func(t *testing.T, path string) {
			db, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			db.Close()
			os.Chmod(path, 0o620)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			tt.make(t, path)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			db, err := Open(path, Options{})
			if err == nil {
				if _, err = db.Load(); err == nil {
					db.Close()
					t.Fatalf("Open and Load accepted the file")
				}
				db.Close()
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
			if errors.Is(err, ErrCorrupt) != tt.corrupt {
				t.Errorf("error %q matches ErrCorrupt: %v; want %v", err, !tt.corrupt, tt.corrupt)
			}
			after, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(before, after) {
				t.Errorf("the refused file changed (err %v)", err)
			}
		})
	}
}
