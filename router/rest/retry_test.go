package rest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcourier/pgcourier"
)

// scripted returns a test server that answers request i (from 0) with
// answer(i, w, r), and a counter of the requests it got.
func scripted(t *testing.T, answer func(i int64, w http.ResponseWriter, r *http.Request)) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer(n.Add(1)-1, w, r)
	}))
	return srv, &n
}

// applied answers an upload of one laptop batch of seq 1 as applied.
func applied(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, uploadBody{Source: laptop, Receipts: []receiptBody{
		{Epoch: 1, Seq: 1, Outcome: pgcourier.Applied, AppliedSeq: 1, NextSeq: 2}}})
}

func failWith(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: msg, Status: status})
}

func TestClientRetries(t *testing.T) {
	tests := []struct {
		name     string
		answer   func(i int64, w http.ResponseWriter, r *http.Request)
		retryMax int
		requests int64
		status   int           // of the *StatusError wanted; 0 for success
		minWait  time.Duration // the least time Deliver must take
		want     string        // in the error
	}{
		{"503 twice then OK", func(i int64, w http.ResponseWriter, r *http.Request) {
			if i < 2 {
				failWith(w, http.StatusServiceUnavailable, "database restarting")
				return
			}
			applied(w)
		}, 3, 3, 0, 0, ""},
		{"500 then OK", func(i int64, w http.ResponseWriter, r *http.Request) {
			if i < 1 {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			applied(w)
		}, 3, 2, 0, 0, ""},
		{"429 with Retry-After", func(i int64, w http.ResponseWriter, r *http.Request) {
			if i < 1 {
				w.Header().Set("Retry-After", "1")
				failWith(w, http.StatusTooManyRequests, "slow down")
				return
			}
			applied(w)
		}, 3, 2, 0, time.Second, ""},
		{"429 with a long Retry-After", func(i int64, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "3600")
			failWith(w, http.StatusTooManyRequests, "come back in an hour")
		}, 3, 1, http.StatusTooManyRequests, 0, "429 Too Many Requests: come back in an hour (retry after 1h0m0s)"},
		{"400 is not retried", func(i int64, w http.ResponseWriter, r *http.Request) {
			failWith(w, http.StatusBadRequest, "the body holds no batch: send at least one frame")
		}, 3, 1, http.StatusBadRequest, 0, ": 400 Bad Request: the body holds no batch: send at least one frame"},
		{"413 is not retried", func(i int64, w http.ResponseWriter, r *http.Request) {
			failWith(w, http.StatusRequestEntityTooLarge, "too big")
		}, 3, 1, http.StatusRequestEntityTooLarge, 0, "413 Request Entity Too Large: too big"},
		{"501 is not retried", func(i int64, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotImplemented)
		}, 3, 1, http.StatusNotImplemented, 0, "501 Not Implemented"},
		{"502 until retries run out", func(i int64, w http.ResponseWriter, r *http.Request) {
			http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
		}, 2, 3, http.StatusBadGateway, 0, "502 Bad Gateway: <html>bad gateway</html>"},
		{"504 until retries run out", func(i int64, w http.ResponseWriter, r *http.Request) {
			http.Error(w, "upstream timed out", http.StatusGatewayTimeout)
		}, 1, 2, http.StatusGatewayTimeout, 0, "504 Gateway Timeout: upstream timed out"},
		{"no retries", func(i int64, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}, -1, 1, http.StatusServiceUnavailable, 0, "503"},
		{"a redirect is not followed", func(i int64, w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://example.invalid/", http.StatusTemporaryRedirect)
		}, 3, 1, http.StatusTemporaryRedirect, 0, "307"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, n := scripted(t, tt.answer)
			c := newTestClient(t, srv.URL, token, ClientOptions{RetryMax: tt.retryMax})
			start := time.Now()
			got, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
			elapsed := time.Since(start)
			if n.Load() != tt.requests {
				t.Errorf("server got %d requests, want %d", n.Load(), tt.requests)
			}
			if c.Stats().Requests != tt.requests {
				t.Errorf("Stats().Requests = %d, want %d", c.Stats().Requests, tt.requests)
			}
			if elapsed < tt.minWait-50*time.Millisecond {
				t.Errorf("Deliver() took %s, want at least %s", elapsed, tt.minWait)
			}
			if tt.status == 0 {
				if err != nil || len(got) != 1 || got[0].Outcome != pgcourier.Applied {
					t.Fatalf("Deliver() = %v, %v, want one applied receipt", got, err)
				}
				return
			}
			se := statusOf(err)
			if se == nil || se.StatusCode != tt.status {
				t.Fatalf("Deliver() = %v, want a *StatusError of %d", err, tt.status)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Deliver() error %q, want it to contain %q", err, tt.want)
			}
			// Only a gateway's 502 or 504 says that the upstream was out of
			// reach; every other answer came from the upstream.
			gateway := tt.status == http.StatusBadGateway || tt.status == http.StatusGatewayTimeout
			if got, want := errors.Is(err, pgcourier.ErrUnreachable), gateway; got != want {
				t.Errorf("Deliver() error %v: wraps ErrUnreachable = %t, want %t", err, got, want)
			}
			if got, want := errors.Is(err, pgcourier.ErrTooLarge), tt.status == http.StatusRequestEntityTooLarge; got != want {
				t.Errorf("Deliver() error %v: wraps ErrTooLarge = %t, want %t", err, got, want)
			}
		})
	}
}

func TestClientUnreachable(t *testing.T) {
	t.Run("server closed", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		c := newTestClient(t, srv.URL, token, ClientOptions{RetryMax: 2})
		_, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
		if !errors.Is(err, pgcourier.ErrUnreachable) {
			t.Fatalf("Deliver() = %v, want an error wrapping ErrUnreachable", err)
		}
		if !strings.Contains(err.Error(), "after 3 attempts") {
			t.Errorf("Deliver() error %q, want it to count 3 attempts", err)
		}
		if strings.Contains(err.Error(), token) {
			t.Errorf("Deliver() error %q holds the token", err)
		}
		if _, err := c.Progress(t.Context(), laptop); !errors.Is(err, pgcourier.ErrUnreachable) {
			t.Errorf("Progress() = %v, want an error wrapping ErrUnreachable", err)
		}
	})
	t.Run("attempts time out", func(t *testing.T) {
		release := make(chan struct{})
		srv, n := scripted(t, func(i int64, w http.ResponseWriter, r *http.Request) {
			<-release
		})
		t.Cleanup(func() { close(release) }) // before the server closes
		c := newTestClient(t, srv.URL, token, ClientOptions{RetryMax: 1, Timeout: 50 * time.Millisecond})
		_, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
		if !errors.Is(err, pgcourier.ErrUnreachable) {
			t.Fatalf("Deliver() = %v, want an error wrapping ErrUnreachable", err)
		}
		if n.Load() != 2 {
			t.Errorf("server got %d requests, want 2", n.Load())
		}
	})
}

func TestClientContextStopsRetries(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	srv, n := scripted(t, func(i int64, w http.ResponseWriter, r *http.Request) {
		cancel()
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	c := newTestClient(t, srv.URL, token, ClientOptions{RetryMax: 50})
	c.rc.RetryWaitMin, c.rc.RetryWaitMax = time.Second, 2*time.Second
	start := time.Now()
	_, err := c.Deliver(ctx, parcels(t, laptop, 1, 1, 1))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Deliver() = %v, want an error wrapping context.Canceled", err)
	}
	if errors.Is(err, pgcourier.ErrUnreachable) {
		t.Errorf("Deliver() error %v wraps ErrUnreachable; the caller gave up", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Deliver() took %s after the context was canceled", d)
	}
	if n.Load() != 1 {
		t.Errorf("server got %d requests, want 1", n.Load())
	}
}

func TestClientChecksAnswer(t *testing.T) {
	tests := []struct {
		name string
		body any
		want string
	}{
		{"other source", uploadBody{Source: laptop2, Receipts: []receiptBody{{Epoch: 1, Seq: 1, Outcome: pgcourier.Applied}}}, "source"},
		{"no receipt", uploadBody{Source: laptop}, "0 receipts"},
		{"wrong seq", uploadBody{Source: laptop, Receipts: []receiptBody{{Epoch: 1, Seq: 2, Outcome: pgcourier.Applied}}}, "seq 2, want 1"},
		{"unknown outcome", uploadBody{Source: laptop, Receipts: []receiptBody{{Epoch: 1, Seq: 1, Outcome: "teleported"}}}, "teleported"},
		{"not JSON", "oops", "not the protocol's JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := scripted(t, func(i int64, w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				if s, ok := tt.body.(string); ok {
					w.Write([]byte(s))
					return
				}
				json.NewEncoder(w).Encode(tt.body)
			})
			c := newTestClient(t, srv.URL, token, ClientOptions{})
			_, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Deliver() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	future := time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		in     string
		ok     bool
		lo, hi time.Duration
	}{
		{"", false, 0, 0},
		{"2", true, 2 * time.Second, 2 * time.Second},
		{"-1", false, 0, 0},
		{"soon", false, 0, 0},
		{future, true, time.Second, 3 * time.Second},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.in != "" {
			h.Set("Retry-After", tt.in)
		}
		d, ok := retryAfter(h)
		if ok != tt.ok || d < tt.lo || d > tt.hi {
			t.Errorf("retryAfter(%q) = %s, %v, want %v in [%s, %s]", tt.in, d, ok, tt.ok, tt.lo, tt.hi)
		}
	}
}

func TestBackoff(t *testing.T) {
	for attempt := range 40 {
		d := backoff(retryWaitMin, retryWaitMax, attempt, nil)
		if d < retryWaitMin/2 || d > retryWaitMax {
			t.Errorf("backoff(attempt %d) = %s, want within [%s, %s]", attempt, d, retryWaitMin/2, retryWaitMax)
		}
	}
	resp := &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"60"}}}
	if d := backoff(retryWaitMin, retryWaitMax, 0, resp); d != maxRetryAfter {
		t.Errorf("backoff(Retry-After: 60) = %s, want the cap %s", d, maxRetryAfter)
	}
}
