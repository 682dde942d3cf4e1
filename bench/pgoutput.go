package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
)

// pgEpoch is the origin of Postgres timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// streamReader parses what pg_recvlogical writes for the pgoutput plugin at
// protocol version 1: every message as the server sent it, each followed by
// a newline. It counts the row changes between markers (inserts into the
// marker table) and, for every transaction, the lag from its commit time to
// the moment its commit message was read. wait may be called concurrently
// with run.
type streamReader struct {
	marker string           // the table whose inserts are markers
	now    func() time.Time // the clock commit messages are read by

	// Parser state, owned by run.
	rel       map[uint32]string // relation id → table name
	txnRows   int64             // row changes in the open transaction
	txnMarker []int64           // marker ids inserted in the open transaction

	mu      sync.Mutex
	changes int64          // row changes since the last marker
	txns    []txnLag       // transactions since the last marker
	seen    map[int64]mark // markers read, by id
	notify  chan struct{}  // closed and replaced when a marker is read
	ended   bool           // run returned
	endErr  error          // why run returned
}

// txnLag is the lag of one transaction and the rows it changed.
type txnLag struct {
	lag  time.Duration
	rows int64
}

// mark is what the reader knows when a marker's transaction was read.
type mark struct {
	at      time.Time // when its commit message was read
	changes int64     // row changes since the previous marker
	txns    []txnLag  // their transactions
}

func newStreamReader(markerTable string) *streamReader {
	return &streamReader{
		marker: markerTable,
		now:    time.Now,
		rel:    map[uint32]string{},
		seen:   map[int64]mark{},
		notify: make(chan struct{}),
	}
}

// errStreamEnded is returned by wait when the stream ended without the
// marker.
var errStreamEnded = errors.New("stream ended")

// wait blocks until marker id has been read and returns what came with it.
func (s *streamReader) wait(ctx context.Context, id int64) (mark, error) {
	for {
		s.mu.Lock()
		m, ok := s.seen[id]
		ended, err, ch := s.ended, s.endErr, s.notify
		s.mu.Unlock()
		switch {
		case ok:
			return m, nil
		case ended && err != nil:
			return mark{}, fmt.Errorf("%w: %w", errStreamEnded, err)
		case ended:
			return mark{}, errStreamEnded
		}
		select {
		case <-ctx.Done():
			return mark{}, ctx.Err()
		case <-ch:
		}
	}
}

// err returns why the stream ended, or nil while it runs or after a clean
// end.
func (s *streamReader) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endErr
}

// run reads the stream until it ends. It returns nil at a clean end (EOF
// between messages).
func (s *streamReader) run(r io.Reader) error {
	err := s.parse(bufio.NewReaderSize(r, 1<<20))
	s.mu.Lock()
	s.ended, s.endErr = true, err
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	return err
}

// msgReader reads the fields of pgoutput messages.
type msgReader struct {
	br  *bufio.Reader
	buf [32]byte
}

func (m *msgReader) bytes(k int) ([]byte, error) {
	b := m.buf[:k]
	if _, err := io.ReadFull(m.br, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

func (m *msgReader) u8() (byte, error) {
	c, err := m.br.ReadByte()
	if err != nil {
		return 0, unexpected(err)
	}
	return c, nil
}

func (m *msgReader) u16() (int, error) {
	b, err := m.bytes(2)
	if err != nil {
		return 0, err
	}
	return int(binary.BigEndian.Uint16(b)), nil
}

func (m *msgReader) u32() (uint32, error) {
	b, err := m.bytes(4)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

func (m *msgReader) skip(k int) error {
	_, err := m.br.Discard(k)
	return unexpected(err)
}

func (m *msgReader) cstring() (string, error) {
	b, err := m.br.ReadSlice(0)
	if err != nil {
		return "", unexpected(err)
	}
	return string(b[:len(b)-1]), nil
}

// tuple reads TupleData and returns the text of its first column when want
// is set.
func (m *msgReader) tuple(want bool) (string, error) {
	ncols, err := m.u16()
	if err != nil {
		return "", err
	}
	var first string
	for i := range ncols {
		kind, err := m.u8()
		if err != nil {
			return "", err
		}
		switch kind {
		case 'n', 'u':
		case 't', 'b':
			l, err := m.u32()
			if err != nil {
				return "", err
			}
			if i == 0 && want {
				v := make([]byte, l)
				if _, err := io.ReadFull(m.br, v); err != nil {
					return "", unexpected(err)
				}
				first = string(v)
			} else if err := m.skip(int(l)); err != nil {
				return "", err
			}
		default:
			return "", fmt.Errorf("tuple column of kind %q", kind)
		}
	}
	return first, nil
}

// unexpected turns an EOF inside a message into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parse reads messages until EOF; see the "Logical Replication Message
// Formats" chapter of the Postgres manual.
func (s *streamReader) parse(br *bufio.Reader) error {
	m := &msgReader{br: br}
	for {
		typ, err := br.ReadByte()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.message(m, typ); err != nil {
			return fmt.Errorf("pgoutput message %q: %w", typ, err)
		}
		if nl, err := br.ReadByte(); err != nil || nl != '\n' {
			return fmt.Errorf("pgoutput message %q: not followed by a newline", typ)
		}
	}
}

// message reads the body of one message of type typ.
func (s *streamReader) message(m *msgReader, typ byte) error {
	switch typ {
	case 'B': // final LSN, commit time, xid
		s.txnRows, s.txnMarker = 0, s.txnMarker[:0]
		return m.skip(20)
	case 'C': // flags, commit LSN, end LSN, commit time
		b, err := m.bytes(25)
		if err != nil {
			return err
		}
		s.commit(pgEpoch.Add(time.Duration(int64(binary.BigEndian.Uint64(b[17:25]))) * time.Microsecond))
		return nil
	case 'O': // origin LSN, name
		if err := m.skip(8); err != nil {
			return err
		}
		_, err := m.cstring()
		return err
	case 'R':
		return s.relation(m)
	case 'Y': // type id, namespace, name
		if err := m.skip(4); err != nil {
			return err
		}
		if _, err := m.cstring(); err != nil {
			return err
		}
		_, err := m.cstring()
		return err
	case 'I':
		return s.insert(m)
	case 'U':
		if _, err := m.u32(); err != nil {
			return err
		}
		k, err := m.u8()
		if err != nil {
			return err
		}
		if k == 'K' || k == 'O' {
			if _, err := m.tuple(false); err != nil {
				return err
			}
			if k, err = m.u8(); err != nil {
				return err
			}
		}
		if k != 'N' {
			return fmt.Errorf("update without a new tuple (%q)", k)
		}
		s.txnRows++
		_, err = m.tuple(false)
		return err
	case 'D':
		if _, err := m.u32(); err != nil {
			return err
		}
		k, err := m.u8()
		if err != nil {
			return err
		}
		if k != 'K' && k != 'O' {
			return fmt.Errorf("delete without an old tuple (%q)", k)
		}
		s.txnRows++
		_, err = m.tuple(false)
		return err
	case 'T': // relation count, options, relation ids
		n, err := m.u32()
		if err != nil {
			return err
		}
		return m.skip(1 + 4*int(n))
	case 'M': // flags, LSN, prefix, length, content
		if err := m.skip(9); err != nil {
			return err
		}
		if _, err := m.cstring(); err != nil {
			return err
		}
		n, err := m.u32()
		if err != nil {
			return err
		}
		return m.skip(int(n))
	}
	return errors.New("unknown message type")
}

// relation reads a Relation message: id, namespace, name, replica
// identity, and the columns (flags, name, type, type modifier).
func (s *streamReader) relation(m *msgReader) error {
	id, err := m.u32()
	if err != nil {
		return err
	}
	if _, err := m.cstring(); err != nil {
		return err
	}
	name, err := m.cstring()
	if err != nil {
		return err
	}
	if err := m.skip(1); err != nil {
		return err
	}
	ncols, err := m.u16()
	if err != nil {
		return err
	}
	for range ncols {
		if err := m.skip(1); err != nil {
			return err
		}
		if _, err := m.cstring(); err != nil {
			return err
		}
		if err := m.skip(8); err != nil {
			return err
		}
	}
	s.rel[id] = name
	return nil
}

// insert reads an Insert message; an insert into the marker table records
// the marker's id instead of counting as a change.
func (s *streamReader) insert(m *msgReader) error {
	id, err := m.u32()
	if err != nil {
		return err
	}
	name, ok := s.rel[id]
	if !ok {
		return fmt.Errorf("insert into relation %d before its Relation message", id)
	}
	if k, err := m.u8(); err != nil || k != 'N' {
		return fmt.Errorf("insert without a new tuple (%q, %v)", k, err)
	}
	isMarker := name == s.marker
	first, err := m.tuple(isMarker)
	if err != nil {
		return err
	}
	if !isMarker {
		s.txnRows++
		return nil
	}
	mid, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		return fmt.Errorf("marker id %q: %w", first, err)
	}
	s.txnMarker = append(s.txnMarker, mid)
	return nil
}

// commit closes the open transaction, read now, committed at commitTime.
func (s *streamReader) commit(commitTime time.Time) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.txnRows > 0 {
		s.changes += s.txnRows
		s.txns = append(s.txns, txnLag{lag: now.Sub(commitTime), rows: s.txnRows})
	}
	if len(s.txnMarker) == 0 {
		return
	}
	for _, id := range s.txnMarker {
		s.seen[id] = mark{at: now, changes: s.changes, txns: s.txns}
		s.changes, s.txns = 0, nil
	}
	close(s.notify)
	s.notify = make(chan struct{})
}

// rowLags expands per-transaction lags into one sample per row.
func rowLags(txns []txnLag) []time.Duration {
	var out []time.Duration
	for _, t := range txns {
		for range t.rows {
			out = append(out, t.lag)
		}
	}
	return out
}
