package upgrade

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// h2Mux answers with this process's pid; /slow?ms=N first waits N ms.
func h2Mux() *http.ServeMux {
	mux := http.NewServeMux()
	pid := strconv.Itoa(os.Getpid())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, pid) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
		}
		io.WriteString(w, pid)
	})
	return mux
}

// serveH2 serves HTTP/1.1 and HTTP/2 on ln: over TLS with the upgrader's
// shared ticket keys if cert is set, else cleartext with h2c.
func serveH2(u *Upgrader, ln net.Listener, cert, key string) (*HTTPServer, error) {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h2Mux(), Protocols: &protos}
	if cert == "" {
		s := NewHTTPServer(srv, HTTPOptions{})
		go s.Serve(ln)
		return s, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}}
	if err := u.ShareSessionTickets(srv.TLSConfig); err != nil {
		return nil, err
	}
	s := NewHTTPServer(srv, HTTPOptions{})
	go s.ServeTLS(ln, "", "")
	return s, nil
}

func serveH2Helper(u *Upgrader) int {
	ln, err := u.Listen(context.Background(), "tcp", os.Getenv(envTCP))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	s, err := serveH2(u, ln, os.Getenv(envCert), os.Getenv(envKey))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return readyThenDrain(u, s)
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key
// under dir and returns their paths and a pool that trusts it.
func writeTestCert(t *testing.T, dir string) (cert, key string, pool *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hotswap test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return cert, key, pool
}

// TestHTTP2DrainAcrossUpgrade upgrades a server that HTTP/2 clients (over
// TLS, and cleartext h2c) use without a pause: no request fails, the one
// in flight finishes on the old process, the old process's connections go
// away by themselves (GOAWAY) long before the drain deadline, and over TLS
// the client resumes its session with the new process.
func TestHTTP2DrainAcrossUpgrade(t *testing.T) {
	fds, fdList := countFDs(t), listFDs()
	defer func() {
		// Connections close asynchronously once both sides are done.
		deadline := time.Now().Add(5 * time.Second)
		for countFDs(t) > fds && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := countFDs(t); got > fds {
			t.Errorf("open descriptors = %d; want at most %d as before\nbefore: %s\nafter:  %s", got, fds, fdList, listFDs())
		}
	}()
	for _, useTLS := range []bool{true, false} {
		name := "h2c"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			env := []string{envHelper + "=serve-h2", envTCP + "=127.0.0.1:0"}
			var cert, key string
			var pool *x509.CertPool
			if useTLS {
				cert, key, pool = writeTestCert(t, dir)
				env = append(env, envCert+"="+cert, envKey+"="+key)
			}
			u, err := New(Options{NoSignals: true, Probation: 200 * time.Millisecond, Env: env, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv, err := serveH2(u, ln, cert, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := u.Ready(); err != nil {
				t.Fatal(err)
			}

			var protos http.Protocols
			tr := &http.Transport{Protocols: &protos}
			url := "http://" + ln.Addr().String()
			if useTLS {
				protos.SetHTTP2(true)
				tr.TLSClientConfig = &tls.Config{RootCAs: pool, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
				url = "https://" + ln.Addr().String()
			} else {
				protos.SetUnencryptedHTTP2(true)
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			get := func(path string) (pid string, resp *http.Response, err error) {
				resp, err = client.Get(url + path)
				if err != nil {
					return "", nil, err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err == nil && (resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2) {
					err = fmt.Errorf("%s %s; want 200 over HTTP/2", resp.Proto, resp.Status)
				}
				return string(b), resp, err
			}
			if _, _, err := get("/"); err != nil {
				t.Fatalf("GET / before the upgrade: %v", err)
			}
			// A client that stays idle through the upgrade: only a GOAWAY
			// ends its connection before the drain deadline.
			idleTr := tr.Clone()
			defer idleTr.CloseIdleConnections()
			idle := &http.Client{Transport: idleTr, Timeout: 20 * time.Second}
			if resp, err := idle.Get(url + "/"); err != nil {
				t.Fatalf("GET / before the upgrade: %v", err)
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}

			slow := make(chan error, 1)
			go func() {
				pid, _, err := get("/slow?ms=1500")
				if err == nil && pid != self {
					err = fmt.Errorf("served by %s; want the old process %s", pid, self)
				}
				slow <- err
			}()
			var requests, failed atomic.Int64
			var mu sync.Mutex // protects pids and errs
			pids := map[string]int{}
			var errs []error
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						requests.Add(1)
						pid, _, err := get("/")
						mu.Lock()
						if err != nil {
							failed.Add(1)
							errs = append(errs, err)
						} else {
							pids[pid]++
						}
						mu.Unlock()
					}
				}()
			}

			res, err := u.Upgrade(context.Background())
			if err != nil {
				close(stop)
				wg.Wait()
				t.Fatalf("Upgrade() = %v", err)
			}
			defer stopChild(t, res.PID)
			child := strconv.Itoa(res.PID)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			if err := srv.Drain(ctx); err != nil {
				t.Errorf("Drain() = %v; want every HTTP/2 connection gone by itself", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Drain() took %v; want the connections to go away after GOAWAY, well before the 20s deadline", d)
			}
			select {
			case err := <-slow:
				if err != nil {
					t.Errorf("request in flight during the upgrade: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("request in flight during the upgrade did not finish")
			}
			if resp, err := idle.Get(url + "/"); err != nil {
				t.Errorf("GET / after the drain on the idle client: %v", err)
			} else {
				resp.Body.Close()
			}
			pid, resp, err := get("/")
			close(stop)
			wg.Wait()
			if err != nil || pid != child {
				t.Errorf("GET / after the drain = %q, %v; want the new process %s", pid, err, child)
			} else if useTLS && !resp.TLS.DidResume {
				t.Errorf("TLS handshake with the new process did not resume the session the old one issued")
			}
			if n := failed.Load(); n > 0 {
				t.Errorf("%d of %d requests failed; first: %v", n, requests.Load(), errs[0])
			}
			if pids[child] == 0 {
				t.Errorf("requests served by %v; want some by the new process %s", pids, child)
			}
		})
	}
}
