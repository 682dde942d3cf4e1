package rest

import (
	"fmt"
	"net/http"
	"time"

	"github.com/pgcourier/pgcourier"
)

// StatusError is an error answer from the upstream that the Client does not
// retry, or still got after its retries: the request reached the upstream,
// which said no. The Client returns it wrapped, so use errors.As to read it.
// A 413 asks for fewer batches per request (it matches pgcourier.ErrTooLarge);
// a 401 or 403 for someone to fix a token or the configuration. A 502 or 504
// comes from a proxy or gateway in front of the upstream that could not
// reach it, and matches pgcourier.ErrUnreachable as a refused connection
// does, so the sender probes for the upstream's return.
type StatusError struct {
	// StatusCode is the HTTP status of the answer, such as 403.
	StatusCode int
	// Message is the upstream's explanation (the "error" of its JSON body),
	// or the start of a body that was not the protocol's JSON.
	Message string
	// RetryAfter is the wait the upstream asked for with Retry-After, or 0.
	RetryAfter time.Duration
}

// Error returns the status and the upstream's message, such as
// "403 Forbidden: a token only speaks for its own source".
func (e *StatusError) Error() string {
	s := fmt.Sprintf("%d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

// Timeout reports whether the answer says that something took too long: a
// gateway that gave up waiting for the upstream (504), or an upstream that
// gave up waiting for the request (408). A sender may then send less at
// once, or wait longer.
func (e *StatusError) Timeout() bool {
	return e.StatusCode == http.StatusGatewayTimeout || e.StatusCode == http.StatusRequestTimeout
}

// Is reports whether the answer is one that someone must act on
// (pgcourier.ErrRejected: a client error other than a timeout, 408, or too
// many requests, 429), a refusal of the request's size
// (pgcourier.ErrTooLarge), or a gateway's report that the upstream is out of
// its reach (pgcourier.ErrUnreachable).
func (e *StatusError) Is(target error) bool {
	switch target {
	case pgcourier.ErrRejected:
		return e.StatusCode >= 400 && e.StatusCode < 500 &&
			e.StatusCode != http.StatusRequestTimeout && e.StatusCode != http.StatusTooManyRequests
	case pgcourier.ErrTooLarge:
		return e.StatusCode == http.StatusRequestEntityTooLarge
	case pgcourier.ErrUnreachable:
		return e.StatusCode == http.StatusBadGateway || e.StatusCode == http.StatusGatewayTimeout
	}
	return false
}
