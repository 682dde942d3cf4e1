package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRelay runs a relay in front of a server that answers every request
// with a longer one: refused while the link is down, forwarded once up, and
// counted as the kernel counts the payload bytes of the forwarded
// connection at the server's end (the wire bytes of the other contenders).
func TestRelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	const request, answer = 3000, 50000
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, request)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(bytes.Repeat([]byte{'a'}, answer)); err != nil {
						return
					}
				}
			}()
		}
	}()

	r, err := startRelay(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.close)

	// Down: the connection is accepted and closed at once.
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read through the relay while down = %d, %v; want the connection closed", n, err)
	}
	c.Close()
	if r.answered() || r.bytes() != 0 {
		t.Errorf("relay while down: answered %v, %d bytes; want nothing forwarded", r.answered(), r.bytes())
	}

	r.linkUp()
	c, err = net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	const rounds = 5
	for range rounds {
		if _, err := c.Write(bytes.Repeat([]byte{'q'}, request)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, answer)); err != nil {
			t.Fatal(err)
		}
	}
	// The relay counts a chunk after forwarding it: the last count may
	// trail the client's read by a moment.
	const want = rounds * (request + answer)
	for deadline := time.Now().Add(5 * time.Second); r.bytes() < want && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := r.bytes(); got != want {
		t.Errorf("relay counted %d bytes, want %d", got, want)
	}
	if !r.answered() {
		t.Error("relay: answered false after the server answered")
	}

	// The kernel's count at the server's end of the forwarded connection.
	port := ln.Addr().(*net.TCPAddr).Port
	var kernel int64
	deadline := time.Now().Add(5 * time.Second)
	for {
		all, err := tcpBytes()
		if err != nil {
			t.Skipf("socket diagnostics unavailable: %v", err)
		}
		kernel = 0
		for k, b := range all {
			if k.serverPort == port {
				kernel += b
			}
		}
		if kernel == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if kernel != want {
		t.Errorf("kernel counted %d bytes on the server's connections (port %d), the relay %d", kernel, port, want)
	}
}
