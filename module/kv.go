package module

import (
	"maps"
	"strconv"
	"sync"
)

// KV is a module's host-kept key/value state. It belongs to the module, not
// to a version, so it survives swaps and rollbacks. It is safe for
// concurrent use.
type KV struct {
	mu sync.RWMutex // protects m
	m  map[string][]byte
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
	kv.mu.Unlock()
}

// Delete removes key.
func (kv *KV) Delete(key string) {
	kv.mu.Lock()
	delete(kv.m, key)
	kv.mu.Unlock()
}

// Add adds delta to the decimal integer under key (missing or not a number
// counts as 0) and returns the result, atomically.
func (kv *KV) Add(key string, delta int64) int64 {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	n, _ := strconv.ParseInt(string(kv.m[key]), 10, 64)
	n += delta
	kv.m[key] = strconv.AppendInt(nil, n, 10)
	return n
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

// Restore replaces the store's contents with a copy of m.
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
	kv.mu.Unlock()
}
