package rest

import (
	"time"

	"github.com/pgcourier/pgcourier"
)

// DefaultMaxBodyBytes is the largest request body a Handler accepts when
// HandlerOptions.MaxBodyBytes is 0, both as sent and once decompressed.
const DefaultMaxBodyBytes int64 = 64 << 20

// MediaType is the Content-Type of an upload's body: a sequence of frames,
// each a uvarint length followed by that many bytes of one encoded batch.
const MediaType = "application/x-pgcourier-batches"

// Paths of the protocol.
const (
	sourcesPrefix = "/v1/sources/"
	healthPath    = "/healthz"
)

// errorBody is the JSON body of every error answer.
type errorBody struct {
	Error  string `json:"error"`
	Status int    `json:"status"`
}

// uploadBody is the JSON body of an upload's answer.
type uploadBody struct {
	Source   string        `json:"source"`
	Receipts []receiptBody `json:"receipts"`
}

// receiptBody is one receipt of an upload's answer.
type receiptBody struct {
	Epoch        int64             `json:"epoch"`
	Seq          uint64            `json:"seq"`
	Outcome      pgcourier.Outcome `json:"outcome"`
	AppliedSeq   uint64            `json:"applied_seq"`
	NextSeq      uint64            `json:"next_seq"`
	Error        string            `json:"error"`
	RetryAfterMS int64             `json:"retry_after_ms"`
}

// progressBody is the JSON body of a progress answer.
type progressBody struct {
	Source     string `json:"source"`
	Epoch      int64  `json:"epoch"`
	AppliedSeq uint64 `json:"applied_seq"`
	StoredSeq  uint64 `json:"stored_seq"`
	Blocked    string `json:"blocked"`
}

// healthBody is the JSON body of a health answer.
type healthBody struct {
	Status string `json:"status"`
	Node   string `json:"node"`
}

func toReceiptBody(r pgcourier.Receipt) receiptBody {
	return receiptBody{
		Epoch:        r.Epoch,
		Seq:          r.Seq,
		Outcome:      r.Outcome,
		AppliedSeq:   r.AppliedSeq,
		NextSeq:      r.NextSeq,
		Error:        r.Error,
		RetryAfterMS: r.RetryAfter.Milliseconds(),
	}
}

func (b receiptBody) receipt(source string) pgcourier.Receipt {
	return pgcourier.Receipt{
		Source:     source,
		Epoch:      b.Epoch,
		Seq:        b.Seq,
		Outcome:    b.Outcome,
		AppliedSeq: b.AppliedSeq,
		NextSeq:    b.NextSeq,
		Error:      b.Error,
		RetryAfter: time.Duration(max(b.RetryAfterMS, 0)) * time.Millisecond,
	}
}
