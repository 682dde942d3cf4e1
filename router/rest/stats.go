package rest

import (
	"io"
	"net/http"
	"sync/atomic"
)

// ClientStats counts what a Client has sent and received since it was made.
type ClientStats struct {
	// Requests is the number of HTTP requests made, every retry included.
	Requests int64
	// BytesSent is the size of the request bodies as sent on the wire,
	// compressed if the Client compresses, every retry included.
	BytesSent int64
	// BytesReceived is the size of the response bodies received.
	BytesReceived int64
}

// counters are a Client's statistics, updated by its transport.
type counters struct {
	requests, sent, received atomic.Int64
}

func (c *counters) stats() ClientStats {
	return ClientStats{Requests: c.requests.Load(), BytesSent: c.sent.Load(), BytesReceived: c.received.Load()}
}

// countingTransport counts the requests and body bytes that pass through
// base.
type countingTransport struct {
	base  http.RoundTripper
	count *counters
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.count.requests.Add(1)
	if req.ContentLength > 0 {
		t.count.sent.Add(req.ContentLength)
	}
	resp, err := t.base.RoundTrip(req)
	if err == nil && resp.Body != nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, received: &t.count.received}
	}
	return resp, err
}

// CloseIdleConnections closes base's idle connections, if it can.
func (t *countingTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// countingBody counts the bytes read from a response body.
type countingBody struct {
	io.ReadCloser
	received *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.received.Add(int64(n))
	return n, err
}
