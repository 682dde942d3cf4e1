package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/pgcourier/pgcourier"
)

// Version is the newest format version this build reads and writes. Encode
// writes the oldest version that can express a batch, so a build that reads
// only older versions keeps reading every batch that does not need a newer
// one; Decode reads every version from 1 to Version.
const Version = 2

// The format versions this build knows.
const (
	// version1 is the first format.
	version1 = 1
	// version2 is version 1 with a flags byte after the row count, for a
	// batch whose last transaction goes on in the next batch. Its flags are
	// always flagContinued: a batch that is not continued is version 1, so
	// every batch has one encoding.
	version2 = 2
)

// Header flags, in version 2 and later.
const (
	flagContinued = 1 << 0 // the last transaction goes on in the next batch
)

// Limits that Encode enforces and Decode checks before it allocates.
const (
	// MaxBodyBytes is the largest uncompressed body a batch may have. Decode
	// refuses a batch that declares or decompresses to more, which bounds
	// the memory a small, hostile input can make it use.
	MaxBodyBytes = 1 << 30
	// MaxRows is the most row changes, and the most transactions, a batch
	// may hold. A capture that meets it splits the work into more batches.
	MaxRows = 1 << 22
	// MaxValues is the most column values a batch may hold, counting every
	// value of every row image and every column of every relation entry.
	// With MaxRows it bounds the memory a decoded batch takes beyond its
	// body.
	MaxValues = 1 << 25
)

// maxColumns is Postgres's limit on the columns of a table
// (MaxHeapAttributeNumber).
const maxColumns = 1600

var (
	// ErrCorrupt is wrapped by every Decode and ReadHeader error about the
	// bytes themselves: not a batch, truncated, malformed, a checksum or hash
	// mismatch, or over a limit.
	ErrCorrupt = errors.New("batch is corrupt")
	// ErrVersion is wrapped by a Decode or ReadHeader error for a batch in a
	// format version this build cannot read; the message names the version.
	ErrVersion = errors.New("unsupported batch format version")
	// ErrTooLarge is wrapped by an Encode error for a batch over MaxBodyBytes,
	// MaxRows or MaxValues; the caller should split it.
	ErrTooLarge = errors.New("batch too large")
)

// magic starts every encoded batch.
const magic = "PGCB"

// maxHeaderLen bounds a header of any version this build reads: magic,
// version, source length and source, nine varints (epoch, seq, two counts,
// the commit range, body length), the flags byte of version 2, hash and two
// CRCs.
const maxHeaderLen = len(magic) + 1 + 1 + pgcourier.MaxNodeIDLen + 9*binary.MaxVarintLen64 + 1 + sha256.Size + 8

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The zstd encoder and decoder are shared by every call: EncodeAll and
// DecodeAll are safe for concurrent use on one instance. Neither starts a
// goroutine when created without a stream.
var (
	zstdEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderCRC(false), // the header checksums the frame and hashes the body
			zstd.WithZeroFrames(true),  // an empty body is a frame too
		)
	})
	zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(MaxBodyBytes),
			zstd.WithDecodeAllCapLimit(true), // never more than the declared body length
		)
	})
)

// Header is what the uncompressed start of an encoded batch tells without
// decompressing the body: enough to route, deduplicate and count it.
type Header struct {
	Version      int    // the format version the batch is written in
	Source       string // the node the changes were captured from
	Epoch        int64  // the incarnation of the source's database
	Seq          uint64 // the batch's number within the source and epoch, from 1
	Transactions int    // the number of transactions in the batch
	Rows         int    // the number of row changes in all of them

	// Continued says that the last transaction goes on in the batch with the
	// next Seq (pgcourier.Batch.Continued). Only a version 2 header sets it,
	// and always with at least one transaction.
	Continued bool

	// The commit LSN and commit time of the first and last transaction;
	// zero when the batch holds no transaction. Commit times are in UTC.
	FirstLSN, LastLSN       pgcourier.LSN
	FirstCommit, LastCommit time.Time

	// BodyLen is the length of the uncompressed body in bytes.
	BodyLen int
	// Hash is the SHA-256 of the header bytes before it and the uncompressed
	// body: the identity of the batch's content. Two batches with the same
	// (Source, Epoch, Seq) and different hashes carry different changes.
	Hash [sha256.Size]byte
}

// ReadHeader returns the header at the start of data without decompressing
// or checking the body, which need not be present. It verifies the header's
// own checksum, so a damaged header is an error rather than a wrong identity.
// Every error wraps ErrCorrupt or ErrVersion; success says nothing about the
// body, which only Decode checks.
func ReadHeader(data []byte) (Header, error) {
	h, _, err := readHeader(data)
	return h, err
}

// Encode returns the bytes of b in the oldest format version that can
// express it: version 1, or version 2 when b is Continued. It is
// deterministic: the same batch gives the same bytes with the same build.
// Commit times are kept to the microsecond, as Postgres keeps them. Encode
// returns an error instead of writing an invalid batch: a source that is not
// a valid node id, a Seq of 0, a Continued batch without a transaction, a
// change without a relation or with an unknown operation, row images that do
// not fit the operation or the relation's columns, values of unknown kinds;
// and an error wrapping ErrTooLarge for a batch over the limits.
func Encode(b *pgcourier.Batch) ([]byte, error) {
	if b == nil {
		return nil, errors.New("nil batch")
	}
	if err := pgcourier.CheckNodeID(b.Source); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if b.Seq == 0 {
		return nil, errors.New("seq is 0; a source's batches are numbered from 1")
	}
	if b.Continued && len(b.Transactions) == 0 {
		return nil, errors.New("continued batch without a transaction; Continued says the last transaction goes on in the next batch")
	}
	if n := len(b.Transactions); n > MaxRows {
		return nil, fmt.Errorf("%d transactions, over MaxRows (%d): %w", n, MaxRows, ErrTooLarge)
	}
	if n := b.Rows(); n > MaxRows {
		return nil, fmt.Errorf("%d row changes, over MaxRows (%d): %w", n, MaxRows, ErrTooLarge)
	}
	body, err := encodeBody(b, getBuf(0))
	if err != nil {
		return nil, err
	}
	defer putBuf(body)
	h := Header{
		Version:      version1,
		Source:       b.Source,
		Epoch:        b.Epoch,
		Seq:          b.Seq,
		Transactions: len(b.Transactions),
		Rows:         b.Rows(),
		Continued:    b.Continued,
		BodyLen:      len(body),
	}
	if b.Continued {
		h.Version = version2
	}
	if n := len(b.Transactions); n > 0 {
		first, last := &b.Transactions[0], &b.Transactions[n-1]
		h.FirstLSN, h.LastLSN = first.CommitLSN, last.CommitLSN
		h.FirstCommit, h.LastCommit = first.CommitTime, last.CommitTime
	}
	return seal(&h, body)
}

// seal returns h, with its hash filled in, followed by the compressed body.
// The caller has checked h against body.
func seal(h *Header, body []byte) ([]byte, error) {
	enc, err := zstdEncoder()
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	var buf [maxHeaderLen]byte
	head := appendHeaderFields(buf[:0], h)
	sum := sha256.New()
	sum.Write(head)
	sum.Write(body)
	sum.Sum(h.Hash[:0])
	head = append(head, h.Hash[:]...)

	frame := enc.EncodeAll(body, getBuf(0))
	out := make([]byte, len(head)+8+len(frame))
	n := copy(out, head) + 8
	copy(out[n:], frame)
	putBuf(frame)
	binary.BigEndian.PutUint32(out[n-8:], crc32.Checksum(out[n:], castagnoli))
	binary.BigEndian.PutUint32(out[n-4:], crc32.Checksum(out[:n-4], castagnoli))
	return out, nil
}

// appendHeaderFields appends the header fields that precede the hash, in
// h.Version. A version 2 header's flags come from h.Continued.
func appendHeaderFields(dst []byte, h *Header) []byte {
	dst = append(dst, magic...)
	dst = append(dst, byte(h.Version))
	dst = binary.AppendUvarint(dst, uint64(len(h.Source)))
	dst = append(dst, h.Source...)
	dst = binary.AppendVarint(dst, h.Epoch)
	dst = binary.AppendUvarint(dst, h.Seq)
	dst = binary.AppendUvarint(dst, uint64(h.Transactions))
	dst = binary.AppendUvarint(dst, uint64(h.Rows))
	if h.Version >= version2 {
		var flags byte
		if h.Continued {
			flags |= flagContinued
		}
		dst = append(dst, flags)
	}
	if h.Transactions > 0 {
		dst = binary.AppendUvarint(dst, uint64(h.FirstLSN))
		dst = binary.AppendUvarint(dst, uint64(h.LastLSN))
		dst = binary.AppendVarint(dst, h.FirstCommit.UnixMicro())
		dst = binary.AppendVarint(dst, h.LastCommit.UnixMicro())
	}
	return binary.AppendUvarint(dst, uint64(h.BodyLen))
}

// readHeader parses and checks the header at the start of data and returns
// it with its length in bytes.
func readHeader(data []byte) (Header, int, error) {
	var h Header
	if len(data) < len(magic)+1 {
		if len(data) == 0 {
			return h, 0, corruptf("empty input")
		}
		return h, 0, corruptf("truncated header (%d bytes)", len(data))
	}
	if string(data[:len(magic)]) != magic {
		return h, 0, corruptf("not a pgcourier batch (starts with %q, want %q)", data[:len(magic)], magic)
	}
	h.Version = int(data[len(magic)])
	if h.Version < version1 || h.Version > Version {
		return h, 0, fmt.Errorf("batch format version %d; this build reads versions %d to %d (upgrade pgcourier on this node): %w",
			h.Version, version1, Version, ErrVersion)
	}

	r := reader{s: string(data[:min(len(data), maxHeaderLen)]), off: len(magic) + 1, what: "header"}
	n := r.uvarint()
	if r.err == nil && n > pgcourier.MaxNodeIDLen {
		r.fail("source id of %d bytes, longer than %d", n, pgcourier.MaxNodeIDLen)
	}
	h.Source = r.bytes(n)
	h.Epoch = r.varint()
	h.Seq = r.uvarint()
	txs, rows := r.uvarint(), r.uvarint()
	if r.err == nil && (txs > MaxRows || rows > MaxRows) {
		r.fail("%d transactions and %d rows, over MaxRows (%d)", txs, rows, MaxRows)
	}
	h.Transactions, h.Rows = int(txs), int(rows)
	var flags byte
	if h.Version >= version2 {
		flags = r.byte()
	}
	if h.Transactions > 0 {
		h.FirstLSN = pgcourier.LSN(r.uvarint())
		h.LastLSN = pgcourier.LSN(r.uvarint())
		h.FirstCommit = time.UnixMicro(r.varint()).UTC()
		h.LastCommit = time.UnixMicro(r.varint()).UTC()
	}
	bodyLen := r.uvarint()
	if r.err == nil && bodyLen > MaxBodyBytes {
		r.fail("body of %d bytes, over MaxBodyBytes (%d)", bodyLen, MaxBodyBytes)
	}
	h.BodyLen = int(bodyLen)
	copy(h.Hash[:], r.bytes(sha256.Size))
	r.bytes(4) // the frame checksum, which Decode checks
	end := r.off
	crc := r.bytes(4)
	if r.err != nil {
		return h, 0, r.err
	}
	if got, want := crc32.Checksum(data[:end], castagnoli), binary.BigEndian.Uint32([]byte(crc)); got != want {
		return h, 0, corruptf("header checksum is %08x, want %08x", got, want)
	}

	// The checksum matched; the values must still make sense.
	if err := pgcourier.CheckNodeID(h.Source); err != nil {
		return h, 0, corruptf("source: %v", err)
	}
	if h.Seq == 0 {
		return h, 0, corruptf("seq is 0")
	}
	if h.Transactions == 0 && h.Rows > 0 {
		return h, 0, corruptf("%d rows in no transaction", h.Rows)
	}
	if h.Version == version2 {
		// Version 2 exists for continued batches only, so that every
		// batch has one encoding.
		switch {
		case flags&^flagContinued != 0:
			return h, 0, corruptf("header flags 0x%02x: bits 0x%02x are not defined", flags, flags&^flagContinued)
		case flags&flagContinued == 0:
			return h, 0, corruptf("version 2 header without the continued flag; a batch that is not continued is written in version 1")
		}
		h.Continued = true
		if h.Transactions == 0 {
			return h, 0, corruptf("continued batch without a transaction")
		}
	}
	if h.Transactions > h.BodyLen/minTxLen || h.Rows > h.BodyLen/minChangeLen {
		return h, 0, corruptf("%d transactions and %d rows cannot fit in a body of %d bytes", h.Transactions, h.Rows, h.BodyLen)
	}
	return h, r.off, nil
}

// Decode returns the batch that data encodes. It reads every format version
// this build knows and checks everything: the header checksum, the limits
// (before allocating), the zstd frame, the body hash, and the same rules
// Encode enforces; a batch it returns encodes again without error. It never
// panics, and every error wraps ErrCorrupt or ErrVersion.
//
// Commit times are returned in UTC. Changes that refer to the same relation
// entry share one *Relation. A present row image with no columns is an empty,
// non-nil slice; a batch or transaction without entries has nil
// Transactions or Changes.
func Decode(data []byte) (*pgcourier.Batch, error) {
	h, n, err := readHeader(data)
	if err != nil {
		return nil, err
	}
	frame := data[n:]
	if got, want := crc32.Checksum(frame, castagnoli), binary.BigEndian.Uint32(data[n-8:]); got != want {
		return nil, corruptf("compressed body checksum is %08x, want %08x", got, want)
	}
	bound, err := frameBound(frame)
	if err != nil {
		return nil, err
	}
	if h.BodyLen > bound {
		return nil, corruptf("header declares a body of %d bytes; the compressed frame holds at most %d", h.BodyLen, bound)
	}
	dec, err := zstdDecoder()
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %v: %w", err, ErrCorrupt)
	}
	// The decoder stops at the capacity of dst: never more than declared.
	buf := getBuf(h.BodyLen)
	defer putBuf(buf)
	body, err := dec.DecodeAll(frame, buf[:0:h.BodyLen])
	if err != nil {
		return nil, corruptf("decompress body: %v", err)
	}
	if len(body) != h.BodyLen {
		return nil, corruptf("body is %d bytes, header says %d", len(body), h.BodyLen)
	}
	sum := sha256.New()
	sum.Write(data[:n-sha256.Size-8])
	sum.Write(body)
	var got [sha256.Size]byte
	sum.Sum(got[:0])
	if got != h.Hash {
		return nil, corruptf("body hash mismatch")
	}
	// The decoded strings share one copy of the body; buf goes back to
	// the pool.
	txs, err := decodeBody(string(body), &h)
	if err != nil {
		return nil, err
	}
	if n := len(txs); n > 0 {
		first, last := &txs[0], &txs[n-1]
		if first.CommitLSN != h.FirstLSN || last.CommitLSN != h.LastLSN ||
			!first.CommitTime.Equal(h.FirstCommit) || !last.CommitTime.Equal(h.LastCommit) {
			return nil, corruptf("the header's commit range does not match the transactions")
		}
	}
	return &pgcourier.Batch{Source: h.Source, Epoch: h.Epoch, Seq: h.Seq, Transactions: txs, Continued: h.Continued}, nil
}

// maxPooled is the largest buffer kept for reuse between calls.
const maxPooled = 4 << 20

// bufPool holds scratch buffers for bodies and frames.
var bufPool sync.Pool // of *[]byte

// getBuf returns an empty buffer with room for at least n bytes.
func getBuf(n int) []byte {
	if p, ok := bufPool.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]byte, 0, n)
}

// putBuf keeps b for reuse unless it is too large to hold on to. The caller
// must not use b afterwards.
func putBuf(b []byte) {
	if cap(b) == 0 || cap(b) > maxPooled {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}

// zstd block layout (RFC 8878, section 3.1.1.2).
const (
	zstdBlockMax   = 128 << 10
	zstdRaw        = 0
	zstdRLE        = 1
	zstdCompressed = 2
)

// frameBound checks that frame is exactly one zstd data frame, without a
// dictionary and with nothing after it, and returns the most bytes it can
// decompress to. It reads block headers only.
func frameBound(frame []byte) (int, error) {
	var zh zstd.Header
	rest, err := zh.DecodeAndStrip(frame)
	switch {
	case err != nil:
		return 0, corruptf("compressed body: %v", err)
	case zh.Skippable:
		return 0, corruptf("compressed body is a skippable frame")
	case zh.DictionaryID != 0:
		return 0, corruptf("compressed body needs zstd dictionary %d", zh.DictionaryID)
	}
	bound := 0
	for last := false; !last; {
		if len(rest) < 3 {
			return 0, corruptf("compressed body is truncated")
		}
		bh := uint32(rest[0]) | uint32(rest[1])<<8 | uint32(rest[2])<<16
		rest = rest[3:]
		last = bh&1 != 0
		size := int(bh >> 3)
		if size > zstdBlockMax {
			return 0, corruptf("compressed body has a block of %d bytes", size)
		}
		switch (bh >> 1) & 3 {
		case zstdRaw:
			bound += size
		case zstdRLE:
			bound += size
			size = 1
		case zstdCompressed:
			bound += zstdBlockMax
		default:
			return 0, corruptf("compressed body has a reserved block type")
		}
		if len(rest) < size {
			return 0, corruptf("compressed body is truncated")
		}
		rest = rest[size:]
		bound = min(bound, MaxBodyBytes+1) // no overflow on 32-bit platforms
	}
	if zh.HasCheckSum {
		if len(rest) < 4 {
			return 0, corruptf("compressed body is truncated")
		}
		rest = rest[4:]
	}
	if len(rest) > 0 {
		return 0, corruptf("%d bytes after the compressed body", len(rest))
	}
	return bound, nil
}

// corruptf returns an error wrapping ErrCorrupt.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrCorrupt)
}
