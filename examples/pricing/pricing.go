// Package pricing is the example service: an HTTP API that answers price
// quotes through the hot-swappable module "pricing". Its guests live in
// guests/: v1 and v2 answer differently and share a counter kept by the
// host, and guests/broken holds modules that must be refused or fail alone.
//
// `hotswap demo` runs it; see the README.
package pricing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// Module is the name of the module the service calls.
const Module = "pricing"

// DefaultCallTimeout bounds one quote.
const DefaultCallTimeout = 2 * time.Second

// Handler serves:
//
//	GET /quote?item=NAME&qty=N[&user=ID]   the module's answer, as JSON
//	GET /healthz                           200 when a version of the module serves
//
// user, when given, is the call's routing key: while a canary of the module
// runs, a user's quotes all come from the same version.
func Handler(m *module.Module) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /quote", func(w http.ResponseWriter, r *http.Request) {
		qty, err := strconv.Atoi(r.URL.Query().Get("qty"))
		if err != nil {
			httpError(w, http.StatusBadRequest, "qty must be an integer")
			return
		}
		req, _ := json.Marshal(struct {
			Item string `json:"item"`
			Qty  int    `json:"qty"`
		}{r.URL.Query().Get("item"), qty})
		ctx, cancel := context.WithTimeout(r.Context(), DefaultCallTimeout)
		defer cancel()
		var out []byte
		if user := r.URL.Query().Get("user"); user != "" {
			out, err = m.CallKey(ctx, user, "quote", req)
		} else {
			out, err = m.Call(ctx, "quote", req)
		}
		switch {
		case errors.Is(err, module.ErrGuest):
			httpError(w, http.StatusBadRequest, err.Error())
		case errors.Is(err, module.ErrNotFound):
			httpError(w, http.StatusServiceUnavailable, err.Error())
		case err != nil:
			httpError(w, http.StatusBadGateway, err.Error())
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write(append(out, '\n'))
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := m.Status()
		if st.Active == nil {
			httpError(w, http.StatusServiceUnavailable, "no version of "+Module+" is loaded")
			return
		}
		fmt.Fprintf(w, "ok %s@%s\n", st.Name, st.Active.Version)
	})
	return mux
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
