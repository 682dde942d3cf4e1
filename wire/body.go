package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/pgcourier/pgcourier"
)

// The least bytes each part of a body takes. Decode bounds every count by
// the bytes left divided by these before it allocates.
const (
	minTxLen     = 3 // commit LSN, commit time, change count
	minChangeLen = 3 // op, relation index, image flags
	minColumnLen = 4 // name (length and one byte), type length, key flag
)

// Image flags: which row images a change carries.
const (
	imageNew = 1 << 0
	imageOld = 1 << 1
)

// arenaLen is how many values Decode allocates at a time when the body has
// room for that many.
const arenaLen = 1024

// bodyEncoder appends a batch's body to buf.
type bodyEncoder struct {
	buf    []byte
	def    []byte                         // a relation entry being built
	byPtr  map[*pgcourier.Relation]uint64 // relations already written
	byDef  map[string]uint64              // entry bytes → index, to share equal relations
	values int                            // column values and relation columns so far
}

// encodeBody appends the body of b to dst, checking every change.
func encodeBody(b *pgcourier.Batch, dst []byte) ([]byte, error) {
	e := bodyEncoder{
		buf:   dst,
		byPtr: make(map[*pgcourier.Relation]uint64),
		byDef: make(map[string]uint64),
	}
	for i := range b.Transactions {
		tx := &b.Transactions[i]
		us, err := micros(tx.CommitTime)
		if err != nil {
			return nil, fmt.Errorf("transaction %d: %w", i+1, err)
		}
		e.buf = binary.AppendUvarint(e.buf, uint64(tx.CommitLSN))
		e.buf = binary.AppendVarint(e.buf, us)
		e.buf = binary.AppendUvarint(e.buf, uint64(len(tx.Changes)))
		for j := range tx.Changes {
			if err := e.change(&tx.Changes[j]); err != nil {
				return nil, fmt.Errorf("transaction %d (commit LSN %s), change %d: %w", i+1, tx.CommitLSN, j+1, err)
			}
			if len(e.buf) > MaxBodyBytes {
				return nil, fmt.Errorf("body over MaxBodyBytes (%d) at transaction %d, change %d: %w", MaxBodyBytes, i+1, j+1, ErrTooLarge)
			}
		}
	}
	if len(e.buf) > MaxBodyBytes {
		return nil, fmt.Errorf("body over MaxBodyBytes (%d): %w", MaxBodyBytes, ErrTooLarge)
	}
	return e.buf, nil
}

// change appends one change: op, relation, image flags, row images.
func (e *bodyEncoder) change(c *pgcourier.Change) error {
	if c.Rel == nil {
		return errors.New("no relation")
	}
	var mask byte
	if c.New != nil {
		mask |= imageNew
	}
	if c.Old != nil {
		mask |= imageOld
	}
	if err := checkImages(c.Op, mask); err != nil {
		return err
	}
	e.buf = append(e.buf, byte(c.Op))
	if err := e.relation(c.Rel); err != nil {
		return err
	}
	e.buf = append(e.buf, mask)
	if c.New != nil {
		if err := e.image("new", c.Rel, c.New); err != nil {
			return err
		}
	}
	if c.Old != nil {
		if err := e.image("old", c.Rel, c.Old); err != nil {
			return err
		}
	}
	return nil
}

// relation appends the dictionary index of rel, followed by the entry itself
// the first time a relation with its contents appears.
func (e *bodyEncoder) relation(rel *pgcourier.Relation) error {
	if idx, ok := e.byPtr[rel]; ok {
		e.buf = binary.AppendUvarint(e.buf, idx)
		return nil
	}
	if err := checkRelation(rel); err != nil {
		return err
	}
	e.def = appendRelation(e.def[:0], rel)
	idx, ok := e.byDef[string(e.def)]
	if !ok {
		if e.values += len(rel.Columns); e.values > MaxValues {
			return fmt.Errorf("over MaxValues (%d): %w", MaxValues, ErrTooLarge)
		}
		idx = uint64(len(e.byDef))
		e.byDef[string(e.def)] = idx
	}
	e.byPtr[rel] = idx
	e.buf = binary.AppendUvarint(e.buf, idx)
	if !ok {
		e.buf = append(e.buf, e.def...)
	}
	return nil
}

// appendRelation appends a relation entry: schema, name, columns.
func appendRelation(dst []byte, rel *pgcourier.Relation) []byte {
	dst = appendString(dst, rel.Schema)
	dst = appendString(dst, rel.Name)
	dst = binary.AppendUvarint(dst, uint64(len(rel.Columns)))
	for _, col := range rel.Columns {
		dst = appendString(dst, col.Name)
		dst = appendString(dst, col.Type)
		if col.Key {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
	}
	return dst
}

// image appends the values of one row image of a change to rel.
func (e *bodyEncoder) image(which string, rel *pgcourier.Relation, vals []pgcourier.Value) error {
	if len(vals) != len(rel.Columns) {
		return fmt.Errorf("%s row image has %d values for the %d columns of %s", which, len(vals), len(rel.Columns), relName(rel))
	}
	if e.values += len(vals); e.values > MaxValues {
		return fmt.Errorf("over MaxValues (%d): %w", MaxValues, ErrTooLarge)
	}
	for k, v := range vals {
		switch v.Kind {
		case pgcourier.Null, pgcourier.Unchanged:
			if v.Text != "" {
				return fmt.Errorf("%s row image, column %q: kind %q with text", which, rel.Columns[k].Name, v.Kind)
			}
			e.buf = append(e.buf, byte(v.Kind))
		case pgcourier.Text:
			e.buf = append(e.buf, byte(v.Kind))
			e.buf = appendString(e.buf, v.Text)
		default:
			return fmt.Errorf("%s row image, column %q: unknown value kind 0x%02x", which, rel.Columns[k].Name, byte(v.Kind))
		}
	}
	return nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// micros returns t in Unix microseconds, dropping what is below.
func micros(t time.Time) (int64, error) {
	us := t.UnixMicro()
	if d := t.Sub(time.UnixMicro(us)); d < 0 || d >= time.Microsecond {
		return 0, fmt.Errorf("commit time %v is out of range", t)
	}
	return us, nil
}

// checkImages returns an error unless a change with op may carry the row
// images in mask: insert a new one, update a new one and maybe an old one,
// delete an old one, truncate none.
func checkImages(op pgcourier.Op, mask byte) error {
	hasNew, hasOld := mask&imageNew != 0, mask&imageOld != 0
	switch op {
	case pgcourier.OpInsert, pgcourier.OpUpdate:
		if !hasNew {
			return fmt.Errorf("%s without a new row image", op)
		}
		if hasOld && op == pgcourier.OpInsert {
			return fmt.Errorf("%s with an old row image", op)
		}
	case pgcourier.OpDelete:
		if hasNew {
			return fmt.Errorf("%s with a new row image", op)
		}
		if !hasOld {
			return fmt.Errorf("%s without an old row image", op)
		}
	case pgcourier.OpTruncate:
		if hasNew || hasOld {
			return fmt.Errorf("%s with a row image", op)
		}
	default:
		return fmt.Errorf("unknown operation 0x%02x", byte(op))
	}
	return nil
}

// checkRelation returns an error unless rel has a schema, a name, at most
// maxColumns columns, and distinct, non-empty column names.
func checkRelation(rel *pgcourier.Relation) error {
	if rel.Schema == "" || rel.Name == "" {
		return fmt.Errorf("relation %s: empty schema or name", relName(rel))
	}
	if len(rel.Columns) > maxColumns {
		return fmt.Errorf("relation %s: %d columns, over Postgres's %d", relName(rel), len(rel.Columns), maxColumns)
	}
	var seen map[string]bool
	if len(rel.Columns) > 8 {
		seen = make(map[string]bool, len(rel.Columns))
	}
	for k, col := range rel.Columns {
		if col.Name == "" {
			return fmt.Errorf("relation %s: column %d has no name", relName(rel), k)
		}
		dup := false
		if seen != nil {
			dup = seen[col.Name]
			seen[col.Name] = true
		} else {
			for _, prev := range rel.Columns[:k] {
				dup = dup || prev.Name == col.Name
			}
		}
		if dup {
			return fmt.Errorf("relation %s: column %q appears twice", relName(rel), col.Name)
		}
	}
	return nil
}

// relName returns rel's qualified name, quoted for messages.
func relName(rel *pgcourier.Relation) string {
	return strconv.Quote(rel.Schema + "." + rel.Name)
}

// bodyDecoder reads a body, checking it against its header as it goes.
type bodyDecoder struct {
	r      reader
	rels   []*pgcourier.Relation // the relation dictionary so far
	defs   map[string]int        // entry bytes → index, to refuse repeated entries
	rows   int                   // changes so far
	values int                   // column values and relation columns so far
	arena  []pgcourier.Value     // room for the values still to come
}

// decodeBody returns the transactions of body, which h describes. It checks
// the counts in h; the caller checks the commit range.
func decodeBody(body string, h *Header) ([]pgcourier.Transaction, error) {
	d := bodyDecoder{r: reader{s: body, what: "body"}}
	r := &d.r
	var txs []pgcourier.Transaction
	if h.Transactions > 0 {
		// readHeader bounded the count by the body length, and the body has
		// been decompressed to exactly that length.
		txs = make([]pgcourier.Transaction, h.Transactions)
	}
	for i := range txs {
		tx := &txs[i]
		tx.CommitLSN = pgcourier.LSN(r.uvarint())
		tx.CommitTime = time.UnixMicro(r.varint()).UTC()
		n := r.uvarint()
		if r.err == nil {
			if n > uint64(h.Rows-d.rows) {
				r.fail("%d more row changes than the header's %d", n, h.Rows)
			} else if n > uint64(r.remaining()/minChangeLen) {
				r.fail("%d row changes cannot fit in the %d bytes left", n, r.remaining())
			}
		}
		if r.err != nil {
			return nil, fmt.Errorf("transaction %d: %w", i+1, r.err)
		}
		d.rows += int(n)
		if n > 0 {
			tx.Changes = make([]pgcourier.Change, n)
		}
		for j := range tx.Changes {
			if err := d.change(&tx.Changes[j]); err != nil {
				return nil, fmt.Errorf("transaction %d (commit LSN %s), change %d: %w", i+1, tx.CommitLSN, j+1, err)
			}
		}
	}
	switch {
	case r.remaining() > 0:
		r.fail("%d bytes after the last transaction", r.remaining())
	case d.rows != h.Rows:
		r.fail("%d row changes, header says %d", d.rows, h.Rows)
	}
	if r.err != nil {
		return nil, r.err
	}
	return txs, nil
}

// change reads one change into c.
func (d *bodyDecoder) change(c *pgcourier.Change) error {
	r := &d.r
	c.Op = pgcourier.Op(r.byte())
	idx := r.uvarint()
	switch {
	case r.err != nil:
		return r.err
	case idx < uint64(len(d.rels)):
		c.Rel = d.rels[idx]
	case idx == uint64(len(d.rels)):
		if err := d.relation(); err != nil {
			return err
		}
		c.Rel = d.rels[idx]
	default:
		r.fail("relation entry %d is not defined (%d so far)", idx, len(d.rels))
		return r.err
	}
	mask := r.byte()
	if r.err != nil {
		return r.err
	}
	if mask&^(imageNew|imageOld) != 0 {
		r.fail("image flags 0x%02x", mask)
		return r.err
	}
	if err := checkImages(c.Op, mask); err != nil {
		r.fail("%v", err)
		return r.err
	}

	ncols := len(c.Rel.Columns)
	n := 0
	if mask&imageNew != 0 {
		n += ncols
	}
	if mask&imageOld != 0 {
		n += ncols
	}
	if n > r.remaining() {
		r.fail("%d values cannot fit in the %d bytes left", n, r.remaining())
		return r.err
	}
	if d.values += n; d.values > MaxValues {
		r.fail("over MaxValues (%d)", MaxValues)
		return r.err
	}
	vals := d.take(n)
	for k := range vals {
		vals[k] = d.value()
	}
	if r.err != nil {
		return r.err
	}
	if mask&imageNew != 0 {
		c.New, vals = vals[:ncols:ncols], vals[ncols:]
	}
	if mask&imageOld != 0 {
		c.Old = vals[:ncols:ncols]
	}
	return nil
}

// take returns a slice of n values from the arena, refilling it when it
// runs short. A slice of no values is empty but not nil: the image is there.
func (d *bodyDecoder) take(n int) []pgcourier.Value {
	if n == 0 {
		return []pgcourier.Value{}
	}
	if n > len(d.arena) {
		// Every value takes at least one byte, so the rest of the body
		// bounds how many can still come.
		d.arena = make([]pgcourier.Value, max(n, min(arenaLen, d.r.remaining())))
	}
	v := d.arena[:n:n]
	d.arena = d.arena[n:]
	return v
}

// value reads one column value.
func (d *bodyDecoder) value() pgcourier.Value {
	switch k := pgcourier.ValueKind(d.r.byte()); k {
	case pgcourier.Null, pgcourier.Unchanged:
		return pgcourier.Value{Kind: k}
	case pgcourier.Text:
		return pgcourier.Value{Kind: k, Text: d.r.str()}
	default:
		if d.r.err == nil {
			d.r.off--
			d.r.fail("unknown value kind 0x%02x", byte(k))
		}
		return pgcourier.Value{}
	}
}

// relation reads a new dictionary entry and appends it to d.rels.
func (d *bodyDecoder) relation() error {
	r := &d.r
	start := r.off
	rel := &pgcourier.Relation{Schema: r.str(), Name: r.str()}
	n := r.uvarint()
	if r.err == nil {
		if n > maxColumns {
			r.fail("relation %s: %d columns, over Postgres's %d", relName(rel), n, maxColumns)
		} else if n > uint64(r.remaining()/minColumnLen) {
			r.fail("relation %s: %d columns cannot fit in the %d bytes left", relName(rel), n, r.remaining())
		} else if d.values += int(n); d.values > MaxValues {
			r.fail("over MaxValues (%d)", MaxValues)
		}
	}
	if r.err != nil {
		return r.err
	}
	if n > 0 {
		rel.Columns = make([]pgcourier.Column, n)
	}
	for k := range rel.Columns {
		col := &rel.Columns[k]
		col.Name = r.str()
		col.Type = r.str()
		switch key := r.byte(); key {
		case 0:
		case 1:
			col.Key = true
		default:
			if r.err == nil {
				r.off--
				r.fail("key flag 0x%02x", key)
			}
		}
	}
	if r.err != nil {
		return r.err
	}
	if err := checkRelation(rel); err != nil {
		r.fail("%v", err)
		return r.err
	}
	def := r.s[start:r.off]
	if prev, ok := d.defs[def]; ok {
		r.fail("relation entry %d repeats entry %d", len(d.rels), prev)
		return r.err
	}
	if d.defs == nil {
		d.defs = make(map[string]int)
	}
	d.defs[def] = len(d.rels)
	d.rels = append(d.rels, rel)
	return nil
}

// reader reads a header or body; the first error sticks, and later reads
// return zero values.
type reader struct {
	s    string
	off  int
	what string // "header" or "body", for messages
	err  error
}

// fail records an error at the current offset unless one is recorded.
func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = corruptf("%s offset %d: %s", r.what, r.off, fmt.Sprintf(format, args...))
	}
}

func (r *reader) remaining() int { return len(r.s) - r.off }

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.s) {
		r.fail("unexpected end of %s", r.what)
		return 0
	}
	r.off++
	return r.s[r.off-1]
}

// bytes reads n bytes.
func (r *reader) bytes(n uint64) string {
	if r.err != nil {
		return ""
	}
	if n > uint64(r.remaining()) {
		r.fail("%d bytes wanted, %d left", n, r.remaining())
		return ""
	}
	s := r.s[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// str reads a length-prefixed string.
func (r *reader) str() string { return r.bytes(r.uvarint()) }

// uvarint reads an unsigned varint in its shortest form; a longer form is
// refused, so every batch has exactly one encoding.
func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	var x uint64
	for i, shift := 0, uint(0); i < binary.MaxVarintLen64; i, shift = i+1, shift+7 {
		if r.off+i >= len(r.s) {
			r.fail("unexpected end of %s", r.what)
			return 0
		}
		b := r.s[r.off+i]
		if b < 0x80 {
			switch {
			case i == binary.MaxVarintLen64-1 && b > 1:
				r.fail("varint overflows 64 bits")
				return 0
			case i > 0 && b == 0:
				r.fail("varint not in its shortest form")
				return 0
			}
			r.off += i + 1
			return x | uint64(b)<<shift
		}
		x |= uint64(b&0x7f) << shift
	}
	r.fail("varint overflows 64 bits")
	return 0
}

// varint reads a signed (zigzag) varint.
func (r *reader) varint() int64 {
	ux := r.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}
