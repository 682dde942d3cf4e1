package rest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/wire"
)

// upload answers PUT /v1/sources/{source}/batches/{seq}: it reads and checks
// every batch of the body, then delivers them all to the sink at once.
func (h *Handler) upload(w http.ResponseWriter, r *http.Request, source, rawSeq string) {
	if !allowMethod(w, r, http.MethodPut) {
		h.fail(w, r, errMethod(r, "PUT"))
		return
	}
	if ref := h.authorize(w, r, source); ref != nil {
		h.fail(w, r, ref)
		return
	}
	seq, err := strconv.ParseUint(rawSeq, 10, 64)
	if err != nil || seq == 0 {
		h.fail(w, r, &refusal{http.StatusBadRequest, fmt.Sprintf("the path's seq %q is not a batch number: want 1, 2, 3 …", clip(rawSeq))})
		return
	}
	parcels, ref := h.readParcels(w, r, source, seq)
	if ref != nil {
		h.fail(w, r, ref)
		return
	}

	actx, cancel := applyContext(r)
	receipts, err := h.deliver(r.Context(), actx, h.lanes[source], parcels)
	cancel()
	if r.Context().Err() != nil && err == nil && len(receipts) > 0 {
		h.log.Info("batches applied after their sender stopped waiting; it will hear they are duplicates",
			"source", source, "seq", seq, "batches", len(receipts))
	}
	if err != nil {
		level := slog.LevelWarn
		if r.Context().Err() != nil {
			level = slog.LevelDebug // the sender gave up; it will send again
		}
		h.log.Log(r.Context(), level, "deliver batches", "source", source, "seq", seq, "batches", len(parcels), "err", err)
		h.unavailable(w, r)
		return
	}
	if len(receipts) == 0 {
		h.fail(w, r, &refusal{http.StatusInternalServerError, "the receiving node handled none of the batches: see its log"})
		return
	}
	status := http.StatusOK
	for _, rc := range receipts {
		if rc.Outcome.Done() {
			continue
		}
		switch rc.Outcome {
		case pgcourier.Gap:
			status = http.StatusConflict
		case pgcourier.Blocked:
			status = http.StatusLocked
			w.Header().Set("Retry-After", retryAfterSeconds(rc.RetryAfter))
		case pgcourier.Refused:
			status = http.StatusUnprocessableEntity
		default:
			h.log.Error("sink answered an unknown outcome", "source", source, "seq", rc.Seq, "outcome", rc.Outcome)
			h.fail(w, r, &refusal{http.StatusInternalServerError, "the receiving node gave an answer this version does not know: see its log"})
			return
		}
		break
	}
	last := receipts[len(receipts)-1]
	h.log.Debug("batches delivered", "source", source, "seq", seq, "batches", len(parcels),
		"receipts", len(receipts), "last_seq", last.Seq, "outcome", last.Outcome)
	body := uploadBody{Source: source, Receipts: make([]receiptBody, len(receipts))}
	for i, rc := range receipts {
		body.Receipts[i] = toReceiptBody(rc)
	}
	writeJSON(w, status, body)
}

// readParcels reads the body of an upload of source starting at seq and
// checks every batch in it, decoding each in full.
func (h *Handler) readParcels(w http.ResponseWriter, r *http.Request, source string, seq uint64) ([]pgcourier.Parcel, *refusal) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != MediaType && mt != "application/octet-stream") {
			return nil, &refusal{http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q is not supported: send %s", clip(ct), MediaType)}
		}
	}
	enc := r.Header.Get("Content-Encoding")
	if !knownEncoding(enc) {
		return nil, &refusal{http.StatusUnsupportedMediaType, fmt.Sprintf("content encoding %q is not supported: send identity, gzip or zstd", clip(enc))}
	}
	if r.ContentLength > h.maxBody {
		return nil, h.tooLarge()
	}
	raw := newRawBody(w, r, h.maxBody)
	body, release, err := decodingReader(enc, raw, h.maxBody)
	defer release()
	var frames [][]byte
	if err == nil {
		frames, err = readFrames(body, h.maxBody)
	}
	switch {
	case err == nil:
	case raw.over, errors.Is(err, errOverLimit), errors.Is(err, zstd.ErrWindowSizeExceeded), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, h.tooLarge()
	case errors.Is(err, errEncoding):
		return nil, &refusal{http.StatusUnsupportedMediaType, fmt.Sprintf("content encoding %q is not supported: send identity, gzip or zstd", clip(enc))}
	case errors.Is(err, errBadFrame):
		return nil, &refusal{http.StatusBadRequest, fmt.Sprintf("the body is not a sequence of frames: %v", err)}
	default:
		return nil, &refusal{http.StatusBadRequest, fmt.Sprintf("the body cannot be read: %v", err)}
	}
	if len(frames) == 0 {
		return nil, &refusal{http.StatusBadRequest, "the body holds no batch: send at least one frame"}
	}

	// Identities first, from the headers alone, then every body in full.
	parcels := make([]pgcourier.Parcel, len(frames))
	for i, data := range frames {
		hd, err := wire.ReadHeader(data)
		if err != nil {
			return nil, &refusal{http.StatusBadRequest, fmt.Sprintf("batch %d of the body cannot be read: %v", i, err)}
		}
		if hd.Source != source {
			return nil, &refusal{http.StatusForbidden, fmt.Sprintf("a token only speaks for its own source: batch %d of the body is from %s, and the path names %s", i, hd.Source, source)}
		}
		if hd.Seq < seq || hd.Seq-seq != uint64(i) {
			return nil, &refusal{http.StatusBadRequest, fmt.Sprintf("batch %d of the body has seq %d, want %d: a request's batches are consecutive from the path's seq", i, hd.Seq, seq+uint64(i))}
		}
		if i > 0 && hd.Epoch != parcels[0].Epoch {
			return nil, &refusal{http.StatusBadRequest, fmt.Sprintf("batch %d of the body is of epoch %d, batch 0 of epoch %d: a request's batches are of one epoch", i, hd.Epoch, parcels[0].Epoch)}
		}
		parcels[i] = pgcourier.Parcel{Source: hd.Source, Epoch: hd.Epoch, Seq: hd.Seq, Rows: hd.Rows, Data: data}
	}
	errs := decodeAll(parcels)
	for i, err := range errs {
		if err != nil {
			return nil, &refusal{http.StatusBadRequest, fmt.Sprintf("batch %d of the body (seq %d) cannot be read: %v", i, parcels[i].Seq, err)}
		}
	}
	return parcels, nil
}

// decodeAll decodes every parcel's batch into its Batch field, on as many
// goroutines as there are processors, and returns each parcel's error.
func decodeAll(parcels []pgcourier.Parcel) []error {
	errs := make([]error, len(parcels))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(parcels)) {
		wg.Go(func() {
			for i := range next {
				parcels[i].Batch, errs[i] = wire.Decode(parcels[i].Data)
			}
		})
	}
	for i := range parcels {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}

func (h *Handler) tooLarge() *refusal {
	return &refusal{http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over this node's limit of %d bytes, as sent or decompressed: send fewer batches per request", h.maxBody)}
}

// deliver hands parcels to the sink through the source's lane: it waits
// for the lane while ctx, the request's context, lasts, and the sink works
// under actx (see applyContext). A sender may
// have two uploads of a source in flight, and the later one can reach the
// sink first and hear of a gap that the earlier one is about to fill. So
// when the sink answers a gap before the first parcel, deliver waits for
// another delivery of the source to make progress, then tries again, a few
// times at most.
func (h *Handler) deliver(ctx, actx context.Context, l *lane, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, error) {
	first := parcels[0]
	for attempt := 0; ; attempt++ {
		receipts, progressed, err := h.deliverOnce(ctx, actx, l, parcels)
		if err != nil || len(receipts) == 0 || attempt == h.gapRetries || ctx.Err() != nil {
			return receipts, err
		}
		last := receipts[len(receipts)-1]
		if last.Outcome != pgcourier.Gap || last.NextSeq >= first.Seq {
			return receipts, nil
		}
		h.log.Debug("waiting for an earlier upload", "source", first.Source, "seq", first.Seq, "next_seq", last.NextSeq)
		timer := time.NewTimer(h.gapWait)
		select {
		case <-progressed:
			timer.Stop()
		case <-timer.C:
			return receipts, nil
		case <-ctx.Done():
			timer.Stop()
			return receipts, nil
		}
	}
}

// deliverOnce waits for the source's lane while the request lasts, then
// hands parcels to the sink under actx. Its channel is closed when another
// delivery of the source makes progress after this one.
func (h *Handler) deliverOnce(ctx, actx context.Context, l *lane, parcels []pgcourier.Parcel) ([]pgcourier.Receipt, <-chan struct{}, error) {
	if err := l.acquire(ctx); err != nil {
		return nil, nil, err
	}
	defer l.release()
	progressed := l.progressed()
	receipts, err := h.sink.Deliver(actx, parcels)
	if err == nil && len(receipts) > 0 && receipts[0].Outcome.Done() {
		l.signal()
	}
	return receipts, progressed, err
}

// maxApply bounds an apply that goes on after its sender stopped waiting:
// one that long is stuck (on a lock, say), and holds its source's lane.
const maxApply = time.Hour

// servingKey is the key under which a Server puts its *serving in every
// request's context.
type servingKey struct{}

// serving is what a Server's handlers share with it: the applies under way,
// which the Server ends and waits for when it closes.
type serving struct {
	closing context.Context // done when the Server closes
	mu      sync.Mutex
	closed  bool
	applies sync.WaitGroup
}

// begin counts an apply about to start; false once the Server closed.
func (s *serving) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.applies.Add(1)
	}
	return !s.closed
}

// close stops new applies from starting; the caller ends closing first.
func (s *serving) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
}

// applyContext returns the context an upload's batches are applied under.
// It does not end when the sender stops waiting — an attempt that timed out
// while a large transaction applied, a link that dropped — so the apply
// still commits and the sender's next attempt hears "duplicate" instead of
// starting it all over. It ends after maxApply, or when the Server serving
// r closes, which waits for it.
func applyContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), maxApply)
	sv, ok := r.Context().Value(servingKey{}).(*serving)
	if !ok {
		return ctx, cancel
	}
	if !sv.begin() {
		cancel()
		return ctx, cancel
	}
	unhook := context.AfterFunc(sv.closing, cancel)
	return ctx, func() { unhook(); cancel(); sv.applies.Done() }
}
