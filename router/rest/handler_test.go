package rest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

// decodeError returns the JSON error body of an answer, failing the test if
// it is not one.
func decodeError(t *testing.T, rec *httptest.ResponseRecorder) errorBody {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var eb errorBody
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil {
		t.Fatalf("answer body is not a JSON error: %v", err)
	}
	if eb.Status != rec.Code || eb.Error == "" {
		t.Errorf("error body = %+v, want status %d and a message", eb, rec.Code)
	}
	return eb
}

func TestHandlerRefuses(t *testing.T) {
	const limit = 64 << 10
	one := encodeBatch(t, laptop, 1, 1)
	two := encodeBatch(t, laptop, 1, 2)
	three := encodeBatch(t, laptop, 1, 3)
	corrupt := bytes.Clone(two)
	corrupt[len(corrupt)-5] ^= 0x40 // inside the compressed body
	zeros := make([]byte, 40<<10)
	many := framed(zeros, zeros, zeros, zeros) // 160 KiB of frames, gzips to little
	bomb := gzipped(t, append(binary.AppendUvarint(nil, 10<<20), make([]byte, 10<<20)...))
	big := make([]byte, limit+1)
	for i := range big {
		big[i] = byte(i * 7919 >> 3)
	}

	tests := []struct {
		name   string
		req    func() *http.Request
		status int
		want   string // in the error message
	}{
		{"no token", func() *http.Request { return upload(laptop, "1", "", framed(one)) },
			http.StatusUnauthorized, "no token"},
		{"wrong token", func() *http.Request { return upload(laptop, "1", "not-the-token", framed(one)) },
			http.StatusUnauthorized, "matches no source"},
		{"basic auth", func() *http.Request {
			r := upload(laptop, "1", "", framed(one))
			r.SetBasicAuth(laptop, token)
			return r
		}, http.StatusUnauthorized, "matches no source"},
		{"empty bearer", func() *http.Request {
			r := upload(laptop, "1", "", framed(one))
			r.Header.Set("Authorization", "Bearer ")
			return r
		}, http.StatusUnauthorized, "matches no source"},
		{"other source's id in path", func() *http.Request {
			return upload(laptop2, "1", token, framed(encodeBatch(t, laptop2, 1, 1)))
		}, http.StatusForbidden, "a token only speaks for its own source"},
		{"unknown source", func() *http.Request {
			return upload("laptop-99", "1", token, framed(encodeBatch(t, "laptop-99", 1, 1)))
		}, http.StatusForbidden, "a token only speaks for its own source"},
		{"own id", func() *http.Request {
			return upload(serverID, "1", token, framed(encodeBatch(t, serverID, 1, 1)))
		}, http.StatusForbidden, "own id"},
		{"batch from another source", func() *http.Request {
			return upload(laptop, "1", token, framed(one, encodeBatch(t, laptop2, 1, 2)))
		}, http.StatusForbidden, "a token only speaks for its own source"},
		{"raw over limit", func() *http.Request { return upload(laptop, "1", token, framed(big)) },
			http.StatusRequestEntityTooLarge, "limit"},
		{"raw over limit, length unknown", func() *http.Request {
			r := upload(laptop, "1", token, framed(one, big))
			r.ContentLength = -1
			return r
		}, http.StatusRequestEntityTooLarge, "limit"},
		{"decompressed over limit", func() *http.Request {
			r := upload(laptop, "1", token, gzipped(t, many))
			r.Header.Set("Content-Encoding", "gzip")
			return r
		}, http.StatusRequestEntityTooLarge, "limit"},
		{"zip bomb", func() *http.Request {
			r := upload(laptop, "1", token, bomb)
			r.Header.Set("Content-Encoding", "gzip")
			return r
		}, http.StatusRequestEntityTooLarge, "limit"},
		{"zstd bomb", func() *http.Request {
			r := upload(laptop, "1", token, zstded(t, many))
			r.Header.Set("Content-Encoding", "zstd")
			return r
		}, http.StatusRequestEntityTooLarge, "limit"},
		{"corrupt batch", func() *http.Request { return upload(laptop, "1", token, framed(one, corrupt, three)) },
			http.StatusBadRequest, "batch is corrupt"},
		{"not a batch", func() *http.Request { return upload(laptop, "1", token, framed([]byte("hello"))) },
			http.StatusBadRequest, "not a pgcourier batch"},
		{"frame cut short", func() *http.Request { return upload(laptop, "1", token, framed(one)[:len(one)/2]) },
			http.StatusBadRequest, "cut short"},
		{"frame length cut short", func() *http.Request {
			return upload(laptop, "1", token, append(framed(one), 0x80))
		}, http.StatusBadRequest, "frame length"},
		{"empty frame", func() *http.Request { return upload(laptop, "1", token, append(framed(one), 0)) },
			http.StatusBadRequest, "empty"},
		{"empty body", func() *http.Request { return upload(laptop, "1", token, nil) },
			http.StatusBadRequest, "no batch"},
		{"not gzip", func() *http.Request {
			r := upload(laptop, "1", token, framed(one))
			r.Header.Set("Content-Encoding", "gzip")
			return r
		}, http.StatusBadRequest, "gzip"},
		{"not zstd", func() *http.Request {
			r := upload(laptop, "1", token, framed(one))
			r.Header.Set("Content-Encoding", "zstd")
			return r
		}, http.StatusBadRequest, "cannot be read"},
		{"unknown encoding", func() *http.Request {
			r := upload(laptop, "1", token, framed(one))
			r.Header.Set("Content-Encoding", "br")
			return r
		}, http.StatusUnsupportedMediaType, "content encoding"},
		{"wrong content type", func() *http.Request {
			r := upload(laptop, "1", token, framed(one))
			r.Header.Set("Content-Type", "application/json")
			return r
		}, http.StatusUnsupportedMediaType, "content type"},
		{"seq not a number", func() *http.Request { return upload(laptop, "one", token, framed(one)) },
			http.StatusBadRequest, "not a batch number"},
		{"seq 0", func() *http.Request { return upload(laptop, "0", token, framed(one)) },
			http.StatusBadRequest, "not a batch number"},
		{"seq differs from path", func() *http.Request { return upload(laptop, "5", token, framed(one)) },
			http.StatusBadRequest, "has seq 1, want 5"},
		{"not consecutive", func() *http.Request { return upload(laptop, "1", token, framed(one, three)) },
			http.StatusBadRequest, "has seq 3, want 2"},
		{"mixed epochs", func() *http.Request {
			return upload(laptop, "1", token, framed(one, encodeBatch(t, laptop, 2, 2)))
		}, http.StatusBadRequest, "one epoch"},
		{"GET batches", func() *http.Request {
			r := upload(laptop, "1", token, nil)
			r.Method = http.MethodGet
			return r
		}, http.StatusMethodNotAllowed, "use PUT"},
		{"POST batches", func() *http.Request {
			r := upload(laptop, "1", token, framed(one))
			r.Method = http.MethodPost
			return r
		}, http.StatusMethodNotAllowed, "use PUT"},
		{"PUT progress", func() *http.Request {
			r := httptest.NewRequest(http.MethodPut, "/v1/sources/"+laptop+"/progress", nil)
			r.Header.Set("Authorization", "Bearer "+token)
			return r
		}, http.StatusMethodNotAllowed, "use GET"},
		{"progress of another source", func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/v1/sources/"+laptop2+"/progress", nil)
			r.Header.Set("Authorization", "Bearer "+token)
			return r
		}, http.StatusForbidden, "a token only speaks for its own source"},
		{"progress without token", func() *http.Request {
			return httptest.NewRequest(http.MethodGet, "/v1/sources/"+laptop+"/progress", nil)
		}, http.StatusUnauthorized, "no token"},
		{"POST healthz", func() *http.Request { return httptest.NewRequest(http.MethodPost, "/healthz", nil) },
			http.StatusMethodNotAllowed, "use GET"},
		{"unknown path", func() *http.Request { return httptest.NewRequest(http.MethodGet, "/v1/sources/"+laptop, nil) },
			http.StatusNotFound, "no such resource"},
		{"extra path segment", func() *http.Request {
			return upload(laptop, "1/2", token, framed(one))
		}, http.StatusNotFound, "no such resource"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := newFakeSink()
			// Some state to keep: laptop-07 applied up to 0 in epoch 1 is
			// the empty map; give laptop-08 a batch.
			sink.applied[laptop2] = map[int64]uint64{1: 3}
			before := sink.state()
			h := newTestHandler(t, sink, limit)

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, tt.req())

			if rec.Code != tt.status {
				t.Errorf("status = %d, want %d (body %s)", rec.Code, tt.status, rec.Body)
			}
			eb := decodeError(t, rec)
			if !strings.Contains(eb.Error, tt.want) {
				t.Errorf("error = %q, want it to contain %q", eb.Error, tt.want)
			}
			if rec.Code == http.StatusUnauthorized && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", rec.Header().Get("WWW-Authenticate"))
			}
			if rec.Code == http.StatusMethodNotAllowed && rec.Header().Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
			if strings.Contains(eb.Error, token) {
				t.Error("the error message holds the token")
			}
			if diff := cmp.Diff(before, sink.state()); diff != "" {
				t.Errorf("sink changed (-before +after):\n%s", diff)
			}
		})
	}
}

// TestHandlerCorruptThirdOfFour checks that a request is taken whole or not
// at all: a corrupt batch late in the body keeps the earlier ones out too.
func TestHandlerCorruptThirdOfFour(t *testing.T) {
	sink := newFakeSink()
	h := newTestHandler(t, sink, 0)
	ps := parcels(t, laptop, 1, 1, 4)
	ps[2].Data = bytes.Clone(ps[2].Data)
	ps[2].Data[len(ps[2].Data)-3] ^= 0xff

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, upload(laptop, "1", token, framedParcels(ps)))
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("status = %d, want 400 (body %s)", rec.Code, rec.Body)
	}
	if eb := decodeError(t, rec); !strings.Contains(eb.Error, "batch 2 of the body (seq 3)") {
		t.Errorf("error = %q, want it to name batch 2 (seq 3)", eb.Error)
	}
	if diff := cmp.Diff(sinkState{Applied: map[string]map[int64]uint64{}}, sink.state()); diff != "" {
		t.Errorf("sink changed (-want +got):\n%s", diff)
	}

	// The same four, intact, go in whole.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, upload(laptop, "1", token, framedParcels(parcels(t, laptop, 1, 1, 4))))
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200 (body %s)", rec.Code, rec.Body)
	}
	want := sinkState{Applied: map[string]map[int64]uint64{laptop: {1: 4}}, Calls: 1}
	if diff := cmp.Diff(want, sink.state()); diff != "" {
		t.Errorf("sink state (-want +got):\n%s", diff)
	}
}

// TestHandlerStatus checks the status and headers of each kind of answer.
func TestHandlerStatus(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(s *fakeSink)
		seq        uint64
		n          int
		status     int
		retryAfter string
		outcomes   []pgcourier.Outcome
	}{
		{"applied", nil, 1, 2, http.StatusOK, "", []pgcourier.Outcome{pgcourier.Applied, pgcourier.Applied}},
		{"duplicate then applied", func(s *fakeSink) { s.applied[laptop] = map[int64]uint64{1: 1} }, 1, 2,
			http.StatusOK, "", []pgcourier.Outcome{pgcourier.Duplicate, pgcourier.Applied}},
		{"gap", nil, 3, 1, http.StatusConflict, "", []pgcourier.Outcome{pgcourier.Gap}},
		{"blocked", blockWith("column x does not exist", 2500*time.Millisecond), 1, 2,
			http.StatusLocked, "3", []pgcourier.Outcome{pgcourier.Blocked}},
		{"refused", func(s *fakeSink) { s.refused = "stale epoch" }, 1, 1,
			http.StatusUnprocessableEntity, "", []pgcourier.Outcome{pgcourier.Refused}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := newFakeSink()
			if tt.setup != nil {
				tt.setup(sink)
			}
			h := newTestHandler(t, sink, 0)
			h.gapWait = time.Millisecond
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, upload(laptop, strconv.FormatUint(tt.seq, 10), token, framedParcels(parcels(t, laptop, 1, tt.seq, tt.n))))
			if rec.Code != tt.status {
				t.Fatalf("status = %d, want %d (body %s)", rec.Code, tt.status, rec.Body)
			}
			if got := rec.Header().Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			var ub uploadBody
			if err := json.NewDecoder(rec.Body).Decode(&ub); err != nil {
				t.Fatal(err)
			}
			var got []pgcourier.Outcome
			for _, r := range ub.Receipts {
				got = append(got, r.Outcome)
			}
			if ub.Source != laptop {
				t.Errorf("source = %q, want %q", ub.Source, laptop)
			}
			if diff := cmp.Diff(tt.outcomes, got); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			if st := sink.state(); st.Undecoded != 0 {
				t.Errorf("%d parcels reached the sink without their decoded batch", st.Undecoded)
			}
		})
	}
}

func TestHandlerSinkDown(t *testing.T) {
	sink := newFakeSink()
	sink.err = errTest
	h := newTestHandler(t, sink, 0)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, upload(laptop, "1", token, framedParcels(parcels(t, laptop, 1, 1, 1))))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status = %d, want 503", rec.Code)
	}
	if got := rec.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1", got)
	}
	if eb := decodeError(t, rec); strings.Contains(eb.Error, errTest.Error()) {
		t.Errorf("error = %q: it tells the sender the receiver's internal error", eb.Error)
	}
}

func TestHealthz(t *testing.T) {
	h := newTestHandler(t, newFakeSink(), 0)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", rec.Code)
	}
	var got healthBody
	if err := json.NewDecoder(rec.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if want := (healthBody{Status: "ok", Node: serverID}); got != want {
		t.Errorf("healthz = %+v, want %+v", got, want)
	}
}

func TestNewHandlerErrors(t *testing.T) {
	sink := newFakeSink()
	tests := []struct {
		name string
		opts HandlerOptions
		want string
	}{
		{"bad node", HandlerOptions{Node: "Server", Sink: sink}, "node"},
		{"no sink", HandlerOptions{Node: serverID}, "no sink"},
		{"negative limit", HandlerOptions{Node: serverID, Sink: sink, MaxBodyBytes: -1}, "max body bytes"},
		{"bad source", HandlerOptions{Node: serverID, Sink: sink, Sources: map[string][32]byte{"Laptop": {}}}, "source"},
		{"self as source", HandlerOptions{Node: serverID, Sink: sink, Sources: map[string][32]byte{serverID: {1}}}, "the node itself"},
		{"shared token", HandlerOptions{Node: serverID, Sink: sink, Sources: map[string][32]byte{laptop: {1}, laptop2: {1}}},
			"sources laptop-07 and laptop-08 have the same token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHandler(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewHandler() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseTokenHash(t *testing.T) {
	want := tokenHash(token)
	good := "" // hex of want
	for _, b := range want {
		good += string("0123456789abcdef"[b>>4]) + string("0123456789abcdef"[b&15])
	}
	got, err := ParseTokenHash(good)
	if err != nil || got != want {
		t.Errorf("ParseTokenHash(%q) = %x, %v, want %x", good, got, err, want)
	}
	for _, bad := range []string{"", token, strings.ToUpper(good), good[:62], good + "00", "zz" + good[2:]} {
		_, err := ParseTokenHash(bad)
		if err == nil {
			t.Errorf("ParseTokenHash(%q) = nil error, want one", bad)
		} else if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("ParseTokenHash error %q quotes its input", err)
		}
	}
}
