package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hotswapgo/hotswap/artifact"
)

// maxLine bounds one line of a streamed answer and one plain answer.
const maxLine = 64 << 20

// Client calls the control API of a service over its unix socket. Each
// call opens a connection. Every method returns an answer whose Outcome
// says whether the operation succeeded; when it did not, the error is an
// *Error naming what failed and what still serves (its Kind is
// KindUnreachable when the service could not be asked).
//
// A Client is safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
		// A request with a body waits for "100 Continue", so a refused
		// peer is answered before it sends an artifact.
		ExpectContinueTimeout: 10 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket returns the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Status describes the service. Cancelling ctx abandons the request.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	st := &Status{}
	return st, c.do(ctx, "status", http.MethodGet, pathStatus, nil, st, nil)
}

// History returns audit events of module (all targets when empty), newest
// first, at most limit (0 means DefaultHistoryLimit).
func (c *Client) History(ctx context.Context, module string, limit int) (*History, error) {
	q := url.Values{}
	if module != "" {
		q.Set("module", module)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	path := pathHistory
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	op := "history"
	if module != "" {
		op += " " + module
	}
	h := &History{}
	return h, c.do(ctx, op, http.MethodGet, path, nil, h, nil)
}

// Load sends an artifact's payload and manifest (nil: none) to be verified
// and loaded as the next version of module. progress, if not nil, is
// called as each step starts. Cancelling ctx closes the connection, which
// aborts the load on the service unless it already activated.
func (c *Client) Load(ctx context.Context, module string, req LoadRequest, progress func(Progress)) (*ModuleResult, error) {
	return c.load(ctx, module, req.Label, req.Manifest, bytes.NewReader(req.Payload), int64(len(req.Payload)), progress)
}

// LoadFile streams the artifact at path, with its manifest at
// path+".manifest" (which may be missing), to be loaded as module; see
// Load. The service reads the payload only once the manifest passed.
func (c *Client) LoadFile(ctx context.Context, module, path string, progress func(Progress)) (*ModuleResult, error) {
	a, err := openArtifact(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", module, err)
	}
	defer a.f.Close()
	return c.load(ctx, module, filepath.Base(path), a.manifest, a.f, a.size, progress)
}

// localArtifact is an artifact file opened for an upload.
type localArtifact struct {
	f        *os.File
	size     int64
	manifest []byte // nil if there is none
}

// openArtifact opens the artifact at path and reads its manifest at
// path+".manifest" (which may be missing: the service's trust policy
// decides).
func openArtifact(path string) (*localArtifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read artifact: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read artifact: %w", err)
	}
	manifest, err := readManifest(artifact.ManifestPath(path))
	if errors.Is(err, os.ErrNotExist) {
		manifest, err = nil, nil
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	return &localArtifact{f: f, size: fi.Size(), manifest: manifest}, nil
}

// readManifest reads a manifest file, refusing one larger than
// artifact.MaxManifestSize.
func readManifest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, artifact.MaxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > artifact.MaxManifestSize {
		return nil, fmt.Errorf("%s: %w", path, artifact.ErrManifestTooLarge)
	}
	return data, nil
}

func (c *Client) load(ctx context.Context, module, label string, manifest []byte, payload io.Reader, size int64, progress func(Progress)) (*ModuleResult, error) {
	res := &ModuleResult{Module: module}
	return res, c.send(ctx, "load "+module, http.MethodPost, modulePath(pathLoad, module), uploadHeader(label, manifest), payload, size, res, progress)
}

// uploadHeader returns the headers of a request whose body is an
// artifact's payload.
func uploadHeader(label string, manifest []byte) http.Header {
	h := http.Header{}
	h.Set("Content-Type", "application/octet-stream")
	h.Set(LabelHeader, label)
	if manifest != nil {
		h.Set(ManifestHeader, base64.StdEncoding.EncodeToString(manifest))
	}
	return h
}

// Rollback makes the previous version of module serve again.
func (c *Client) Rollback(ctx context.Context, module string, progress func(Progress)) (*ModuleResult, error) {
	res := &ModuleResult{Module: module}
	return res, c.do(ctx, "rollback "+module, http.MethodPost, modulePath(pathRollback, module), []byte("{}"), res, progress)
}

// Upgrade replaces the service's binary with the one at binary, a path on
// the service's machine (empty: the service's configured binary), and
// returns when the upgrade is decided: committed (ServingPID is the new
// process), failed or rolled back (the process that answered serves).
// Cancelling ctx aborts the upgrade until the new process is ready.
func (c *Client) Upgrade(ctx context.Context, binary string, progress func(Progress)) (*UpgradeResult, error) {
	body, err := json.Marshal(UpgradeRequest{Binary: binary})
	if err != nil {
		return nil, err
	}
	res := &UpgradeResult{}
	return res, c.do(ctx, "upgrade", http.MethodPost, pathUpgrade, body, res, progress)
}

func modulePath(pattern, module string) string {
	return APIPrefix + "/modules/" + url.PathEscape(module) + pattern[len(APIPrefix+"/modules/{module}"):]
}

type answer interface{ outcome() *Outcome }

// do sends a request with a JSON body (nil: none) and decodes its answer
// into res, calling progress for each progress line of a streamed answer.
// It returns res's Error, with Op set, when the operation did not succeed.
func (c *Client) do(ctx context.Context, op, method, path string, body []byte, res answer, progress func(Progress)) error {
	var h http.Header
	var rd io.Reader
	if body != nil {
		h = http.Header{"Content-Type": {"application/json"}}
		rd = bytes.NewReader(body)
	}
	return c.send(ctx, op, method, path, h, rd, int64(len(body)), res, progress)
}

// send sends a request whose body (nil: none) is size bytes long.
func (c *Client) send(ctx context.Context, op, method, path string, header http.Header, body io.Reader, size int64, res answer, progress func(Progress)) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://hotswap"+path, body)
	if err != nil {
		return err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.ContentLength = size
		// The service answers a refusal before the body is sent.
		req.Header.Set("Expect", "100-continue")
	}
	fail := func(e *Error) error {
		e.Op = op
		o := res.outcome()
		o.OK, o.Error = false, e
		return e
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fail(canceled(cerr))
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fail(unreachable(c.socket, err))
	}
	defer resp.Body.Close()
	if err := decodeAnswer(resp, res, progress); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return fail(canceled(cerr))
		}
		return fail(unreachable(c.socket, err))
	}
	o := res.outcome()
	switch {
	case o.OK && o.Error == nil:
		return nil
	case o.Error == nil:
		o.Error = &Error{Kind: KindInternal, Message: fmt.Sprintf("the service answered HTTP %d without an error", resp.StatusCode)}
	}
	o.OK = false
	o.Error.Op = op
	return o.Error
}

// decodeAnswer reads a plain or streamed answer into res.
func decodeAnswer(resp *http.Response, res answer, progress func(Progress)) error {
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxLine)).Decode(res); err != nil {
			return fmt.Errorf("read answer (HTTP %d): %w", resp.StatusCode, err)
		}
		return nil
	case ContentTypeNDJSON:
	default:
		return fmt.Errorf("not a hotswap control answer: HTTP %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		var line struct {
			Progress *Progress       `json:"progress"`
			Result   json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("read answer: %w", err)
		}
		if line.Result != nil {
			if err := json.Unmarshal(line.Result, res); err != nil {
				return fmt.Errorf("read result: %w", err)
			}
			return nil
		}
		if line.Progress != nil && progress != nil {
			progress(*line.Progress)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	return errors.New("the answer ended before its result (did the service exit?)")
}
