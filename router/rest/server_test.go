package rest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcourier/pgcourier"
)

// startServer serves s on a new listener on 127.0.0.1 until the test ends
// or stop is called, and returns the listener's address and stop, which
// returns Serve's error.
func startServer(t *testing.T, s *Server) (addr string, stop func() error) {
	t.Helper()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	var once bool
	var serveErr error
	stop = func() error {
		if !once {
			once = true
			cancel()
			select {
			case serveErr = <-served:
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return 10s after its context was canceled")
			}
		}
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), stop
}

func TestServerServe(t *testing.T) {
	s := &Server{Handler: newTestHandler(t, newFakeSink(), 0)}
	addr, stop := startServer(t, s)
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %s, want 200", resp.Status)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Serve() = %v, want nil after its context is done", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Serve took %s to return", d)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("the server still answers after Serve returned")
	}
}

func TestServerRun(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(t.Context())
	s := &Server{Addr: addr, Handler: newTestHandler(t, newFakeSink(), 0)}
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx) }()
	var resp *http.Response
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if resp, err = http.Get("http://" + addr + "/healthz"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return 5s after its context was canceled")
	}
}

func TestServerAddressInUse(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &Server{Addr: ln.Addr().String(), Handler: http.NotFoundHandler()}
	err = s.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Run() on a taken address = %v, want an error saying it is in use", err)
	}
}

func TestServerConfigErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		s    *Server
		want string
	}{
		{"no handler", &Server{Addr: "127.0.0.1:0"}, "no handler"},
		{"cert without key", &Server{Addr: "127.0.0.1:0", Handler: http.NotFoundHandler(), TLSCert: missing}, "both tls-cert and tls-key"},
		{"missing files", &Server{Addr: "127.0.0.1:0", Handler: http.NotFoundHandler(), TLSCert: missing, TLSKey: missing}, "load tls-cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Run(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestServerFinishesInFlight cancels Serve's context while an upload is in
// the sink: the upload still gets its answer.
func TestServerFinishesInFlight(t *testing.T) {
	sink := newFakeSink()
	entered := make(chan struct{})
	release := make(chan struct{})
	sink.hook = func([]pgcourier.Parcel) {
		close(entered)
		<-release
	}
	addr, stop := startServer(t, &Server{Handler: newTestHandler(t, sink, 0)})
	c := newTestClient(t, "http://"+addr, token, ClientOptions{})
	delivered := make(chan error, 1)
	go func() {
		_, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
		delivered <- err
	}()
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(50 * time.Millisecond) // let Shutdown begin
	close(release)
	if err := <-delivered; err != nil {
		t.Errorf("Deliver() during shutdown = %v, want success", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve() = %v, want nil", err)
	}
	if got := sink.state().Applied[laptop][1]; got != 1 {
		t.Errorf("applied seq = %d, want 1", got)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key into
// dir and returns their file names and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgcourier test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestServerTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	sink := newFakeSink()
	addr, _ := startServer(t, &Server{TLSCert: certFile, TLSKey: keyFile, Handler: newTestHandler(t, sink, 0)})
	url := "https://" + addr

	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c := newTestClient(t, url, token, ClientOptions{HTTPClient: trusting, Encoding: "zstd"})
	got, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 2))
	if err != nil || len(got) != 2 || got[1].Outcome != pgcourier.Applied {
		t.Fatalf("Deliver() over TLS = %v, %v, want two applied receipts", got, err)
	}
	p, err := c.Progress(t.Context(), laptop)
	if err != nil || p.AppliedSeq != 2 {
		t.Errorf("Progress() over TLS = %+v, %v, want applied seq 2", p, err)
	}

	// A client that does not trust the certificate fails at once: retrying
	// cannot help, and the upstream is not unreachable but misconfigured.
	c = newTestClient(t, url, token, ClientOptions{RetryMax: 3})
	_, err = c.Deliver(t.Context(), parcels(t, laptop, 1, 3, 1))
	if err == nil || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("Deliver() with an untrusted certificate = %v, want an error saying so", err)
	}
	if errors.Is(err, pgcourier.ErrUnreachable) {
		t.Errorf("Deliver() error %v wraps ErrUnreachable", err)
	}
	if n := c.Stats().Requests; n != 1 {
		t.Errorf("%d requests, want 1: a certificate error is not retried", n)
	}

	// Plain HTTP to the TLS listener is refused.
	c = newTestClient(t, "http://"+addr, token, ClientOptions{RetryMax: -1})
	if _, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 3, 1)); err == nil {
		t.Error("Deliver() over plain HTTP to a TLS listener succeeded")
	}
	if got := sink.state().Applied[laptop][1]; got != 2 {
		t.Errorf("applied seq = %d, want 2", got)
	}
}

// TestServerEndsApplyAtClose stops Serve while an apply does not finish:
// once the requests in flight had their time, the apply's context ends, and
// Serve returns.
func TestServerEndsApplyAtClose(t *testing.T) {
	sink := newSlowSink(time.Hour)
	addr, stop := startServer(t, &Server{Handler: newTestHandler(t, sink, 0), grace: 100 * time.Millisecond})
	c := newTestClient(t, "http://"+addr, token, ClientOptions{RetryMax: -1})
	delivered := make(chan error, 1)
	go func() {
		_, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
		delivered <- err
	}()
	<-sink.entered
	if err := stop(); err != nil {
		t.Errorf("Serve() = %v, want nil", err)
	}
	select {
	case err := <-sink.ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the apply ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the apply still runs 5s after Serve returned")
	}
	if err := <-delivered; err == nil {
		t.Error("Deliver() = nil error, want one: the server closed before the apply ended")
	}
	if got := sink.state().Applied[laptop][1]; got != 0 {
		t.Errorf("applied seq = %d, want 0: the apply was cut short", got)
	}
}
