package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// DefaultKeep is how many versions of each name a Store keeps unless
// StoreOptions.Keep says otherwise.
const DefaultKeep = 5

const (
	maxStateFile = 1 << 20
	tmpMaxAge    = time.Hour // temporary files older than this are debris of a crash
)

// StoreOptions configures a Store. The zero value is ready to use.
type StoreOptions struct {
	// Keep is how many versions of each name are kept, newest first by the
	// time they were put; the current and the last-known-good versions are
	// kept on top of these. Defaults to DefaultKeep (5).
	Keep int
	// Logger receives a line for each version pruned. Defaults to discarding.
	Logger *slog.Logger
}

// Entry is one verified artifact kept in a Store.
type Entry struct {
	// Manifest describes the payload, as it was verified when put.
	Manifest Manifest
	// Added is when the entry was last put.
	Added time.Time
	// Path is the payload file: read-only, named by its digest, and mode
	// 0555 for binaries so it can be exec'd.
	Path string
	// ManifestPath is the manifest file the payload was verified against.
	ManifestPath string
}

// Store is a local content-addressed store of verified artifacts. It keeps,
// per name, the last few versions, which one is current and which one is the
// last known good, on disk, so a rollback still works after a restart.
//
// Layout under its directory (all mode 0700 directories):
//
//	blobs/<sha256 hex>               payloads, read-only, shared by names
//	names/<name>/<sha256 hex>.manifest  the manifest each payload was verified against
//	names/<name>/state.json          {"current", "last_known_good", "entries": [{"digest", "added"}]}
//	tmp/                             files being written; renamed into place when complete
//	lock                             flock(2)ed by writers, so processes sharing the store take turns
//
// Every file is written to tmp/, fsync'd and renamed into place, and state
// changes are written after the files they name, so a crash leaves at worst
// an unreferenced file, which the next Put removes.
//
// A Store is safe for concurrent use, and processes may share one (for
// example, the old and the new process during an upgrade). Anyone who can
// write its directory can change what it holds, so keep it owned by the
// service's user; VerifyEntry re-checks an entry before it is loaded again.
type Store struct {
	dir  string
	keep int
	log  *slog.Logger

	mu sync.Mutex // serializes writers in this process; the lock file serializes processes
}

// OpenStore opens the store in dir, creating it if needed.
func OpenStore(dir string, opts StoreOptions) (*Store, error) {
	if opts.Keep < 0 {
		return nil, fmt.Errorf("open artifact store: Keep %d is negative", opts.Keep)
	}
	if opts.Keep == 0 {
		opts.Keep = DefaultKeep
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, sub := range []string{"", "blobs", "names", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open artifact store: %w", err)
		}
	}
	return &Store{dir: dir, keep: opts.Keep, log: log}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Put keeps a verified artifact: its payload under its digest and its
// manifest under its name. Putting a version again marks it newest. Put then
// prunes the name's oldest versions beyond the retention bound, never the
// current or the last-known-good one. v must come from a Verifier; its
// payload is hashed again as it is written and refused with
// ErrDigestMismatch if it changed since.
// Cancelling ctx before the store is changed aborts Put.
func (s *Store) Put(ctx context.Context, v *Verified) (Entry, error) {
	if v == nil || v.raw == nil {
		return Entry{}, errors.New("put artifact: not produced by a Verifier")
	}
	m := v.Manifest
	h := sha256.New()
	tmp, err := s.writeTemp(ctx, io.TeeReader(bytes.NewReader(v.Payload), h), m.Size+1)
	if err != nil {
		return Entry{}, fmt.Errorf("put %s %s: %w", m.Name, m.Version, err)
	}
	defer os.Remove(tmp) // no-op once renamed
	// The payload is hashed again as written: a Verified changed since it
	// was verified is refused, not stored.
	var got Digest
	copy(got[:], h.Sum(nil))
	if err := checkDigest(m.Name, m, got, int64(len(v.Payload))); err != nil {
		return Entry{}, fmt.Errorf("put %s %s: %w", m.Name, m.Version, err)
	}
	return s.commit(ctx, m, v.raw, tmp)
}

// VerifyToStore verifies the artifact at artifactPath, as Verify does, while
// copying it into s, and returns the store entry. The payload is read once:
// the bytes hashed are the bytes written to the store, and the entry's Path
// is read-only and named by digest, so exec that path (a binary) and nothing
// changes between verification and use. A payload that fails verification
// is not kept. Cancelling ctx aborts the copy.
func (v *Verifier) VerifyToStore(ctx context.Context, s *Store, artifactPath string, want Expect) (Entry, error) {
	if err := ctx.Err(); err != nil {
		return Entry{}, fmt.Errorf("verify %s: %w", artifactPath, err)
	}
	raw, err := v.manifestFile(ManifestPath(artifactPath))
	var sm *SignedManifest
	if err != nil {
		if err := v.noManifest(artifactPath, ManifestPath(artifactPath), err); err != nil {
			return Entry{}, err
		}
	} else if sm, err = v.checkManifest(artifactPath, raw, want); err != nil {
		return Entry{}, err
	}
	f, err := v.open(artifactPath)
	if err != nil {
		return Entry{}, &VerifyError{Artifact: artifactPath, Check: CheckPayload, Err: err}
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		if err == nil {
			err = fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
		}
		return Entry{}, &VerifyError{Artifact: artifactPath, Check: CheckPayload, Err: err}
	}
	limit := v.limit(want)
	if sm != nil {
		limit = sm.Manifest.Size
	}
	h := sha256.New()
	tmp, err := s.writeTemp(ctx, io.TeeReader(f, h), limit+1)
	if err != nil {
		if ctx.Err() != nil {
			return Entry{}, fmt.Errorf("verify %s: %w", artifactPath, ctx.Err())
		}
		return Entry{}, &VerifyError{Artifact: artifactPath, Check: CheckPayload, Err: err}
	}
	defer os.Remove(tmp) // no-op once renamed
	fi, err := os.Stat(tmp)
	if err != nil {
		return Entry{}, fmt.Errorf("verify %s: %w", artifactPath, err)
	}
	var got Digest
	copy(got[:], h.Sum(nil))
	if sm == nil {
		if fi.Size() > limit {
			return Entry{}, &VerifyError{Artifact: artifactPath, Check: CheckPayload,
				Err: fmt.Errorf("%w: more than %d bytes", ErrPayloadTooLarge, limit)}
		}
		m, mraw, err := synthManifest(artifactPath, got, fi.Size(), want, time.Now())
		if err != nil {
			return Entry{}, err
		}
		sm, raw = &SignedManifest{Manifest: m}, mraw
	} else if err := checkDigest(artifactPath, sm.Manifest, got, fi.Size()); err != nil {
		return Entry{}, err
	}
	if sm.Signature == nil {
		v.warnUnsigned(artifactPath, sm.Manifest)
	}
	return s.commit(ctx, sm.Manifest, raw, tmp)
}

// writeTemp copies at most limit bytes of r to a new fsync'd file in tmp/
// and returns its path.
func (s *Store) writeTemp(ctx context.Context, r io.Reader, limit int64) (string, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "blob-*")
	if err != nil {
		return "", fmt.Errorf("write to store: %w", err)
	}
	_, err = io.Copy(f, io.LimitReader(ctxReader{ctx, r}, limit))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write to store: %w", err)
	}
	return f.Name(), nil
}

// commit moves a complete, verified payload file into blobs/, writes its
// manifest and records it in the name's state, then prunes.
func (s *Store) commit(ctx context.Context, m Manifest, raw []byte, tmp string) (Entry, error) {
	fail := func(err error) (Entry, error) {
		return Entry{}, fmt.Errorf("put %s %s in store: %w", m.Name, m.Version, err)
	}
	unlock, err := s.lock()
	if err != nil {
		return fail(err)
	}
	defer unlock()
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	if !validName(m.Name) {
		return fail(fmt.Errorf("%w: name %q", ErrMalformedManifest, m.Name))
	}
	st, err := s.readState(m.Name)
	if err != nil {
		return fail(err)
	}
	if err := st.claim(m); err != nil {
		return Entry{}, err
	}
	blob := s.blobPath(m.Digest)
	mode := os.FileMode(0o444)
	if fi, err := os.Stat(blob); m.Kind == KindBinary || err == nil && fi.Mode()&0o111 != 0 {
		mode = 0o555 // executable; stays so if the same bytes are also put as another kind
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, blob); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(blob)); err != nil {
		return fail(err)
	}
	nameDir := filepath.Join(s.dir, "names", m.Name)
	if err := os.MkdirAll(nameDir, 0o700); err != nil {
		return fail(err)
	}
	if err := writeFileAtomic(s.manifestPath(m.Name, m.Digest), raw, 0o444); err != nil {
		return fail(err)
	}
	now := time.Now().UTC()
	st.Entries = slices.DeleteFunc(st.Entries, func(e stateEntry) bool { return e.Digest == m.Digest.Hex() })
	st.Entries = append(st.Entries, stateEntry{Digest: m.Digest.Hex(), Added: now})
	pruned := st.prune(s.keep)
	if err := s.writeState(m.Name, st); err != nil {
		return fail(err)
	}
	for _, d := range pruned {
		s.log.Info("pruned artifact version", "name", m.Name, logkey.Digest, d)
		if err := os.Remove(filepath.Join(nameDir, d+ManifestSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail(fmt.Errorf("prune: %w", err))
		}
	}
	if err := s.sweep(); err != nil {
		return fail(err)
	}
	return Entry{Manifest: m, Added: now, Path: blob, ManifestPath: s.manifestPath(m.Name, m.Digest)}, nil
}

// CheckVersion returns a *VerifyError matching ErrVersionReused when the
// store knows m's version label of m's name for another payload. A label
// names one payload per name, forever: the mapping outlives the entries
// pruned and removed. Put and VerifyToStore check it too; call it to refuse
// a reused label before costly work.
func (s *Store) CheckVersion(m Manifest) error {
	if !validName(m.Name) {
		return nil // nothing can be stored under it, so nothing is reused
	}
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("check version %s %s: %w", m.Name, m.Version, err)
	}
	defer unlock()
	st, err := s.readState(m.Name)
	if err != nil {
		return fmt.Errorf("check version %s %s: %w", m.Name, m.Version, err)
	}
	return st.claim(m)
}

// Remove drops the version with digest d of name, unless it is the current
// or the last-known-good version, which it keeps. Use it for an artifact
// that was stored but then refused or abandoned (a binary whose upgrade
// failed), so that it takes no place in the retention bound. The version
// label stays claimed.
func (s *Store) Remove(ctx context.Context, name string, d Digest) error {
	fail := func(err error) error { return fmt.Errorf("remove %s %s from store: %w", name, d, err) }
	if !validName(name) {
		return nil
	}
	unlock, err := s.lock()
	if err != nil {
		return fail(err)
	}
	defer unlock()
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	st, err := s.readState(name)
	if err != nil {
		return fail(err)
	}
	if d.Hex() == st.Current || d.Hex() == st.LastKnownGood {
		return nil
	}
	n := len(st.Entries)
	st.Entries = slices.DeleteFunc(st.Entries, func(e stateEntry) bool { return e.Digest == d.Hex() })
	if len(st.Entries) == n {
		return nil
	}
	if err := s.writeState(name, st); err != nil {
		return fail(err)
	}
	if err := os.Remove(s.manifestPath(name, d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	if err := s.sweep(); err != nil {
		return fail(err)
	}
	s.log.Info("removed artifact version", "name", name, logkey.Digest, d.Hex())
	return nil
}

// sweep removes blobs no name refers to and stale temporary files. The
// caller holds the lock.
func (s *Store) sweep() error {
	used := make(map[string]bool)
	names, err := s.names()
	if err != nil {
		return err
	}
	for _, n := range names {
		st, err := s.readState(n)
		if err != nil {
			return err
		}
		for _, e := range st.Entries {
			used[e.Digest] = true
		}
	}
	blobs, err := os.ReadDir(filepath.Join(s.dir, "blobs"))
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	for _, b := range blobs {
		if !used[b.Name()] {
			if err := os.Remove(filepath.Join(s.dir, "blobs", b.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("sweep: %w", err)
			}
		}
	}
	tmps, err := os.ReadDir(filepath.Join(s.dir, "tmp"))
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	for _, t := range tmps {
		if fi, err := t.Info(); err == nil && time.Since(fi.ModTime()) > tmpMaxAge {
			os.Remove(filepath.Join(s.dir, "tmp", t.Name()))
		}
	}
	return nil
}

// SetCurrent records that the version with digest d is the one serving name.
// The current version is never pruned. d must have been put under name.
func (s *Store) SetCurrent(ctx context.Context, name string, d Digest) error {
	return s.setPointer(ctx, name, d, "current", func(st *nameState) *string { return &st.Current })
}

// SetLastKnownGood records that the version with digest d proved good for
// name: the version to roll back to, also after a restart. It is never
// pruned. d must have been put under name.
func (s *Store) SetLastKnownGood(ctx context.Context, name string, d Digest) error {
	return s.setPointer(ctx, name, d, "last-known-good", func(st *nameState) *string { return &st.LastKnownGood })
}

func (s *Store) setPointer(ctx context.Context, name string, d Digest, what string, field func(*nameState) *string) error {
	fail := func(err error) error { return fmt.Errorf("set %s of %s to %s: %w", what, name, d, err) }
	if !validName(name) {
		return fail(ErrNotFound)
	}
	unlock, err := s.lock()
	if err != nil {
		return fail(err)
	}
	defer unlock()
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	st, err := s.readState(name)
	if err != nil {
		return fail(err)
	}
	if !slices.ContainsFunc(st.Entries, func(e stateEntry) bool { return e.Digest == d.Hex() }) {
		return fail(ErrNotFound)
	}
	*field(&st) = d.Hex()
	if err := s.writeState(name, st); err != nil {
		return fail(err)
	}
	return nil
}

// Current returns the version recorded as serving name, or ErrNotFound.
// Like every read, it waits for a write in progress to finish.
func (s *Store) Current(name string) (Entry, error) {
	return s.pointer(name, "current", func(st *nameState) string { return st.Current })
}

// LastKnownGood returns the version recorded as last known good for name,
// or ErrNotFound.
func (s *Store) LastKnownGood(name string) (Entry, error) {
	return s.pointer(name, "last-known-good", func(st *nameState) string { return st.LastKnownGood })
}

func (s *Store) pointer(name, what string, field func(*nameState) string) (Entry, error) {
	if !validName(name) {
		return Entry{}, fmt.Errorf("%s of %s: %w", what, name, ErrNotFound)
	}
	unlock, err := s.lock()
	if err != nil {
		return Entry{}, fmt.Errorf("%s of %s: %w", what, name, err)
	}
	defer unlock()
	st, err := s.readState(name)
	if err != nil {
		return Entry{}, fmt.Errorf("%s of %s: %w", what, name, err)
	}
	h := field(&st)
	for _, e := range st.Entries {
		if e.Digest == h {
			return s.entry(name, e)
		}
	}
	return Entry{}, fmt.Errorf("%s of %s: %w", what, name, ErrNotFound)
}

// Entries returns the versions kept for name, newest first.
func (s *Store) Entries(name string) ([]Entry, error) {
	if !validName(name) {
		return nil, nil
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", name, err)
	}
	defer unlock()
	st, err := s.readState(name)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", name, err)
	}
	out := make([]Entry, 0, len(st.Entries))
	for i := len(st.Entries) - 1; i >= 0; i-- {
		e, err := s.entry(name, st.Entries[i])
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", name, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// Lookup returns the entries of every name that holds the payload with
// digest d, e.g. to find what a binary running from the store was signed
// as. It returns none when no name holds it.
func (s *Store) Lookup(d Digest) ([]Entry, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", d, err)
	}
	defer unlock()
	names, err := s.names()
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", d, err)
	}
	var out []Entry
	for _, n := range names {
		st, err := s.readState(n)
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", d, err)
		}
		for _, se := range st.Entries {
			if se.Digest == d.Hex() {
				e, err := s.entry(n, se)
				if err != nil {
					return nil, fmt.Errorf("look up %s: %w", d, err)
				}
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// Names returns the names the store holds versions of, sorted.
func (s *Store) Names() ([]string, error) {
	n, err := s.names()
	if err != nil {
		return nil, fmt.Errorf("list names: %w", err)
	}
	return n, nil
}

func (s *Store) names() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "names"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && validName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// entry reads the manifest of one state entry. It does not verify it: use
// Verifier.VerifyEntry before loading.
func (s *Store) entry(name string, se stateEntry) (Entry, error) {
	d, err := ParseDigest(se.Digest)
	if err != nil {
		return Entry{}, fmt.Errorf("state of %s: %w", name, err)
	}
	mp := s.manifestPath(name, d)
	raw, err := readManifestFile(mp)
	if err != nil {
		return Entry{}, fmt.Errorf("read %s: %w", mp, err)
	}
	sm, err := ParseManifest(raw)
	if err != nil {
		return Entry{}, fmt.Errorf("read %s: %w", mp, err)
	}
	return Entry{Manifest: sm.Manifest, Added: se.Added, Path: s.blobPath(d), ManifestPath: mp}, nil
}

func (s *Store) blobPath(d Digest) string { return filepath.Join(s.dir, "blobs", d.Hex()) }

func (s *Store) manifestPath(name string, d Digest) string {
	return filepath.Join(s.dir, "names", name, d.Hex()+ManifestSuffix)
}

// nameState is names/<name>/state.json.
type nameState struct {
	Current       string       `json:"current,omitempty"`
	LastKnownGood string       `json:"last_known_good,omitempty"`
	Entries       []stateEntry `json:"entries"` // oldest first
	// Versions maps every version label ever stored under the name to its
	// payload's hex digest; it is never pruned.
	Versions map[string]string `json:"versions,omitempty"`
}

// claim records that m's version label names m's payload, or refuses m when
// the label already names another payload.
func (st *nameState) claim(m Manifest) error {
	d, ok := st.Versions[m.Version]
	if ok && d != m.Digest.Hex() {
		return &VerifyError{Artifact: m.Name + " " + m.Version, Check: CheckVersion,
			Err: fmt.Errorf("version %s of %s is sha256:%s, this payload is %s", m.Version, m.Name, d, m.Digest)}
	}
	if st.Versions == nil {
		st.Versions = make(map[string]string)
	}
	st.Versions[m.Version] = m.Digest.Hex()
	return nil
}

type stateEntry struct {
	Digest string    `json:"digest"` // hex
	Added  time.Time `json:"added"`
}

// prune keeps the keep newest entries plus the current and the
// last-known-good one, and returns the digests it dropped.
func (st *nameState) prune(keep int) []string {
	var dropped []string
	n := len(st.Entries)
	i := 0
	st.Entries = slices.DeleteFunc(st.Entries, func(e stateEntry) bool {
		newest := i >= n-keep // entries are oldest first
		i++
		if newest || e.Digest == st.Current || e.Digest == st.LastKnownGood {
			return false
		}
		dropped = append(dropped, e.Digest)
		return true
	})
	return dropped
}

func (s *Store) readState(name string) (nameState, error) {
	var st nameState
	data, err := readBounded(filepath.Join(s.dir, "names", name, "state.json"), maxStateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("read state of %s: %w", name, err)
	}
	if st.Versions == nil {
		// A store written before labels were recorded: claim the labels of
		// the entries it still has.
		for _, se := range st.Entries {
			if e, err := s.entry(name, se); err == nil {
				st.claim(e.Manifest)
			}
		}
	}
	return st, nil
}

func (s *Store) writeState(name string, st nameState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.dir, "names", name, "state.json"), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// lock takes the in-process mutex and the cross-process file lock.
func (s *Store) lock() (unlock func(), err error) {
	s.mu.Lock()
	release, err := lockFile(filepath.Join(s.dir, "lock"))
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return func() { release(); s.mu.Unlock() }, nil
}
