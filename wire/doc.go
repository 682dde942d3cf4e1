// Package wire encodes and decodes batches in pgcourier's batch format: the
// bytes that capture writes into the outbox, that the REST and file
// transports carry, that relays forward untouched, and that the applier
// decodes.
//
// An encoded batch is a small uncompressed header followed by one zstd frame
// holding the body. The header carries the magic "PGCB", the format version,
// the batch's identity (source, epoch, seq), cheap counts, whether the last
// transaction goes on in the next batch, the commit range, the uncompressed
// body length, a SHA-256 over the header and the uncompressed body, a CRC-32C
// of the compressed frame, and a CRC-32C over the header itself, so
// ReadHeader can route and deduplicate a batch without decompressing it and
// still notice a damaged header. The body lists the transactions in commit
// order; relations form a dictionary inside the batch, written in full at
// first use and referred to by index afterwards; column values keep NULL,
// unchanged TOAST and text apart and carry text as exact bytes.
//
// Encode is deterministic: the same batch encodes to the same bytes with the
// same build, so two copies of a (source, epoch, seq) are byte-identical.
// Decode treats its input as hostile: it checks limits before allocating,
// verifies the hash, and never panics; every error it returns wraps
// ErrCorrupt or ErrVersion. A build reads every version it knows, and version
// 1 stays readable for good. Encode writes the oldest version that can
// express the batch: version 1, or version 2 for a batch that holds a part of
// a transaction too large for one batch (pgcourier.Batch.Continued).
//
// The byte layout, the limits and the reasons behind them are in
// docs/batch-format.md.
package wire
