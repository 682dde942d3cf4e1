package rest

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

// receipt returns the receipt of seq with the given outcome, as the fake
// sink writes it.
func receipt(seq uint64, o pgcourier.Outcome, applied, next uint64) pgcourier.Receipt {
	return pgcourier.Receipt{Source: laptop, Epoch: 1, Seq: seq, Outcome: o, AppliedSeq: applied, NextSeq: next}
}

// blockWith returns a fakeSink setting that blocks the next batch.
func blockWith(msg string, retryAfter time.Duration) func(s *fakeSink) {
	return func(s *fakeSink) { s.blocked, s.retryAfter = msg, retryAfter }
}

// TestRoundTrip runs a Client against a Handler through one scenario:
// uploads, a resend, a gap, a blocked and a refused batch, progress.
func TestRoundTrip(t *testing.T) {
	for _, enc := range []string{"", "gzip", "zstd"} {
		t.Run("encoding="+enc, func(t *testing.T) {
			sink := newFakeSink()
			h := newTestHandler(t, sink, 0)
			var mu sync.Mutex
			var encodings []string
			var sent int64
			srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				encodings = append(encodings, r.Header.Get("Content-Encoding"))
				sent += max(r.ContentLength, 0)
				mu.Unlock()
				h.ServeHTTP(w, r)
			}))
			c := newTestClient(t, srv.URL, token, ClientOptions{Encoding: enc})
			ctx := t.Context()

			steps := []struct {
				name    string
				setup   func(s *fakeSink)
				parcels []pgcourier.Parcel
				want    []pgcourier.Receipt
			}{
				{"single", nil, parcels(t, laptop, 1, 1, 1), []pgcourier.Receipt{receipt(1, pgcourier.Applied, 1, 2)}},
				{"several", nil, parcels(t, laptop, 1, 2, 3), []pgcourier.Receipt{
					receipt(2, pgcourier.Applied, 2, 3), receipt(3, pgcourier.Applied, 3, 4), receipt(4, pgcourier.Applied, 4, 5)}},
				{"resend", nil, parcels(t, laptop, 1, 1, 4), []pgcourier.Receipt{
					receipt(1, pgcourier.Duplicate, 4, 5), receipt(2, pgcourier.Duplicate, 4, 5),
					receipt(3, pgcourier.Duplicate, 4, 5), receipt(4, pgcourier.Duplicate, 4, 5)}},
				{"resend and more", nil, parcels(t, laptop, 1, 4, 2), []pgcourier.Receipt{
					receipt(4, pgcourier.Duplicate, 4, 5), receipt(5, pgcourier.Applied, 5, 6)}},
				{"gap", nil, parcels(t, laptop, 1, 8, 2), []pgcourier.Receipt{receipt(8, pgcourier.Gap, 5, 6)}},
				{"blocked", blockWith("relation public.visit does not exist", 1500*time.Millisecond),
					parcels(t, laptop, 1, 6, 2), []pgcourier.Receipt{{
						Source: laptop, Epoch: 1, Seq: 6, Outcome: pgcourier.Blocked, AppliedSeq: 5, NextSeq: 6,
						Error: "relation public.visit does not exist", RetryAfter: 1500 * time.Millisecond}}},
				{"refused", func(s *fakeSink) { s.blocked, s.refused = "", "epoch 1 was replaced by epoch 2" },
					parcels(t, laptop, 1, 6, 1), []pgcourier.Receipt{{
						Source: laptop, Epoch: 1, Seq: 6, Outcome: pgcourier.Refused, AppliedSeq: 5, NextSeq: 6,
						Error: "epoch 1 was replaced by epoch 2"}}},
			}
			for _, st := range steps {
				if st.setup != nil {
					sink.set(st.setup)
				}
				got, err := c.Deliver(ctx, st.parcels)
				if err != nil {
					t.Fatalf("%s: Deliver() error: %v", st.name, err)
				}
				if diff := cmp.Diff(st.want, got); diff != "" {
					t.Errorf("%s: Deliver() receipts (-want +got):\n%s", st.name, diff)
				}
			}

			p, err := c.Progress(ctx, laptop)
			if err != nil {
				t.Fatalf("Progress() error: %v", err)
			}
			want := pgcourier.Progress{Source: laptop, Epoch: 1, AppliedSeq: 5, StoredSeq: 5}
			if diff := cmp.Diff(want, p); diff != "" {
				t.Errorf("Progress() (-want +got):\n%s", diff)
			}
			if st := sink.state(); st.Undecoded != 0 {
				t.Errorf("%d parcels reached the sink without their decoded batch", st.Undecoded)
			}

			mu.Lock()
			defer mu.Unlock()
			wantEnc := enc
			for i, e := range encodings[:len(encodings)-1] { // the last is Progress's GET
				if e != wantEnc {
					t.Errorf("request %d has Content-Encoding %q, want %q", i, e, wantEnc)
				}
			}
			stats := c.Stats()
			if stats.Requests != int64(len(encodings)) || stats.BytesSent != sent || stats.BytesReceived == 0 {
				t.Errorf("Stats() = %+v, want %d requests and %d bytes sent, some received", stats, len(encodings), sent)
			}
		})
	}
}

func TestClientRefused(t *testing.T) {
	sink := newFakeSink()
	srv := serve(t, newTestHandler(t, sink, 0))
	tests := []struct {
		name    string
		tok     string
		parcels []pgcourier.Parcel
		status  int
		want    string
	}{
		{"wrong token", "not-the-token", parcels(t, laptop, 1, 1, 1), http.StatusUnauthorized,
			"upload to " + srv.URL + ": 401 Unauthorized: the token matches no source"},
		{"other source", token, parcels(t, laptop2, 1, 1, 1), http.StatusForbidden,
			"upload to " + srv.URL + ": 403 Forbidden: a token only speaks for its own source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, srv.URL, tt.tok, ClientOptions{})
			_, err := c.Deliver(t.Context(), tt.parcels)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Deliver() = %v, want an error starting %q", err, tt.want)
			}
			if se := statusOf(err); se == nil || se.StatusCode != tt.status {
				t.Errorf("Deliver() error %v: want a *StatusError of %d", err, tt.status)
			}
			if errors.Is(err, pgcourier.ErrUnreachable) {
				t.Errorf("Deliver() error %v wraps ErrUnreachable; the upstream answered", err)
			}
			if strings.Contains(err.Error(), tt.tok) {
				t.Errorf("Deliver() error %v holds the token", err)
			}
			if n := c.Stats().Requests; n != 1 {
				t.Errorf("%d requests, want 1: a %d is not retried", n, tt.status)
			}
		})
	}
	if diff := cmp.Diff(sinkState{Applied: map[string]map[int64]uint64{}}, sink.state()); diff != "" {
		t.Errorf("sink changed (-want +got):\n%s", diff)
	}
}

func TestClientSinkDown(t *testing.T) {
	sink := newFakeSink()
	sink.err = errTest
	srv := serve(t, newTestHandler(t, sink, 0))
	c := newTestClient(t, srv.URL, token, ClientOptions{RetryMax: 1})
	_, err := c.Deliver(t.Context(), parcels(t, laptop, 1, 1, 1))
	if se := statusOf(err); se == nil || se.StatusCode != http.StatusServiceUnavailable || se.RetryAfter != time.Second {
		t.Fatalf("Deliver() = %v, want a *StatusError of 503 with a retry after 1s", err)
	}
	if errors.Is(err, pgcourier.ErrUnreachable) {
		t.Errorf("Deliver() error %v wraps ErrUnreachable; the upstream answered", err)
	}
	if n := c.Stats().Requests; n != 2 {
		t.Errorf("%d requests, want 2 (RetryMax 1)", n)
	}
	if _, err := c.Progress(t.Context(), laptop); statusOf(err) == nil || statusOf(err).StatusCode != http.StatusServiceUnavailable {
		t.Errorf("Progress() = %v, want a *StatusError of 503", err)
	}
}

func TestClientChecksParcels(t *testing.T) {
	c := newTestClient(t, "http://127.0.0.1:1", token, ClientOptions{})
	ps := parcels(t, laptop, 1, 1, 3)
	ps[2].Seq = 4
	if _, err := c.Deliver(t.Context(), ps); err == nil || !strings.Contains(err.Error(), "consecutive") {
		t.Errorf("Deliver(non-consecutive) = %v, want an error about consecutive seqs", err)
	}
	got, err := c.Deliver(t.Context(), nil)
	if got != nil || err != nil {
		t.Errorf("Deliver(nil) = %v, %v, want nothing", got, err)
	}
	if n := c.Stats().Requests; n != 0 {
		t.Errorf("%d requests, want 0", n)
	}
}

func TestNewClientErrors(t *testing.T) {
	tests := []struct {
		name string
		opts ClientOptions
		want string
	}{
		{"no url", ClientOptions{Token: token}, "want an http:// or https:// url"},
		{"ftp", ClientOptions{URL: "ftp://x", Token: token}, "want an http:// or https:// url"},
		{"no host", ClientOptions{URL: "http:///x", Token: token}, "no host"},
		{"user info", ClientOptions{URL: "http://laptop:secret@x", Token: token}, "user information"},
		{"query", ClientOptions{URL: "http://x/?a=b", Token: token}, "query"},
		{"no token", ClientOptions{URL: "http://x"}, "no token"},
		{"token with newline", ClientOptions{URL: "http://x", Token: token + "\n"}, "spaces or control characters"},
		{"encoding", ClientOptions{URL: "http://x", Token: token, Encoding: "br"}, "encoding"},
		{"timeout", ClientOptions{URL: "http://x", Token: token, Timeout: -time.Second}, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewClient() = %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), token) || strings.Contains(err.Error(), "secret") {
				t.Errorf("NewClient() error %q holds a secret", err)
			}
		})
	}
}

func TestClientHealthz(t *testing.T) {
	srv := serve(t, newTestHandler(t, newFakeSink(), 0))
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %s, want 200", resp.Status)
	}
}

// TestRejectedAnswers checks which answers the router must treat as
// needing someone to act (pgcourier.ErrRejected): a refused token, another
// source's id, a body over the limit; not an overloaded server.
func TestRejectedAnswers(t *testing.T) {
	for code, want := range map[int]bool{401: true, 403: true, 413: true, 400: true, 408: false, 429: false, 500: false, 503: false} {
		err := fmt.Errorf("upload to x: %w", &StatusError{StatusCode: code})
		if got := errors.Is(err, pgcourier.ErrRejected); got != want {
			t.Errorf("errors.Is(%d answer, ErrRejected) = %t, want %t", code, got, want)
		}
	}
}
