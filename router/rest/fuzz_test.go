package rest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fuzzEncodings are the Content-Encoding values FuzzHandler picks from.
var fuzzEncodings = []string{"", "identity", "gzip", "zstd", "br"}

// FuzzHandler feeds arbitrary uploads, with a valid token, to a Handler: it
// must never panic, must answer one of the protocol's statuses with a JSON
// body, and must leave the sink as it was when it refuses the request.
func FuzzHandler(f *testing.F) {
	var body []byte
	for seq := uint64(1); seq <= 3; seq++ {
		body = appendFrame(body, encodeBatch(f, laptop, 1, seq))
	}
	f.Add("1", uint8(0), body)
	f.Add("2", uint8(1), body)
	f.Add("1", uint8(2), gzipped(f, body))
	f.Add("1", uint8(3), zstded(f, body))
	f.Add("1", uint8(4), body)
	f.Add("1", uint8(5), body[:len(body)-1])
	f.Add("x", uint8(0), []byte{})
	f.Add("18446744073709551615", uint8(0), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})

	allowed := map[int]bool{
		http.StatusOK:                    true,
		http.StatusBadRequest:            true,
		http.StatusForbidden:             true,
		http.StatusConflict:              true,
		http.StatusRequestEntityTooLarge: true,
		http.StatusUnsupportedMediaType:  true,
	}
	f.Fuzz(func(t *testing.T, seq string, choice uint8, body []byte) {
		sink := newFakeSink()
		before := sink.state()
		h := newTestHandler(t, sink, 256<<10)
		h.gapWait = time.Millisecond

		const prefix = "/v1/sources/" + laptop + "/batches/"
		req := httptest.NewRequest(http.MethodPut, "/", bytes.NewReader(body))
		req.URL.Path, req.URL.RawPath = prefix+seq, prefix+url.PathEscape(seq)
		req.Header.Set("Authorization", "Bearer "+token)
		if enc := fuzzEncodings[int(choice)%len(fuzzEncodings)]; enc != "" {
			req.Header.Set("Content-Encoding", enc)
		}
		if choice/8%2 == 0 {
			req.Header.Set("Content-Type", MediaType)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		if !allowed[rec.Code] {
			t.Fatalf("status %d is not one the protocol answers an upload with (body %s)", rec.Code, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer body is not JSON: %q", rec.Body)
		}
		after := sink.state()
		if rec.Code >= 400 && rec.Code < 500 {
			if diff := cmp.Diff(before.Applied, after.Applied); diff != "" {
				t.Fatalf("status %d, and the sink changed (-before +after):\n%s", rec.Code, diff)
			}
			if rec.Code != http.StatusConflict && after.Calls != 0 {
				t.Fatalf("status %d, and the sink was called %d times", rec.Code, after.Calls)
			}
		}
		if after.Undecoded != 0 {
			t.Fatalf("%d parcels reached the sink without their decoded batch", after.Undecoded)
		}
	})
}
