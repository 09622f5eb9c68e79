package control

import (
	"context"
	"net/http"
	"net/url"
	"path/filepath"
	"time"

	"github.com/hotswapgo/hotswap/kernel"
)

// Paths of the kernel level's operations (see package kernel).
const (
	pathBPF         = APIPrefix + "/bpf"
	pathBPFLoad     = APIPrefix + "/bpf/{slot}/load"
	pathBPFRollback = APIPrefix + "/bpf/{slot}/rollback"
)

// BPFStatus describes the service's eBPF slots: the
// `hotswap bpf status -o json` document.
type BPFStatus struct {
	Outcome
	// Slots lists every slot, sorted by name.
	Slots []kernel.Status `json:"slots"`
}

// BPFResult answers an eBPF load or rollback.
type BPFResult struct {
	Outcome
	Slot string `json:"slot"`
	// Serving is the version attached now: the new one after a success,
	// the one that kept serving after a refusal or a failed health check;
	// nil if none.
	Serving *kernel.VersionStatus `json:"serving"`
	// Previous is the version kept loaded for rollback; nil if none.
	Previous *kernel.VersionStatus `json:"previous"`
	TookMS   int64                 `json:"took_ms"`
}

func (s *Server) bpfStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, &BPFStatus{Outcome: Outcome{OK: true}, Slots: s.h.SlotStatus()})
}

func (s *Server) bpfLoad(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("slot")
	up, ok := s.upload(w, r, "bpf load", &BPFResult{Slot: name})
	if !ok {
		return
	}
	s.bpfChange(r, up.st, name, func(ctx context.Context) error {
		_, err := s.h.LoadSlot(ctx, name, up.label, up.manifest, up.body)
		return err
	})
}

func (s *Server) bpfRollback(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("slot")
	s.bpfChange(r, newStream(w, time.Now()), name, func(ctx context.Context) error {
		_, err := s.h.RollbackSlot(ctx, name)
		return err
	})
}

// bpfChange runs do, a change of slot name, and answers with the slot's
// state after it.
func (s *Server) bpfChange(r *http.Request, st *stream, name string, do func(context.Context) error) {
	err := do(r.Context())
	res := &BPFResult{Outcome: Outcome{OK: err == nil}, Slot: name, TookMS: time.Since(st.start).Milliseconds()}
	for _, sl := range s.h.SlotStatus() {
		if sl.Name == name {
			res.Serving, res.Previous = sl.Active, sl.Previous
		}
	}
	if err != nil {
		res.Error = classify(err)
		if res.Serving != nil {
			res.Error.Serving = name + "@" + res.Serving.Version
		}
	}
	st.result(res)
}

// BPFStatus describes the service's eBPF slots.
func (c *Client) BPFStatus(ctx context.Context) (*BPFStatus, error) {
	st := &BPFStatus{}
	return st, c.do(ctx, "bpf status", http.MethodGet, pathBPF, nil, st, nil)
}

// BPFLoadFile streams the eBPF object at path, with its manifest at
// path+".manifest" (which may be missing), to be verified and swapped into
// slot. The service reads the object only once the manifest passed.
func (c *Client) BPFLoadFile(ctx context.Context, slot, path string) (*BPFResult, error) {
	res := &BPFResult{Slot: slot}
	a, err := openArtifact(path)
	if err != nil {
		return res, &Error{Op: "bpf load " + slot, Kind: KindBadRequest, Message: err.Error()}
	}
	defer a.f.Close()
	return res, c.send(ctx, "bpf load "+slot, http.MethodPost, slotPath(pathBPFLoad, slot),
		uploadHeader(filepath.Base(path), a.manifest), a.f, a.size, res, nil)
}

// BPFRollback makes the previous version of slot serve again.
func (c *Client) BPFRollback(ctx context.Context, slot string) (*BPFResult, error) {
	res := &BPFResult{Slot: slot}
	return res, c.do(ctx, "bpf rollback "+slot, http.MethodPost, slotPath(pathBPFRollback, slot), []byte("{}"), res, nil)
}

func slotPath(pattern, slot string) string {
	return pathBPF + "/" + url.PathEscape(slot) + pattern[len(pathBPF+"/{slot}"):]
}
