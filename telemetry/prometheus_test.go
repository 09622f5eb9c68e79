package telemetry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hotswapgo/hotswap/internal/testhost"
	"github.com/hotswapgo/hotswap/telemetry"
)

// TestPrometheusScrapesSwapAndRollback starts a real Prometheus server
// scraping the admin handler every 200ms while calls run without pause
// through a load of v1, a swap to v2 and a rollback, then asks its HTTP
// API for each version's call counter and the swap counter.
func TestPrometheusScrapesSwapAndRollback(t *testing.T) {
	bin := lookPath(t, "prometheus", "prometheus")
	r := newRig(t, testhost.HostOptions{})
	r.load(t, r.v1)
	target := serve(t, telemetry.AdminHandler(r.h, r.reg))
	prom := startPrometheus(t, bin, target)

	// Calls run without pause until the test ends.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var callErr error
	wg.Go(func() {
		m := r.h.Module("pricing")
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := testhost.Quote(ctx, m)
			cancel()
			if err != nil && callErr == nil {
				callErr = err
			}
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
		if callErr != nil {
			t.Errorf("a call failed: %v", callErr)
		}
	}()

	calls := func(version string) float64 {
		return prom.scalar(t, fmt.Sprintf(`max_over_time(hotswap_module_calls_total{module="pricing",version=%q}[5m])`, version))
	}
	waitFor(t, timeout, "Prometheus to see calls of v1", func() bool { return calls("v1") > 0 })
	r.load(t, r.v2)
	waitFor(t, timeout, "Prometheus to see calls of v2", func() bool { return calls("v2") > 0 })
	r.rollback(t)
	waitFor(t, timeout, "Prometheus to see three swaps", func() bool {
		return prom.scalar(t, `hotswap_swaps_total{module="pricing"}`) >= 3
	})

	if got := prom.scalar(t, `hotswap_swaps_total{module="pricing"}`); got != 3 {
		t.Errorf("hotswap_swaps_total = %v; want 3 (load v1, swap to v2, rollback)", got)
	}
	if got := prom.scalar(t, `hotswap_rollbacks_total{module="pricing",result="ok"}`); got != 1 {
		t.Errorf("hotswap_rollbacks_total{result=ok} = %v; want 1", got)
	}
	// The active version after the rollback is v1, and its calls went on.
	before := calls("v1")
	waitFor(t, timeout, "v1's calls to grow after the rollback", func() bool { return calls("v1") > before })
	if got := prom.scalar(t, `hotswap_module_version_info{module="pricing",role="active",version="v1"}`); got != 1 {
		t.Errorf("v1 active after the rollback: version_info = %v; want 1", got)
	}
}

// promServer is a Prometheus server run by a test.
type promServer struct {
	api string // its base URL
}

// startPrometheus runs bin scraping target every 200ms, with its data in a
// temporary directory, and stops it when the test ends.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
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
	addr := freeAddr(t)
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
	p := &promServer{api: "http://" + addr}
	waitFor(t, timeout, "Prometheus to be ready", func() bool {
		select {
		case <-exited:
			out, _ := os.ReadFile(logs.Name())
			t.Fatalf("prometheus exited:\n%s", out)
		default:
		}
		res, err := http.Get(p.api + "/-/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	return p
}

// scalar runs an instant query and returns the single value it yields,
// or 0 when it yields none.
func (p *promServer) scalar(t *testing.T, query string) float64 {
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

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
