package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// relay is the link between a pgcourier route and its receiver: a TCP
// forwarder on 127.0.0.1 in front of the receiver's port (the REST
// listener's, or the target Postgres's for the postgres route). It starts
// down: it accepts every connection and closes it at once, so the sender
// sees its receiver unreachable, as on a field link that is out. Once
// up, it forwards each new connection to the receiver. It counts the
// bytes it forwards each way, which are the TCP payload bytes of the
// route's connections: what the route puts on the wire.
//
// Forwarding costs the harness a read and a write per chunk; pgcourier
// sends batches, not a message per change, so that cost stays small (see
// the Method text).
type relay struct {
	ln     net.Listener
	target string // host:port of the receiver

	up     atomic.Bool
	sent   atomic.Int64 // bytes from the sender to the receiver
	back   atomic.Int64 // bytes from the receiver to the sender
	conns  atomic.Int64 // connections forwarded
	refuse atomic.Int64 // connections closed while down

	mu     sync.Mutex
	open   map[net.Conn]struct{} // connections being forwarded, both ends
	closed bool
	wg     sync.WaitGroup // the accept loop and every forwarding goroutine
}

// startRelay listens on a free port of 127.0.0.1 and starts accepting
// connections for target, with the link down. close stops it and waits for
// every goroutine it started.
func startRelay(target string) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.accept()
	}()
	return r, nil
}

// addr returns the relay's address, host:port.
func (r *relay) addr() string { return r.ln.Addr().String() }

// linkUp brings the link up: connections from now on are forwarded.
func (r *relay) linkUp() { r.up.Store(true) }

// bytes returns the bytes forwarded so far, both ways.
func (r *relay) bytes() int64 { return r.sent.Load() + r.back.Load() }

// connections returns how many connections the relay forwarded and how
// many it closed while the link was down.
func (r *relay) connections() (forwarded, refused int64) { return r.conns.Load(), r.refuse.Load() }

// answered reports whether the receiver has sent anything through the
// relay: the route reached it.
func (r *relay) answered() bool { return r.back.Load() > 0 }

// accept accepts connections until the listener is closed.
func (r *relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed
		}
		if !r.up.Load() {
			r.refuse.Add(1)
			c.Close()
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.forward(c)
		}()
	}
}

// forward connects to the target and copies both ways until both
// directions ended.
func (r *relay) forward(conn net.Conn) {
	c := conn.(*net.TCPConn)
	defer c.Close()
	tc, err := net.DialTimeout("tcp", r.target, 5*time.Second)
	if err != nil {
		return // the sender sees its connection closed
	}
	t := tc.(*net.TCPConn)
	defer t.Close()
	if !r.track(c, t) {
		return
	}
	defer r.untrack(c, t)
	r.conns.Add(1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(t, c, &r.sent)
	}()
	pipe(c, t, &r.back)
	<-done
}

// track records a forwarded connection's two ends, so that close can end
// them; it reports false once the relay is closing.
func (r *relay) track(c, t net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.open[c], r.open[t] = struct{}{}, struct{}{}
	return true
}

func (r *relay) untrack(c, t net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.open, c)
	delete(r.open, t)
}

// pipe copies from src to dst, adding every chunk to n once written. The
// end of src's stream becomes a half-close of dst; an error on either
// side closes both, which ends the other direction too.
func pipe(dst, src *net.TCPConn, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				dst.Close()
				src.Close()
				return
			}
			n.Add(int64(k))
		}
		if errors.Is(err, io.EOF) {
			dst.CloseWrite()
			return
		}
		if err != nil {
			dst.Close()
			src.Close()
			return
		}
	}
}

// close stops accepting, ends every forwarded connection and waits for the
// relay's goroutines.
func (r *relay) close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.open {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
