package wire

import (
	"bytes"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pgcourier/pgcourier"
)

// fuzzSeedLimit keeps the big round-trip cases out of the fuzz corpus.
const fuzzSeedLimit = 64 << 10

// FuzzDecode checks that Decode never panics and that a batch it accepts
// encodes again, to the same header (format version and content hash
// included), and decodes to an equal batch.
func FuzzDecode(f *testing.F) {
	for _, g := range goldenVersions {
		if data, err := os.ReadFile(g.batchFile()); err == nil {
			f.Add(data)
		}
	}
	f.Add(smallBatch(f))
	f.Add(smallContinuedBatch(f))
	for _, b := range roundTripCases(f) {
		data, err := Encode(b)
		if err != nil {
			f.Fatal(err)
		}
		if len(data) <= fuzzSeedLimit {
			f.Add(data)
		}
	}
	f.Add([]byte(magic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err != nil {
			return
		}
		h, err := ReadHeader(data)
		if err != nil {
			t.Fatalf("Decode accepted data that ReadHeader refuses: %v", err)
		}
		again, err := Encode(b)
		if err != nil {
			t.Fatalf("Encode(Decode(data)) = %v", err)
		}
		h2, err := ReadHeader(again)
		if err != nil {
			t.Fatalf("ReadHeader(Encode(Decode(data))) = %v", err)
		}
		if diff := cmp.Diff(h, h2); diff != "" {
			t.Errorf("ReadHeader(Encode(Decode(data))) differs from ReadHeader(data) (-want +got):\n%s", diff)
		}
		b2, err := Decode(again)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(data))) = %v", err)
		}
		if diff := cmp.Diff(b, b2); diff != "" {
			t.Errorf("Decode(Encode(Decode(data))) differs (-want +got):\n%s", diff)
		}
	})
}

// FuzzBody reaches the body parser directly, as input with a correct
// hash would (anyone can compute one): it must never panic, and a body it
// accepts must be exactly the body Encode writes for the result, so every
// batch has one encoding.
func FuzzBody(f *testing.F) {
	for _, g := range goldenVersions {
		if body, err := os.ReadFile(g.bodyFile()); err == nil {
			b := g.batch(f)
			f.Add(body, uint32(len(b.Transactions)), uint32(b.Rows()))
		}
	}
	for _, b := range roundTripCases(f) {
		body, err := encodeBody(b, nil)
		if err != nil {
			f.Fatal(err)
		}
		if len(body) <= fuzzSeedLimit {
			f.Add(body, uint32(len(b.Transactions)), uint32(b.Rows()))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, txs, rows uint32) {
		// The bounds readHeader applies before a body is parsed.
		h := Header{Transactions: int(txs), Rows: int(rows), BodyLen: len(body)}
		if h.Transactions > h.BodyLen/minTxLen || h.Rows > h.BodyLen/minChangeLen || (h.Transactions == 0 && h.Rows > 0) {
			return
		}
		got, err := decodeBody(string(body), &h)
		if err != nil {
			return
		}
		b := &pgcourier.Batch{Source: "fuzz", Seq: 1, Transactions: got}
		again, err := encodeBody(b, nil)
		if err != nil {
			t.Fatalf("encodeBody(decodeBody(body)) = %v", err)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("encodeBody(decodeBody(body)) differs from body:\n got %q\nwant %q", again, body)
		}
		data, err := Encode(b)
		if err != nil {
			t.Fatalf("Encode(decoded body) = %v", err)
		}
		b2, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode(Encode(decoded body)) = %v", err)
		}
		if diff := cmp.Diff(b, b2); diff != "" {
			t.Errorf("Decode(Encode(decoded body)) differs (-want +got):\n%s", diff)
		}
	})
}
