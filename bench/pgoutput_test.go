package main

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pgoutputStream builds a stream as pg_recvlogical writes it for pgoutput:
// each message followed by a newline.
type pgoutputStream struct{ b []byte }

func (s *pgoutputStream) msg(parts ...any) *pgoutputStream {
	for _, p := range parts {
		switch v := p.(type) {
		case byte:
			s.b = append(s.b, v)
		case uint16:
			s.b = binary.BigEndian.AppendUint16(s.b, v)
		case uint32:
			s.b = binary.BigEndian.AppendUint32(s.b, v)
		case uint64:
			s.b = binary.BigEndian.AppendUint64(s.b, v)
		case string: // a C string
			s.b = append(append(s.b, v...), 0)
		case []byte:
			s.b = append(s.b, v...)
		default:
			panic("unknown part")
		}
	}
	s.b = append(s.b, '\n')
	return s
}

// text is a tuple column in text format.
func text(v string) []byte {
	b := []byte{'t'}
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func (s *pgoutputStream) relation(id uint32, name string, cols ...string) *pgoutputStream {
	parts := []any{byte('R'), id, "public", name, byte('d'), uint16(len(cols))}
	for _, c := range cols {
		parts = append(parts, byte(1), c, uint32(20), uint32(0xffffffff))
	}
	return s.msg(parts...)
}

func (s *pgoutputStream) begin() *pgoutputStream {
	return s.msg(byte('B'), uint64(0x16B3748), uint64(0), uint32(750))
}

func (s *pgoutputStream) commit(at time.Time) *pgoutputStream {
	us := uint64(at.Sub(pgEpoch) / time.Microsecond)
	return s.msg(byte('C'), byte(0), uint64(0x16B3748), uint64(0x16B3778), us)
}

func TestStreamReader(t *testing.T) {
	now := time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)
	var s pgoutputStream
	s.relation(16400, "subject", "id", "name").
		relation(16500, "bench_marker", "id", "created_at")
	// One insert, committed 2ms before it is read.
	s.begin().
		msg(byte('I'), uint32(16400), byte('N'), uint16(2), text("1"), text("Ann")).
		commit(now.Add(-2 * time.Millisecond))
	// An update with an old key, an update without, a delete, a NULL and an
	// unchanged TOAST column, an origin and a type message, committed 5ms
	// before.
	s.begin().
		msg(byte('O'), uint64(1), "pgcourier:laptop-07").
		msg(byte('Y'), uint32(90000), "public", "mood").
		msg(byte('U'), uint32(16400), byte('K'), uint16(2), text("1"), []byte{'n'}, byte('N'), uint16(2), text("2"), []byte{'u'}).
		msg(byte('U'), uint32(16400), byte('N'), uint16(2), text("2"), text("Bo")).
		msg(byte('D'), uint32(16400), byte('K'), uint16(2), text("2"), []byte{'n'}).
		commit(now.Add(-5 * time.Millisecond))
	// The marker, in a transaction of its own.
	s.begin().
		msg(byte('I'), uint32(16500), byte('N'), uint16(2), text("7"), text("2025-11-25 12:00:00+00")).
		commit(now.Add(-time.Millisecond))
	// A truncate and a logical message after the marker.
	s.begin().
		msg(byte('T'), uint32(1), byte(0), uint32(16400)).
		msg(byte('M'), byte(1), uint64(5), "prefix", uint32(3), []byte("abc")).
		commit(now)

	r := newStreamReader("bench_marker")
	r.now = func() time.Time { return now }
	if err := r.run(strings.NewReader(string(s.b))); err != nil {
		t.Fatalf("run: %v", err)
	}
	m, err := r.wait(context.Background(), 7)
	if err != nil {
		t.Fatalf("wait(7): %v", err)
	}
	want := mark{at: now, changes: 4, txns: []txnLag{{2 * time.Millisecond, 1}, {5 * time.Millisecond, 3}}}
	if diff := cmp.Diff(want, m, cmp.AllowUnexported(mark{}, txnLag{})); diff != "" {
		t.Errorf("wait(7) (-want +got):\n%s", diff)
	}
	wantLags := []time.Duration{2 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond}
	if diff := cmp.Diff(wantLags, rowLags(m.txns)); diff != "" {
		t.Errorf("rowLags (-want +got):\n%s", diff)
	}
	// The stream ended cleanly: a marker that never came is reported.
	if _, err := r.wait(context.Background(), 8); !errors.Is(err, errStreamEnded) {
		t.Errorf("wait(8) after the end = %v, want errStreamEnded", err)
	}
}

func TestStreamReaderErrors(t *testing.T) {
	var ok pgoutputStream
	ok.relation(16400, "subject", "id").begin()
	good := string(ok.b)
	for _, tc := range []struct {
		name   string
		stream string
	}{
		{"cut inside a message", good + "I\x00\x00\x40"},
		{"no newline after a message", good[:len(good)-1] + "X"},
		{"unknown message", good + "Z\n"},
		{"insert into an unknown relation", good + "I\x00\x00\x00\x01N\x00\x00\n"},
		{"bad tuple column kind", good + "I\x00\x00\x40\x10N\x00\x01x\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newStreamReader("bench_marker")
			err := r.run(strings.NewReader(tc.stream))
			if err == nil {
				t.Fatal("run succeeded, want an error")
			}
			if r.err() == nil {
				t.Error("err() = nil after a failed run")
			}
			if _, werr := r.wait(context.Background(), 1); !errors.Is(werr, errStreamEnded) {
				t.Errorf("wait after a failed run = %v, want errStreamEnded", werr)
			}
		})
	}
	if err := newStreamReader("m").run(strings.NewReader(good + "B")); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("run on a stream cut inside a Begin = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestStreamReaderWaitCancelled(t *testing.T) {
	r := newStreamReader("bench_marker")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("wait with a cancelled context = %v, want context.Canceled", err)
	}
}
