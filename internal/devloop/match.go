package devloop

import (
	"fmt"
	"path/filepath"
	"strings"
)

// matcher says which changed files count.
type matcher struct {
	root     string   // absolute source tree
	include  []string // base-name patterns
	exclude  []string // element or relative-path patterns
	buildDir string   // absolute; never counts
}

func newMatcher(root string, include, exclude []string, buildDir string) (matcher, error) {
	for _, p := range append(append([]string(nil), include...), exclude...) {
		if _, err := filepath.Match(p, ""); err != nil {
			return matcher{}, fmt.Errorf("pattern %q: %w", p, err)
		}
	}
	return matcher{root: root, include: include, exclude: exclude, buildDir: buildDir}, nil
}

// counts reports whether a change of the file at name (absolute) counts,
// and its slash-separated path relative to the tree.
func (m matcher) counts(name string) (rel string, ok bool) {
	if !within(m.root, name) || m.excluded(name) {
		return "", false
	}
	base := filepath.Base(name)
	for _, p := range m.include {
		if ok, _ := filepath.Match(p, base); ok {
			r, _ := filepath.Rel(m.root, name)
			return filepath.ToSlash(r), true
		}
	}
	return "", false
}

// excluded reports whether the file or directory at name (absolute) is
// ignored: in the build directory, or matched by an exclude pattern as a
// whole relative path or in any of its elements.
func (m matcher) excluded(name string) bool {
	if within(m.buildDir, name) {
		return true
	}
	r, err := filepath.Rel(m.root, name)
	if err != nil {
		return true
	}
	r = filepath.ToSlash(r)
	for _, p := range m.exclude {
		if ok, _ := filepath.Match(p, r); ok {
			return true
		}
		for _, elem := range strings.Split(r, "/") {
			if ok, _ := filepath.Match(p, elem); ok {
				return true
			}
		}
	}
	return false
}

// within reports whether path is dir or under it; both are absolute.
func within(dir, path string) bool {
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator))
}
