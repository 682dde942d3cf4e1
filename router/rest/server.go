package rest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Timeouts of the Server. Bodies may be large and field links slow, so a
// request may take minutes; its headers may not.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 15 * time.Minute
	writeTimeout      = 16 * time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	// shutdownTimeout bounds how long Run waits for requests in flight once
	// its context is done.
	shutdownTimeout = 5 * time.Second
)

// Server serves a Handler over HTTP, or HTTPS when both TLSCert and TLSKey
// are set.
type Server struct {
	// Addr is the host:port to listen on, such as "0.0.0.0:8470".
	Addr string
	// TLSCert and TLSKey name the PEM files of the certificate and its
	// private key.
	TLSCert, TLSKey string
	// Handler answers the requests, usually a *Handler.
	Handler http.Handler
	// Logger receives the server's log records; nil discards them.
	Logger *slog.Logger

	grace time.Duration // for tests: shutdownTimeout if 0
}

// Listen returns a TCP listener on addr, for Serve. With a port of 0 the
// system picks one; the listener's Addr tells which. An address in use is
// an error that says so.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("listen on %s: the address is in use by another process: stop it or change [listen] addr: %w", addr, err)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// Run listens on s.Addr and serves until ctx is done, then shuts down
// gracefully and returns nil. See Serve.
func (s *Server) Run(ctx context.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	ln, err := Listen(s.Addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve serves requests on ln until ctx is done, then stops accepting
// connections, lets the requests in flight finish for a few seconds at most,
// and returns nil. It closes ln. It returns an error if the TLS files cannot
// be loaded or serving fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	defer ln.Close()
	if err := s.check(); err != nil {
		return err
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Connection errors (scanners, TLS handshakes that fail) are noise.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	tlsOn := s.TLSCert != ""
	if tlsOn {
		cert, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey)
		if err != nil {
			return fmt.Errorf("load tls-cert %s and tls-key %s: %w", s.TLSCert, s.TLSKey, err)
		}
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}

	// Batches are applied on a context of their own that outlives the
	// request (see applyContext); it ends here, when the requests in
	// flight had their time.
	closing, closeNow := context.WithCancel(context.Background())
	defer closeNow()
	sv := &serving{closing: closing}
	srv.BaseContext = func(net.Listener) context.Context {
		return context.WithValue(context.Background(), servingKey{}, sv)
	}

	served := make(chan error, 1)
	go func() {
		if tlsOn {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()
	log.Info("listening", "addr", ln.Addr().String(), "tls", tlsOn)

	select {
	case err := <-served:
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	grace := s.grace
	if grace == 0 {
		grace = shutdownTimeout
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still in flight at shutdown; closing their connections", "err", err)
		closeNow()
		srv.Close()
	}
	// The applies that outlived their requests end now; they roll back
	// before Serve returns, so the caller may close what they use.
	closeNow()
	sv.close()
	rolledBack := make(chan struct{})
	go func() { sv.applies.Wait(); close(rolledBack) }()
	select {
	case <-rolledBack:
	case <-time.After(grace):
		log.Warn("applies still ending at shutdown; not waiting for them")
	}
	<-served // http.ErrServerClosed
	log.Info("stopped listening", "addr", ln.Addr().String())
	return nil
}

func (s *Server) check() error {
	if s.Handler == nil {
		return errors.New("rest server: no handler")
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		return errors.New("rest server: set both tls-cert and tls-key, or neither")
	}
	return nil
}
