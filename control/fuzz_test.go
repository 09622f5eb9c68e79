package control

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// FuzzDecodeAnswer feeds arbitrary answers to the client's decoder: it must
// not panic, and calls progress at most once per line.
func FuzzDecodeAnswer(f *testing.F) {
	f.Add(ContentTypeNDJSON, []byte(`{"progress":{"step":"verify","detail":"a.wasm","elapsed_ms":0}}
{"result":{"ok":true,"module":"pricing","serving":{"version":"v2"},"took_ms":3}}
`))
	f.Add(ContentTypeNDJSON, []byte(`{"progress":{"step":"prepare"}}`))
	f.Add(ContentTypeNDJSON, []byte("{\"result\":{\"ok\":false,\"error\":{\"kind\":\"rejected\",\"check\":\"init\"}}}\n"))
	f.Add("application/json", []byte(`{"ok":false,"error":{"kind":"forbidden","message":"no"}}`))
	f.Add("text/plain", []byte("404 page not found"))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {contentType}},
			Body: io.NopCloser(bytes.NewReader(body))}
		var res ModuleResult
		steps := 0
		decodeAnswer(resp, &res, func(p Progress) { steps++ })
		if steps > bytes.Count(body, []byte("\n"))+1 {
			t.Errorf("decodeAnswer called progress %d times for %d lines", steps, bytes.Count(body, []byte("\n"))+1)
		}
	})
}
