package rest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// The test topology: two laptops upload to a server.
const (
	serverID = "server-01"
	laptop   = "laptop-07"
	laptop2  = "laptop-08"
	token    = "tok-laptop-07-d41d8cd98f00b204e980"
	token2   = "tok-laptop-08-9800998ecf8427e0b204"
)

var errTest = errors.New("connect to 127.0.0.1:5432: connection refused")

// fakeSink is an in-memory pgcourier.Sink that applies a batch only when it
// is the next of its source and epoch.
type fakeSink struct {
	mu         sync.Mutex
	applied    map[string]map[int64]uint64 // source → epoch → last seq applied
	calls      int                         // Deliver calls
	undecoded  int                         // parcels delivered without a matching Batch
	blocked    string                      // if set, the next batch is blocked with this error
	refused    string                      // if set, the next batch is refused with this error
	retryAfter time.Duration               // of a blocked batch
	err        error                       // if set, Deliver and Progress fail with it

	// hook, if set, is called at the start of every Deliver, without the
	// lock held.
	hook func(parcels []pgcourier.Parcel)
}

var _ pgcourier.Sink = (*fakeSink)(nil)

func newFakeSink() *fakeSink {
	return &fakeSink{applied: map[string]map[int64]uint64{}}
}

func (s *fakeSink) Deliver(ctx context.Context, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	if s.hook != nil {
		s.hook(parcels)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return nil, s.err
	}
	var out []pgcourier.Receipt
	for _, p := range parcels {
		if p.Batch == nil || p.Batch.Source != p.Source || p.Batch.Epoch != p.Epoch || p.Batch.Seq != p.Seq {
			s.undecoded++
		}
		epochs := s.applied[p.Source]
		if epochs == nil {
			epochs = map[int64]uint64{}
			s.applied[p.Source] = epochs
		}
		cur := epochs[p.Epoch]
		r := pgcourier.Receipt{Source: p.Source, Epoch: p.Epoch, Seq: p.Seq, AppliedSeq: cur, NextSeq: cur + 1}
		switch {
		case p.Seq <= cur:
			r.Outcome = pgcourier.Duplicate
		case p.Seq > cur+1:
			r.Outcome = pgcourier.Gap
		case s.blocked != "":
			r.Outcome, r.Error, r.RetryAfter = pgcourier.Blocked, s.blocked, s.retryAfter
		case s.refused != "":
			r.Outcome, r.Error = pgcourier.Refused, s.refused
		default:
			epochs[p.Epoch] = p.Seq
			r.Outcome, r.AppliedSeq, r.NextSeq = pgcourier.Applied, p.Seq, p.Seq+1
		}
		out = append(out, r)
		if !r.Outcome.Done() {
			break
		}
	}
	return out, nil
}

func (s *fakeSink) Progress(ctx context.Context, source string) (pgcourier.Progress, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return pgcourier.Progress{}, s.err
	}
	p := pgcourier.Progress{Source: source, Blocked: s.blocked}
	for epoch, seq := range s.applied[source] {
		if epoch >= p.Epoch {
			p.Epoch, p.AppliedSeq, p.StoredSeq = epoch, seq, seq
		}
	}
	return p, nil
}

// sinkState is what a fakeSink holds, to compare before and after.
type sinkState struct {
	Applied   map[string]map[int64]uint64
	Calls     int
	Undecoded int
}

func (s *fakeSink) state() sinkState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := sinkState{Applied: map[string]map[int64]uint64{}, Calls: s.calls, Undecoded: s.undecoded}
	for src, epochs := range s.applied {
		st.Applied[src] = maps.Clone(epochs)
	}
	return st
}

// set changes the sink's settings under its lock.
func (s *fakeSink) set(f func(s *fakeSink)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

var testRel = &pgcourier.Relation{Schema: "public", Name: "edc_subject", Columns: []pgcourier.Column{
	{Name: "id", Type: "bigint", Key: true},
	{Name: "subject_identifier", Type: "character varying(50)"},
}}

// encodeBatch returns an encoded batch of source with one transaction.
func encodeBatch(t testing.TB, source string, epoch int64, seq uint64) []byte {
	t.Helper()
	b := &pgcourier.Batch{Source: source, Epoch: epoch, Seq: seq, Transactions: []pgcourier.Transaction{{
		CommitLSN:  pgcourier.LSN(0x16000000 + seq*0x100),
		CommitTime: time.Date(2025, 3, 1, 12, 0, 0, int(seq)*1000, time.UTC),
		Changes: []pgcourier.Change{{
			Rel: testRel,
			Op:  pgcourier.OpInsert,
			New: []pgcourier.Value{pgcourier.TextValue(strconv.FormatUint(seq, 10)), pgcourier.TextValue("S-" + source)},
		}},
	}}}
	data, err := wire.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// parcels returns n consecutive parcels of source from seq.
func parcels(t testing.TB, source string, epoch int64, seq uint64, n int) []pgcourier.Parcel {
	t.Helper()
	var ps []pgcourier.Parcel
	for i := range n {
		s := seq + uint64(i)
		ps = append(ps, pgcourier.Parcel{Source: source, Epoch: epoch, Seq: s, Rows: 1, Data: encodeBatch(t, source, epoch, s)})
	}
	return ps
}

// framed returns an upload body holding datas.
func framed(datas ...[]byte) []byte {
	var body []byte
	for _, d := range datas {
		body = appendFrame(body, d)
	}
	return body
}

// framedParcels returns an upload body holding the parcels' data.
func framedParcels(ps []pgcourier.Parcel) []byte {
	var body []byte
	for _, p := range ps {
		body = appendFrame(body, p.Data)
	}
	return body
}

func gzipped(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t testing.TB, data []byte) []byte {
	t.Helper()
	enc, err := newZstdEncoder()
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(data, nil)
}

func tokenHash(tok string) [32]byte { return sha256.Sum256([]byte(tok)) }

// newTestHandler returns a Handler of serverID that accepts both laptops.
func newTestHandler(t testing.TB, sink pgcourier.Sink, maxBody int64) *Handler {
	t.Helper()
	h, err := NewHandler(HandlerOptions{
		Node:         serverID,
		Sources:      map[string][32]byte{laptop: tokenHash(token), laptop2: tokenHash(token2)},
		Sink:         sink,
		MaxBodyBytes: maxBody,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.gapWait = 50 * time.Millisecond
	return h
}

// newTestClient returns a Client of the server at url with tiny retry
// waits.
func newTestClient(t testing.TB, url, tok string, opts ClientOptions) *Client {
	t.Helper()
	opts.URL, opts.Token = url, tok
	c, err := NewClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	c.rc.RetryWaitMin, c.rc.RetryWaitMax = time.Millisecond, 5*time.Millisecond
	return c
}

// serve runs h on a test server for the test's duration.
func serve(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// statusOf returns the *StatusError in err's chain, or nil.
func statusOf(err error) *StatusError {
	if se, ok := errors.AsType[*StatusError](err); ok {
		return se
	}
	return nil
}

// upload returns a PUT request of an upload of source from seq.
func upload(source, seq, tok string, body []byte) *http.Request {
	req := httptest.NewRequest(http.MethodPut, "/v1/sources/"+source+"/batches/"+seq, bytes.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", MediaType)
	return req
}
