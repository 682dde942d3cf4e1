package rest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Errors that readFrames and the body readers wrap.
var (
	// errBadFrame marks a body that is not a sequence of frames.
	errBadFrame = errors.New("bad framing")
	// errOverLimit marks a body over the limit, as sent or decompressed.
	errOverLimit = errors.New("body over the limit")
)

// frameChunk is how much of a frame readFrames allocates at a time, so that
// a declared length costs memory only as its bytes arrive.
const frameChunk = 1 << 20

// appendFrame appends one frame holding data to dst: the length of data as a
// uvarint, then data.
func appendFrame(dst, data []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(data)))
	return append(dst, data...)
}

// readFrames reads the frames of a body from r until it ends and returns
// their contents. A body of more than limit bytes, or a frame declaring more
// than what remains of limit, is an error wrapping errOverLimit; a body that
// is not a sequence of non-empty frames is one wrapping errBadFrame. Other
// errors are r's.
func readFrames(r io.Reader, limit int64) ([][]byte, error) {
	br := bufio.NewReader(r)
	var frames [][]byte
	var used int64
	for i := 0; ; i++ {
		n, size, err := readUvarint(br)
		if err == io.EOF {
			return frames, nil
		}
		if err != nil {
			return nil, fmt.Errorf("frame %d: %w", i, err)
		}
		used += int64(size)
		switch {
		case n == 0:
			return nil, fmt.Errorf("frame %d is empty: %w", i, errBadFrame)
		case n > uint64(limit-used):
			return nil, fmt.Errorf("frame %d declares %d bytes, more than the %d bytes a request may hold: %w", i, n, limit, errOverLimit)
		}
		data, err := readN(br, int(n))
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("frame %d is cut short: it declares %d bytes and %d follow: %w", i, n, len(data), errBadFrame)
		}
		if err != nil {
			return nil, fmt.Errorf("frame %d: %w", i, err)
		}
		used += int64(n)
		frames = append(frames, data)
	}
}

// readUvarint reads a frame length from r and returns it with its size in
// bytes. It returns io.EOF only if r ends before the first byte.
func readUvarint(r io.ByteReader) (uint64, int, error) {
	var x uint64
	for i := range binary.MaxVarintLen64 {
		b, err := r.ReadByte()
		if err == io.EOF && i > 0 {
			return 0, 0, fmt.Errorf("the body ends inside a frame length: %w", errBadFrame)
		}
		if err != nil {
			return 0, 0, err
		}
		if i == binary.MaxVarintLen64-1 && b > 1 {
			break
		}
		x |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return x, i + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("a frame length overflows 64 bits: %w", errBadFrame)
}

// readN reads exactly n bytes from r, allocating as they arrive. On error it
// returns what it read.
func readN(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, frameChunk))
	for len(buf) < n {
		step := min(n-len(buf), frameChunk)
		buf = slices.Grow(buf, step)
		m, err := io.ReadFull(r, buf[len(buf):len(buf)+step])
		buf = buf[:len(buf)+m]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}
