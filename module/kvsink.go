package module

import "strconv"

// KVOp is the kind of a change to a KV.
type KVOp uint8

// Changes to a KV.
const (
	KVSet    KVOp = iota + 1 // Set: Value is the new value
	KVDelete                 // Delete
	KVAdd                    // Add: Value is the sum, Delta what was added
	KVReset                  // Restore: every key is gone; one KVSet per new key follows
)

// KVChange is one change made to a KV, as its KVSink sees it.
type KVChange struct {
	Op  KVOp
	Key string // "" for KVReset
	// Value is the key's value after a KVSet or KVAdd, nil otherwise. The
	// KV never modifies it afterwards, so a sink may keep it.
	Value []byte
	// Delta is what a KVAdd added.
	Delta int64
}

// A KVSink makes a KV's changes durable. Package host provides the one
// that keeps them in a file; see docs/state.md.
type KVSink interface {
	// Changed is told of each change, in the order the KV made them, with
	// the KV's lock held: it must not block and must not call the KV. It
	// returns a ticket the writer waits for with Wait, or 0 when the
	// writer need not wait.
	Changed(c KVChange) (ticket uint64)
	// Wait blocks until the change that got ticket was committed, or its
	// commit failed. The KV calls it after releasing its lock, from the
	// goroutine that made the change, so writers that wait at the same
	// time can share one commit.
	Wait(ticket uint64)
}

// StartJournal makes the KV record, from now on, what its changes did to
// each key, until Rebase replays them on another base. A new process of a
// binary upgrade uses it while its parent still writes the state file. The
// journal holds one small entry per key changed, not one per change.
func (kv *KV) StartJournal() {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if kv.journal == nil {
		kv.journal = &kvJournal{keys: make(map[string]journalEntry)}
	}
}

// Rebase makes base (nil: empty) the KV's contents with the changes
// journaled since StartJournal replayed on top, ends the journal, and from
// then on tells sink (nil: none) of every change. Rebase takes ownership of
// base. The replay treats the journal's changes as made after everything
// in base:
//
//   - a key only added to since StartJournal gets base's number plus the
//     sum of the deltas, so no increment made on either side is lost;
//   - a key Set or Deleted since StartJournal keeps the KV's value (or
//     stays deleted): the later write wins;
//   - after a Restore since StartJournal, the KV's contents are kept whole.
//
// Without a journal, the contents become base. The keys whose value now
// differs from base are told to sink (as KVSet or KVDelete; after a
// Restore, as KVReset and one KVSet per key), so it can write them.
func (kv *KV) Rebase(base map[string][]byte, sink KVSink) {
	if base == nil {
		base = make(map[string][]byte)
	}
	kv.mu.Lock()
	defer kv.mu.Unlock()
	j := kv.journal
	kv.journal, kv.sink = nil, sink
	if j == nil {
		kv.m = base
		return
	}
	if j.restored {
		if sink != nil {
			sink.Changed(KVChange{Op: KVReset})
			for k, v := range kv.m {
				sink.Changed(KVChange{Op: KVSet, Key: k, Value: v})
			}
		}
		return
	}
	for k, e := range j.keys {
		c := KVChange{Op: KVSet, Key: k}
		v, ok := kv.m[k]
		switch {
		case !e.overwritten:
			c.Value = strconv.AppendInt(nil, addTo(base[k], e.delta), 10)
			base[k] = c.Value
		case ok:
			c.Value = v
			base[k] = v
		default:
			c.Op = KVDelete
			delete(base, k)
		}
		if sink != nil {
			sink.Changed(c)
		}
	}
	kv.m = base
}

// kvJournal is what a KV's changes did to each key since StartJournal.
type kvJournal struct {
	keys     map[string]journalEntry
	restored bool // Restore was called: the contents are the KV's own
}

// journalEntry is what happened to one key since StartJournal.
type journalEntry struct {
	overwritten bool  // Set or Deleted: the KV's value wins
	delta       int64 // sum of the Adds, while not overwritten
}

func (j *kvJournal) record(c KVChange) {
	if j.restored {
		return
	}
	e := j.keys[c.Key]
	switch c.Op {
	case KVSet, KVDelete:
		e = journalEntry{overwritten: true}
	case KVAdd:
		if !e.overwritten {
			e.delta += c.Delta
		}
	}
	j.keys[c.Key] = e
}

func (j *kvJournal) reset() {
	j.restored = true
	clear(j.keys)
}
