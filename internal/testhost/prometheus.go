package testhost

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Prometheus is a Prometheus server run by a test (Debian package
// prometheus, which .ci/run installs).
type Prometheus struct {
	api string // its base URL
}

// StartPrometheus runs a Prometheus server scraping target (host:port,
// path /metrics) every 200ms, with its data under t.TempDir(), and stops it
// when the test ends. It skips the test when prometheus is not installed.
func StartPrometheus(t testing.TB, target string) *Prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (Debian package prometheus; .ci/run installs it)")
	}
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 200ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: hotswap
    static_configs:
      - targets: [%q]
`, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logs, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logs.Name())
			t.Logf("prometheus log:\n%s", out)
		}
	})
	p := &Prometheus{api: "http://" + addr}
	client := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(logs.Name())
			t.Fatalf("prometheus exited:\n%s", out)
		case <-time.After(100 * time.Millisecond):
		}
		if res, err := client.Get(p.api + "/-/ready"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after a minute")
		}
	}
}

// Query runs an instant PromQL query and returns the single value it
// yields, or 0 when it yields none; more than one series fails the test.
func (p *Prometheus) Query(t testing.TB, query string) float64 {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	res, err := client.Get(p.api + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatalf("query %s: %v", query, err)
	}
	defer res.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatalf("query %s: decode: %v", query, err)
	}
	if body.Status != "success" {
		t.Fatalf("query %s: %s", query, body.Error)
	}
	switch len(body.Data.Result) {
	case 0:
		return 0
	case 1:
	default:
		t.Fatalf("query %s: %d series; want one", query, len(body.Data.Result))
	}
	s, _ := body.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("query %s: value %q: %v", query, s, err)
	}
	return v
}

// WaitQuery polls query until cond holds for its value, failing the test
// after d.
func (p *Prometheus) WaitQuery(t testing.TB, d time.Duration, query string, cond func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		v := p.Query(t, query)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %s = %v after %v; the condition still fails", query, v, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
