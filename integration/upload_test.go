package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
)

// batchMediaType is the Content-Type of an upload (docs/rest.md).
const batchMediaType = "application/x-pgcourier-batches"

// TestBadUploadsChangeNothing sends the server's listener requests it must
// refuse: without a token, with a wrong one, with one laptop's token for
// another laptop's (or the server's own) source, and with damaged bodies.
// Each is refused with the right status and changes nothing on the server.
// The undamaged batch, sent properly, is then applied, and the laptops
// deliver the rest.
func TestBadUploadsChangeNothing(t *testing.T) {
	tp := newTopology(t, 2)
	a, b := tp.clients[0], tp.clients[1]
	for _, c := range tp.clients {
		c.start()
	}
	ws := tp.startWriters()
	for _, c := range tp.clients {
		tp.waitFor(c.id+" captures", 20*time.Second, func() (bool, string) {
			cp := c.captured()
			return cp.lastSeq >= 2, "outbox up to seq " + itoa(cp.lastSeq)
		})
	}
	stopWriters(t, ws)
	for _, c := range tp.clients {
		c.stop()
	}
	tp.startServer()

	// Batch 1 of laptop a, as its router would send it.
	var epoch int64
	var payload []byte
	a.query(func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT epoch, payload FROM pgcourier.outbox WHERE seq = 1`).Scan(&epoch, &payload)
	})
	frame := func(data []byte) []byte { return append(binary.AppendUvarint(nil, uint64(len(data))), data...) }
	flip := func(at int) []byte {
		d := bytes.Clone(payload)
		d[at] ^= 0x5a
		return frame(d)
	}
	good := frame(payload)
	batchA := "/v1/sources/" + a.id + "/batches/1"

	before := tp.snapshot()
	for _, tc := range []struct {
		name, method, path, token string
		body                      []byte
		want                      int
	}{
		{"no token", http.MethodPut, batchA, "", good, http.StatusUnauthorized},
		{"a token the server does not know", http.MethodPut, batchA, newToken(t), good, http.StatusUnauthorized},
		{"a's token, b's source in the path", http.MethodPut, "/v1/sources/" + b.id + "/batches/1", a.token, good, http.StatusForbidden},
		{"b's token and path, a's batch in the body", http.MethodPut, "/v1/sources/" + b.id + "/batches/1", b.token, good, http.StatusForbidden},
		{"a's token, the server's own id in the path", http.MethodPut, "/v1/sources/" + serverID + "/batches/1", a.token, good, http.StatusForbidden},
		{"a byte of the compressed body flipped", http.MethodPut, batchA, a.token, flip(len(payload) - 8), http.StatusBadRequest},
		{"a byte of the header flipped", http.MethodPut, batchA, a.token, flip(12), http.StatusBadRequest},
		{"the frame cut short", http.MethodPut, batchA, a.token, good[:len(good)/2], http.StatusBadRequest},
		{"not frames at all", http.MethodPut, batchA, a.token, []byte("{\"batches\": []}\n"), http.StatusBadRequest},
		{"progress without a token", http.MethodGet, "/v1/sources/" + a.id + "/progress", "", nil, http.StatusUnauthorized},
		{"progress with b's token", http.MethodGet, "/v1/sources/" + a.id + "/progress", b.token, nil, http.StatusForbidden},
	} {
		status, body := tp.request(tc.method, tc.path, tc.token, tc.body)
		if status != tc.want {
			t.Errorf("%s: %s %s: status %d, want %d; body %s", tc.name, tc.method, tc.path, status, tc.want, body)
		} else {
			t.Logf("%s: %d %s", tc.name, status, bytes.TrimSpace(body))
		}
		if diff := cmp.Diff(before, tp.snapshot()); diff != "" {
			t.Errorf("%s: the server changed (-before +after):\n%s", tc.name, clip(diff, 4000))
		}
	}

	// The same batch, undamaged and properly sent, is applied.
	status, body := tp.request(http.MethodPut, batchA, a.token, good)
	var answer struct {
		Receipts []struct {
			Epoch   int64  `json:"epoch"`
			Seq     uint64 `json:"seq"`
			Outcome string `json:"outcome"`
		} `json:"receipts"`
	}
	if err := json.Unmarshal(body, &answer); status != http.StatusOK || err != nil || len(answer.Receipts) != 1 ||
		answer.Receipts[0].Outcome != "applied" || answer.Receipts[0].Seq != 1 || answer.Receipts[0].Epoch != epoch {
		t.Fatalf("PUT %s with a's token and its batch 1: status %d, body %s; want 200 and one receipt: epoch %d seq 1 applied", batchA, status, body, epoch)
	}
	if seq := tp.appliedSeq(a.id); seq != 1 {
		t.Errorf("server applied_seq of %s after its batch 1 = %d, want 1", a.id, seq)
	}

	for _, c := range tp.clients {
		c.start()
	}
	tp.converge()
}

// request sends one request to the server's listener and returns the
// status and body of the answer.
func (tp *topology) request(method, path, token string, body []byte) (int, []byte) {
	tp.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+tp.server.addr+path, r)
	if err != nil {
		tp.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", batchMediaType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tp.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tp.t.Fatalf("%s %s: read the answer: %v", method, path, err)
	}
	return resp.StatusCode, data
}
