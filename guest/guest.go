package guest

import (
	"encoding/json"
	"fmt"
	"strings"
)

// ABIVersion is the guest ABI this SDK speaks, as major<<16 | minor. A host
// refuses a module whose major differs from its own.
const ABIVersion = 1<<16 | 0

// Handler answers one call: input in, output or error out.
type Handler func(in []byte) ([]byte, error)

type entry struct {
	name string
	fn   Handler
}

// Registration happens during package initialization, which is single
// threaded, and is read-only afterwards; no locking is needed.
var (
	handlers []entry
	selfTest func() error
	migrate  func(from string) error
)

// Handle registers h under name. Call it from an init function. Registering
// the same name twice panics, which fails the module at load time.
func Handle(name string, h Handler) {
	if name == "" || strings.ContainsRune(name, '\n') {
		panic(fmt.Sprintf("guest: invalid handler name %q", name))
	}
	for _, e := range handlers {
		if e.name == name {
			panic(fmt.Sprintf("guest: handler %q registered twice", name))
		}
	}
	handlers = append(handlers, entry{name, h})
}

// HandleJSON registers a handler whose input and output are JSON documents
// decoded into In and encoded from Out.
func HandleJSON[In, Out any](name string, h func(In) (Out, error)) {
	Handle(name, func(in []byte) ([]byte, error) {
		var req In
		if err := json.Unmarshal(in, &req); err != nil {
			return nil, fmt.Errorf("decode %s request: %w", name, err)
		}
		resp, err := h(req)
		if err != nil {
			return nil, err
		}
		return json.Marshal(resp)
	})
}

// SelfTest registers a check the host runs once on a fresh instance before
// the version may serve. A non-nil error rejects the version.
func SelfTest(f func() error) { selfTest = f }

// Migrate registers a hook the host runs once when this version activates,
// with the version string of the version it replaces ("" for the first). Use
// it to transform host-kept state; a non-nil error rejects the version and
// the previous one keeps serving.
func Migrate(f func(from string) error) { migrate = f }

func handlerNames() string {
	names := make([]string, len(handlers))
	for i, e := range handlers {
		names[i] = e.name
	}
	return strings.Join(names, "\n")
}
