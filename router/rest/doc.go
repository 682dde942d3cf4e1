// Package rest is the REST link between a node and its upstream: a Handler
// that an upstream node serves, a Client that a node below it uploads
// batches with, and a Server that runs the Handler.
//
// The protocol is small (docs/rest.md describes it byte by byte):
//
//	PUT /v1/sources/{source}/batches/{seq}   upload consecutive batches of source, the first numbered seq
//	GET /v1/sources/{source}/progress        how far source's stream has got upstream
//	GET /healthz                             liveness, without authentication
//
// A request authenticates with "Authorization: Bearer <token>". The upstream
// knows, for each node allowed to send, the SHA-256 of that node's token, and
// a token only speaks for its own source. An upload's body is a sequence of
// frames, each a uvarint length followed by one batch in the wire format
// (package wire), optionally gzip- or zstd-compressed as a whole.
//
// The Handler checks every batch of a request, decoding each in full, before
// it hands any to its pgcourier.Sink, so a request that is refused changes
// nothing. The Client implements pgcourier.Sink: the router uses it like any
// other way upstream. Uploads are idempotent, because every receiver
// deduplicates by (source, epoch, seq), so the Client retries them freely.
package rest
