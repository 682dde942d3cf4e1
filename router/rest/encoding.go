package rest

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// The Content-Encoding values of an upload's body.
const (
	encodingIdentity = "identity"
	encodingGzip     = "gzip"
	encodingZstd     = "zstd"
)

// checkEncoding returns the canonical name of a client's body encoding.
func checkEncoding(enc string) (string, error) {
	switch strings.ToLower(enc) {
	case "", encodingIdentity:
		return encodingIdentity, nil
	case encodingGzip:
		return encodingGzip, nil
	case encodingZstd:
		return encodingZstd, nil
	}
	return "", fmt.Errorf("encoding %q: want identity, gzip or zstd", enc)
}

// compressBody returns body in the given encoding. zenc is used for zstd.
func compressBody(enc string, body []byte, zenc *zstd.Encoder) ([]byte, error) {
	switch enc {
	case encodingGzip:
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write(body); err != nil {
			return nil, fmt.Errorf("gzip body: %w", err)
		}
		if err := zw.Close(); err != nil {
			return nil, fmt.Errorf("gzip body: %w", err)
		}
		return buf.Bytes(), nil
	case encodingZstd:
		return zenc.EncodeAll(body, make([]byte, 0, len(body)/2+64)), nil
	}
	return body, nil
}

// newZstdEncoder returns an encoder for request bodies. Created without a
// stream and with a concurrency of 1, it starts no goroutine.
func newZstdEncoder() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
	)
}

// rawBody reads a request's body as sent, at most limit bytes of it, and
// remembers whether the sender tried to send more.
type rawBody struct {
	r    io.Reader
	over bool
}

func newRawBody(w http.ResponseWriter, r *http.Request, limit int64) *rawBody {
	return &rawBody{r: http.MaxBytesReader(w, r.Body, limit)}
}

func (b *rawBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		b.over = true
		err = fmt.Errorf("%w: %w", errOverLimit, err)
	}
	return n, err
}

// boundedReader passes on at most left bytes of r and returns an error
// wrapping errOverLimit if r holds more.
type boundedReader struct {
	r    io.Reader
	left int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var probe [1]byte
		n, err := b.r.Read(probe[:])
		if n > 0 {
			return 0, fmt.Errorf("the body decompresses to more than the limit: %w", errOverLimit)
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// errEncoding marks a Content-Encoding the handler does not know.
var errEncoding = errors.New("unsupported content encoding")

// knownEncoding reports whether the handler can read a body sent with the
// Content-Encoding header enc.
func knownEncoding(enc string) bool {
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "", encodingIdentity, encodingGzip, encodingZstd:
		return true
	}
	return false
}

// decodingReader returns a reader of raw decoded as the Content-Encoding
// header enc says, yielding at most limit bytes, and a function that
// releases it. An unknown encoding is an error wrapping errEncoding; a
// gzip header that cannot be read is one wrapping errBadFrame or raw's
// error.
func decodingReader(enc string, raw io.Reader, limit int64) (io.Reader, func(), error) {
	nop := func() {}
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "", encodingIdentity:
		return &boundedReader{r: raw, left: limit}, nop, nil
	case encodingGzip:
		zr, err := gzip.NewReader(raw)
		if errors.Is(err, io.EOF) {
			// An empty body: let the frame reader say so.
			return strings.NewReader(""), nop, nil
		}
		if errors.Is(err, gzip.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nop, fmt.Errorf("the body is not gzip data: %w", errBadFrame)
		}
		if err != nil {
			return nil, nop, err
		}
		return &boundedReader{r: zr, left: limit}, nop, nil
	case encodingZstd:
		zr, err := zstd.NewReader(raw,
			zstd.WithDecoderConcurrency(1), // decode in the caller's goroutine
			zstd.WithDecoderMaxMemory(uint64(max(limit, 64<<10))),
			zstd.WithDecoderLowmem(true),
		)
		if err != nil {
			return nil, nop, fmt.Errorf("zstd decoder: %w", err)
		}
		return &boundedReader{r: zr, left: limit}, zr.Close, nil
	}
	return nil, nop, fmt.Errorf("content encoding %q: %w", enc, errEncoding)
}
