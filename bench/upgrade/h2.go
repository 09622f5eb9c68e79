package main

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
	"sync"
	"sync/atomic"
	"time"
)

type h2Result struct {
	Requests   int64 `json:"requests"`
	Failed     int64 `json:"failed"`
	Handshakes int64 `json:"handshakes"`
	// Reconnects are the handshakes after each client's first one.
	Reconnects int64   `json:"reconnects"`
	Resumed    int64   `json:"resumed"`
	ResumedPct float64 `json:"resumed_pct"`
	upgradeCounts
}

// h2Load runs Go HTTP/2 clients over TLS, each with its own connection and
// session cache, and counts every handshake and whether it resumed.
type h2Load struct {
	tally
	requests   atomic.Int64
	handshakes atomic.Int64
	resumed    atomic.Int64 // among handshakes after a client's first
	clients    int
	quit       chan struct{}
	wg         sync.WaitGroup
	transports []*http.Transport
}

func startH2Load(addr string, roots *x509.CertPool, clients int, maxRequests int64) *h2Load {
	l := &h2Load{quit: make(chan struct{}), clients: clients}
	for range clients {
		tr := l.transport(roots)
		l.transports = append(l.transports, tr)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			for {
				select {
				case <-l.quit:
					return
				default:
				}
				if l.requests.Add(1) > maxRequests {
					l.requests.Add(-1)
					return
				}
				if err := get(client, "https://"+addr+"/"); err != nil {
					l.fail("request", err)
				}
			}
		}()
	}
	return l
}

// transport speaks HTTP/2 only, through a dialer that counts handshakes.
func (l *h2Load) transport(roots *x509.CertPool) *http.Transport {
	cfg := &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	var first atomic.Bool
	var protos http.Protocols
	protos.SetHTTP2(true)
	return &http.Transport{
		Protocols: &protos,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := tls.Dialer{Config: cfg}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			l.handshakes.Add(1)
			if first.Swap(true) && c.(*tls.Conn).ConnectionState().DidResume {
				l.resumed.Add(1)
			}
			return c, nil
		},
	}
}

func get(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		return fmt.Errorf("%s %s; want 200 over HTTP/2", resp.Proto, resp.Status)
	}
	return nil
}

func (l *h2Load) stop(timeout time.Duration) (h2Result, error) {
	if err := stopWorkers(l.quit, &l.wg, timeout); err != nil {
		return h2Result{}, err
	}
	for _, tr := range l.transports {
		tr.CloseIdleConnections()
	}
	r := h2Result{Requests: l.requests.Load(), Failed: l.failed.Load(), Handshakes: l.handshakes.Load(), Resumed: l.resumed.Load()}
	r.Reconnects = max(r.Handshakes-int64(l.clients), 0)
	if r.Reconnects > 0 {
		r.ResumedPct = float64(int(1000*float64(r.Resumed)/float64(r.Reconnects))) / 10
	}
	return r, nil
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key
// under dir and returns their paths and a pool that trusts it.
func writeCert(dir string) (cert, key string, roots *x509.CertPool, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bench/upgrade"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return "", "", nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", nil, err
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", nil, err
	}
	roots = x509.NewCertPool()
	roots.AddCert(c)
	return cert, key, roots, nil
}
