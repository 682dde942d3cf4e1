package rest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Client's own retries are short: the router above it does the long
// backoffs, and tries other routes meanwhile.
const (
	retryWaitMin = 200 * time.Millisecond
	retryWaitMax = 2 * time.Second
	// maxRetryAfter is the longest Retry-After the Client waits out. A
	// longer one ends the retries, and the caller hears of it.
	maxRetryAfter = 5 * time.Second
)

// checkRetry is the Client's retry policy, written for an upload that is
// idempotent by design (every receiver deduplicates by source, epoch and
// seq): retry what failed on the way (connection errors, timeouts), 5xx
// answers other than 501, and 429; never another 4xx, nor an untrusted
// certificate. A done context stops at once.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		return !isCertError(err), nil
	}
	switch code := resp.StatusCode; {
	case code == http.StatusTooManyRequests, code == http.StatusServiceUnavailable:
		d, ok := retryAfter(resp.Header)
		return !ok || d <= maxRetryAfter, nil
	case code >= 500 && code != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
}

// backoff returns how long to wait before retry attempt+1: the Retry-After
// of a 429 or 503, capped at maxRetryAfter, or else an exponential wait from
// lo to hi with jitter.
func backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d, ok := retryAfter(resp.Header); ok {
			return min(d, maxRetryAfter)
		}
	}
	d := hi
	if attempt < 16 {
		d = min(lo<<attempt, hi)
	}
	return d/2 + rand.N(d/2+1)
}

// retryAfter returns the wait a Retry-After header asks for, in seconds or
// as an HTTP date.
func retryAfter(h http.Header) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0, false
		}
		return time.Duration(min(s, int64(24*time.Hour/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0), true
	}
	return 0, false
}

// isCertError reports whether err is about the upstream's TLS certificate:
// retrying will not help, someone must act.
func isCertError(err error) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	_, ok := errors.AsType[x509.CertificateInvalidError](err)
	return ok
}

// retryLogger passes retryablehttp's log records on to a slog.Logger at
// Debug: the Client's caller logs the outcome that matters.
type retryLogger struct{ log *slog.Logger }

func (l retryLogger) Error(msg string, kv ...any) { l.log.Debug(msg, kv...) }
func (l retryLogger) Warn(msg string, kv ...any)  { l.log.Debug(msg, kv...) }
func (l retryLogger) Info(msg string, kv ...any)  { l.log.Debug(msg, kv...) }
func (l retryLogger) Debug(msg string, kv ...any) { l.log.Debug(msg, kv...) }
