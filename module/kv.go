package module

import (
	"maps"
	"strconv"
	"sync"
)

// KV is a module's host-kept key/value state. It belongs to the module, not
// to a version, so it survives swaps and rollbacks. Reads and writes are
// served from memory; a KVSink, when attached, is told of every change so
// that it can make it durable (package host keeps it in a file, see
// docs/state.md). It is safe for concurrent use.
type KV struct {
	mu      sync.RWMutex // protects m, sink and journal
	m       map[string][]byte
	sink    KVSink
	journal *kvJournal // changes since StartJournal; nil when not recording
}

// NewKV returns an empty store.
func NewKV() *KV { return &KV{m: make(map[string][]byte)} }

// Get returns the value under key. The returned slice must not be modified.
func (kv *KV) Get(key string) ([]byte, bool) {
	kv.mu.RLock()
	v, ok := kv.m[key]
	kv.mu.RUnlock()
	return v, ok
}

// Set stores a copy of value under key.
func (kv *KV) Set(key string, value []byte) {
	v := append([]byte{}, value...)
	kv.mu.Lock()
	kv.m[key] = v
	kv.changed(KVChange{Op: KVSet, Key: key, Value: v})
}

// Delete removes key.
func (kv *KV) Delete(key string) {
	kv.mu.Lock()
	delete(kv.m, key)
	kv.changed(KVChange{Op: KVDelete, Key: key})
}

// Add adds delta to the decimal integer under key (missing or not a number
// counts as 0) and returns the result, atomically.
func (kv *KV) Add(key string, delta int64) int64 {
	kv.mu.Lock()
	n := addTo(kv.m[key], delta)
	v := strconv.AppendInt(nil, n, 10)
	kv.m[key] = v
	kv.changed(KVChange{Op: KVAdd, Key: key, Value: v, Delta: delta})
	return n
}

// addTo is the rule of Add: value read as a decimal integer (0 when it is
// missing or not one) plus delta.
func addTo(value []byte, delta int64) int64 {
	n, _ := strconv.ParseInt(string(value), 10, 64)
	return n + delta
}

// Len returns the number of keys.
func (kv *KV) Len() int {
	kv.mu.RLock()
	defer kv.mu.RUnlock()
	return len(kv.m)
}

// Snapshot returns a copy of the whole store, e.g. to hand it to a new
// process during a binary upgrade.
func (kv *KV) Snapshot() map[string][]byte {
	kv.mu.RLock()
	defer kv.mu.RUnlock()
	out := make(map[string][]byte, len(kv.m))
	for k, v := range kv.m {
		out[k] = append([]byte{}, v...)
	}
	return out
}

// Restore replaces the store's contents with a copy of m. A sink is told
// of it as one KVReset followed by a KVSet per key.
func (kv *KV) Restore(m map[string][]byte) {
	c := maps.Clone(m)
	for k, v := range c {
		c[k] = append([]byte{}, v...)
	}
	if c == nil {
		c = make(map[string][]byte)
	}
	kv.mu.Lock()
	kv.m = c
	if kv.journal != nil {
		kv.journal.reset()
	}
	var ticket uint64
	if kv.sink != nil {
		ticket = kv.sink.Changed(KVChange{Op: KVReset})
		for k, v := range c {
			ticket = kv.sink.Changed(KVChange{Op: KVSet, Key: k, Value: v})
		}
	}
	sink := kv.sink
	kv.mu.Unlock()
	if ticket != 0 {
		sink.Wait(ticket)
	}
}

// changed records c, which the caller made holding kv.mu, releases kv.mu
// and, if the sink asks for it, waits until c is committed.
func (kv *KV) changed(c KVChange) {
	if kv.journal != nil {
		kv.journal.record(c)
	}
	sink := kv.sink
	var ticket uint64
	if sink != nil {
		ticket = sink.Changed(c)
	}
	kv.mu.Unlock()
	if ticket != 0 {
		sink.Wait(ticket)
	}
}
