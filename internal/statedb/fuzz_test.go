package statedb

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"
)

// FuzzLoad: whatever a well-formed bbolt file holds — any format marker,
// buckets, nesting, keys and values — Open and Load either refuse it with
// an error matching ErrCorrupt or return contents within the limits and
// as stored; they never panic.
//
// The fuzzer writes bbolt files rather than arbitrary bytes: bbolt does
// not checksum its data pages, and a damaged page can make its cursor
// loop (found by fuzzing raw bytes), so the file is protected by the state
// directory's owner and mode checks instead (see docs/state.md).
func FuzzLoad(f *testing.F) {
	f.Add(formatV1, "modules", "pricing", []byte("kquotes"), []byte("851000"), false)
	f.Add(formatV1, "modules", "pricing", []byte("k"), []byte{}, false)
	f.Add(formatV1, "modules", "pricing", []byte("quotes"), []byte("1"), false)
	f.Add(formatV1, "modules", "pricing", []byte("knested"), []byte(nil), true)
	f.Add("hotswap-state 2", "modules", "m", []byte("kx"), []byte("1"), false)
	f.Add(formatV1, "other", "m", []byte("kx"), []byte("1"), false)
	f.Fuzz(func(t *testing.T, format, top, module string, key, value []byte, nested bool) {
		path := filepath.Join(t.TempDir(), "state.db")
		b, err := bbolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		werr := b.Update(func(tx *bbolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keyFormat, []byte(format)); err != nil {
				return err
			}
			if _, err := tx.CreateBucketIfNotExists(bucketModules); err != nil {
				return err
			}
			tb, err := tx.CreateBucketIfNotExists([]byte(top))
			if err != nil {
				return err
			}
			mb, err := tb.CreateBucketIfNotExists([]byte(module))
			if err != nil {
				return err
			}
			if nested {
				_, err = mb.CreateBucketIfNotExists(key)
				return err
			}
			return mb.Put(key, value)
		})
		b.Close()
		if werr != nil {
			return // bbolt refused to write it (empty names, sizes): no such file exists
		}
		db, err := Open(path, Options{})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open() = %v; want nil or ErrCorrupt", err)
			}
			return
		}
		defer db.Close()
		all, err := db.Load()
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load() = %v; want nil or ErrCorrupt", err)
			}
			return
		}
		for name, kv := range all {
			for k, v := range kv {
				if len(v) > MaxValueSize || len(k) > MaxKeySize || v == nil {
					t.Errorf("Load() returned %s/%.20q (%d bytes, nil %v), over the limits", name, k, len(v), v == nil)
				}
			}
		}
		if top == "modules" && !nested && len(key) > 0 && key[0] == keyPrefix {
			if got, ok := all[module][string(key[1:])]; !ok || string(got) != string(value) {
				t.Errorf("Load()[%q][%q] = %q, %v; want %q as stored", module, key[1:], got, ok, value)
			}
		}
	})
}

// TestRawDamageNeverPanics: bytes of a state file changed at random make
// Open and Load fail or succeed, never panic. (Damage that makes bbolt
// loop is not covered: see FuzzLoad.)
func TestRawDamageNeverPanics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seed.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Sink("pricing").Changed(set("quotes", "851000"))
	db.Close()
	seed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every byte of the two meta pages, one at a time: checksummed.
	for i := 0; i < 2*4096 && i < len(seed); i += 7 {
		data := append([]byte{}, seed...)
		data[i] ^= 0x5a
		p := filepath.Join(t.TempDir(), "state.db")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := Open(p, Options{})
		if err != nil {
			continue
		}
		db.Load()
		db.Close()
	}
}
