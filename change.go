package pgcourier

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LSN is a position in a Postgres write-ahead log.
type LSN uint64

// String formats the LSN the way Postgres prints it, such as "16/B374D848".
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// ParseLSN parses an LSN as Postgres prints it.
func ParseLSN(s string) (LSN, error) {
	h, l, ok := strings.Cut(s, "/")
	hi, err1 := strconv.ParseUint(h, 16, 32)
	lo, err2 := strconv.ParseUint(l, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("lsn %q: want the form 16/B374D848", s)
	}
	return LSN(hi<<32 | lo), nil
}

// Op is what a change does to a row.
type Op byte

// The operations a change can carry.
const (
	OpInsert   Op = 'I'
	OpUpdate   Op = 'U'
	OpDelete   Op = 'D'
	OpTruncate Op = 'T' // every row of the relation; the applier decides whether to allow it
)

// String returns the operation's name in lower case.
func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	}
	return fmt.Sprintf("op(%d)", byte(o))
}

// ValueKind tells a column value from SQL NULL and from a value that was not
// sent because it did not change.
type ValueKind byte

// The kinds of column value.
const (
	// Null is SQL NULL.
	Null ValueKind = 'n'
	// Unchanged marks a large (TOASTed) value that an update did not touch, so
	// Postgres did not send it. The applier keeps the stored value. It is
	// never the same as Null.
	Unchanged ValueKind = 'u'
	// Text is a value in Postgres's text output format.
	Text ValueKind = 't'
)

// Value is one column's value in one row image.
type Value struct {
	Kind ValueKind
	Text string // the value as Postgres prints it; empty unless Kind is Text
}

// ValueSettings returns the session settings under which values are
// captured (printed) and applied (parsed), so that a value means the same on
// every node whatever each server's defaults are.
func ValueSettings() map[string]string {
	return map[string]string{
		"datestyle":          "ISO, MDY",
		"intervalstyle":      "postgres",
		"extra_float_digits": "3",
		"bytea_output":       "hex",
	}
}

// TextValue returns a Value holding s.
func TextValue(s string) Value { return Value{Kind: Text, Text: s} }

// Column describes one column of a captured relation.
type Column struct {
	Name string
	Type string // the type as format_type prints it, such as "numeric(10,2)" or "public.mood"
	Key  bool   // part of the replica identity (the primary key, usually)
}

// Relation is a captured table as the source saw it when a change was made.
// A relation's columns can differ between transactions (a column added
// mid-stream); each change refers to the relation it was made against.
type Relation struct {
	Schema  string
	Name    string
	Columns []Column
}

// Change is one row insert, update or delete, or a truncate.
//
// New and Old are aligned with Rel.Columns. New is the row after an insert or
// update. Old is set for a delete (the replica identity: the key columns, or
// every column under REPLICA IDENTITY FULL, with the rest Null) and for an
// update that changed the key or whose table has REPLICA IDENTITY FULL; it is
// nil otherwise, and nil for a truncate.
type Change struct {
	Rel *Relation
	Op  Op
	New []Value
	Old []Value
}

// Transaction is the changes of one committed source transaction, in the
// order they were made.
type Transaction struct {
	CommitLSN  LSN       // the commit record's LSN: the transaction's identity on its source
	CommitTime time.Time // the source's commit timestamp
	Changes    []Change
}

// Batch is one or more whole source transactions from one source, in commit
// order. (Source, Epoch, Seq) identifies it on every hop: receivers
// deduplicate on it.
type Batch struct {
	Source       string // the node the changes were captured from
	Epoch        int64  // the incarnation of the source's database; a new one starts at Seq 1
	Seq          uint64 // 1, 2, 3 … per source and epoch, without gaps
	Transactions []Transaction
	// Continued says that the last transaction goes on in the batch with
	// the next Seq: a transaction too large for one batch is captured in
	// parts, each part holding the next of its changes, and the first
	// batch without Continued holds its last changes and its end. Every part
	// carries the transaction's commit LSN and commit time. A receiver
	// applies the parts together, in one transaction, or none of them.
	Continued bool
}

// Rows returns the number of row changes in the batch.
func (b *Batch) Rows() int {
	n := 0
	for _, tx := range b.Transactions {
		n += len(tx.Changes)
	}
	return n
}
