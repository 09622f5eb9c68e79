package module_test

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/hotswapgo/hotswap/module"
)

// recorder is a KVSink that keeps every change and every wait.
type recorder struct {
	mu      sync.Mutex // protects changes, waited, next
	changes []string
	waited  []uint64
	next    uint64
	sync    bool // hand out tickets
}

func (r *recorder) Changed(c module.KVChange) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, describe(c))
	if !r.sync {
		return 0
	}
	r.next++
	return r.next
}

func (r *recorder) Wait(ticket uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waited = append(r.waited, ticket)
}

func describe(c module.KVChange) string {
	switch c.Op {
	case module.KVSet:
		return fmt.Sprintf("set %s=%s", c.Key, c.Value)
	case module.KVDelete:
		return "delete " + c.Key
	case module.KVAdd:
		return fmt.Sprintf("add %s%+d=%s", c.Key, c.Delta, c.Value)
	case module.KVReset:
		return "reset"
	}
	return fmt.Sprintf("op %d", c.Op)
}

func TestKVSinkSeesEveryChangeInOrder(t *testing.T) {
	for _, synchronous := range []bool{false, true} {
		t.Run(fmt.Sprintf("sync=%v", synchronous), func(t *testing.T) {
			kv := module.NewKV()
			kv.Set("before", []byte("sink")) // not reported: no sink yet
			r := &recorder{sync: synchronous}
			kv.Rebase(kv.Snapshot(), r)
			kv.Set("a", []byte("x"))
			if got := kv.Add("n", 5); got != 5 {
				t.Fatalf("Add(n, 5) = %d; want 5", got)
			}
			kv.Add("n", -2)
			kv.Delete("a")
			kv.Restore(map[string][]byte{"r": []byte("1")})
			want := []string{"set a=x", "add n+5=5", "add n-2=3", "delete a", "reset", "set r=1"}
			if !slices.Equal(r.changes, want) {
				t.Errorf("sink saw %q; want %q", r.changes, want)
			}
			// Restore waits once, for its last change.
			wantWaits := []uint64{1, 2, 3, 4, 6}
			if !synchronous {
				wantWaits = nil
			}
			if !slices.Equal(r.waited, wantWaits) {
				t.Errorf("writers waited for tickets %v; want %v", r.waited, wantWaits)
			}
			if got := kv.Snapshot(); !maps.EqualFunc(got, map[string][]byte{"r": []byte("1")}, bytesEqual) {
				t.Errorf("contents = %q; want r=1", got)
			}
		})
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// TestKVRebase: the journaled changes replayed on another base follow the
// rules documented on Rebase, and exactly the keys that differ from the
// base are reported to the new sink.
func TestKVRebase(t *testing.T) {
	type kvs = map[string]string
	tests := []struct {
		name    string
		before  kvs // contents when the journal starts
		changes func(kv *module.KV)
		base    kvs
		want    kvs
		told    []string // changes reported to the sink, sorted
	}{{
		name:    "adds on both sides add up",
		before:  kvs{"n": "10"},
		changes: func(kv *module.KV) { kv.Add("n", 3); kv.Add("n", 4) },
		base:    kvs{"n": "25", "other": "o"},
		want:    kvs{"n": "32", "other": "o"},
		told:    []string{"set n=32"},
	}, {
		name:    "a set wins over the base",
		before:  kvs{"a": "old"},
		changes: func(kv *module.KV) { kv.Set("a", []byte("mine")) },
		base:    kvs{"a": "theirs"},
		want:    kvs{"a": "mine"},
		told:    []string{"set a=mine"},
	}, {
		name:    "a delete wins over the base",
		before:  kvs{"a": "old"},
		changes: func(kv *module.KV) { kv.Delete("a") },
		base:    kvs{"a": "theirs", "b": "kept"},
		want:    kvs{"b": "kept"},
		told:    []string{"delete a"},
	}, {
		name:    "adds after a set apply to the set value",
		before:  kvs{"n": "1"},
		changes: func(kv *module.KV) { kv.Set("n", []byte("5")); kv.Add("n", 2) },
		base:    kvs{"n": "100"},
		want:    kvs{"n": "7"},
		told:    []string{"set n=7"},
	}, {
		name:    "a set after adds wins",
		changes: func(kv *module.KV) { kv.Add("n", 1); kv.Set("n", []byte("9")) },
		base:    kvs{"n": "100"},
		want:    kvs{"n": "9"},
		told:    []string{"set n=9"},
	}, {
		name:    "an add to what is not a number in the base counts from 0",
		changes: func(kv *module.KV) { kv.Add("n", 3) },
		base:    kvs{"n": "abc"},
		want:    kvs{"n": "3"},
		told:    []string{"set n=3"},
	}, {
		name:    "an add to a key missing from the base",
		before:  kvs{"n": "4"},
		changes: func(kv *module.KV) { kv.Add("n", 3) },
		base:    kvs{},
		want:    kvs{"n": "3"},
		told:    []string{"set n=3"},
	}, {
		name:    "a restore keeps the contents whole",
		before:  kvs{"a": "1"},
		changes: func(kv *module.KV) { kv.Add("a", 1); kv.Restore(map[string][]byte{"r": []byte("x")}); kv.Add("n", 2) },
		base:    kvs{"a": "50", "b": "2"},
		want:    kvs{"r": "x", "n": "2"},
		told:    []string{"reset", "set n=2", "set r=x"},
	}, {
		name:    "nothing changed",
		before:  kvs{"a": "1"},
		changes: func(*module.KV) {},
		base:    kvs{"a": "2"},
		want:    kvs{"a": "2"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := module.NewKV()
			kv.Restore(toBytes(tt.before))
			kv.StartJournal()
			tt.changes(kv)
			r := &recorder{}
			kv.Rebase(toBytes(tt.base), r)
			if got := toStrings(kv.Snapshot()); !maps.Equal(got, tt.want) {
				t.Errorf("contents after Rebase = %q; want %q", got, tt.want)
			}
			slices.Sort(r.changes)
			if !slices.Equal(r.changes, tt.told) {
				t.Errorf("sink was told %q; want %q", r.changes, tt.told)
			}
			// The journal ended: later changes only reach the sink.
			kv.Add("after", 1)
			other := map[string][]byte{"z": []byte("1")}
			kv.Rebase(other, nil)
			if got := toStrings(kv.Snapshot()); !maps.Equal(got, map[string]string{"z": "1"}) {
				t.Errorf("second Rebase without a journal = %q; want exactly its base", got)
			}
		})
	}
}

// TestKVRebaseUnderLoad: increments made on both sides while the rebase
// happens are all counted.
func TestKVRebaseUnderLoad(t *testing.T) {
	const writers, adds, parent = 4, 2000, 1_000_000
	kv := module.NewKV()
	kv.Set("n", []byte("500")) // the snapshot handed over
	kv.StartJournal()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			<-start
			for range adds {
				kv.Add("n", 1)
			}
		})
	}
	close(start)
	// The parent counted from the same snapshot on.
	kv.Rebase(map[string][]byte{"n": []byte(strconv.Itoa(500 + parent))}, &recorder{})
	wg.Wait()
	want := strconv.Itoa(500 + parent + writers*adds)
	if got, _ := kv.Get("n"); string(got) != want {
		t.Errorf("counter = %s; want %s", got, want)
	}
}

func toBytes(m map[string]string) map[string][]byte {
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

func toStrings(m map[string][]byte) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}
