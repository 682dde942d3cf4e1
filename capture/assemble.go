package capture

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"

	pgcourier "github.com/pgcourier/pgcourier"
)

// assembler turns pgoutput messages into whole transactions. It keeps the
// relations the stream has described; a new Relation message for a table
// replaces its entry with a new *Relation, so changes made before keep the
// column list they were made against.
//
// A transaction that outgrows partRows changes or about partBytes of values
// is handed over in parts as it streams in (see committed.part), so that
// memory stays bounded whatever its size.
type assembler struct {
	relations map[uint32]*pgcourier.Relation
	typeName  func(ctx context.Context, oid uint32, typmod int32) (string, error)
	// written says how much of the transaction committed at lsn the outbox
	// holds already: all of it, or its first rows changes (written in parts
	// before a restart). Those changes are dropped as they come again.
	written func(lsn pgcourier.LSN) (all bool, rows int)

	partRows, partBytes int // the size at which the open transaction is cut

	open    bool
	skip    bool   // the open transaction carries a replication origin
	marker  string // a snapshot watermark the open transaction carries
	drop    bool   // the outbox holds the open transaction already
	dropN   int    // changes still to drop: written in parts before a restart
	parted  bool   // the open transaction was handed over in parts
	tx      pgcourier.Transaction
	txBytes int
}

func newAssembler(typeName func(ctx context.Context, oid uint32, typmod int32) (string, error),
	written func(pgcourier.LSN) (bool, int), partRows, partBytes int) *assembler {
	return &assembler{relations: map[uint32]*pgcourier.Relation{}, typeName: typeName, written: written,
		partRows: partRows, partBytes: partBytes}
}

// committed is a transaction the stream finished, or (part) the next part
// of one it has not finished.
type committed struct {
	tx      pgcourier.Transaction
	endLSN  pgcourier.LSN // end of the commit record: what the slot may confirm (zero for a part)
	skipped bool          // carried an origin: relayed data, not captured
	marker  string        // the snapshot watermark it carried, if any
	bytes   int           // approximate size of its values
	// part: the transaction goes on; tx holds its next changes, with its
	// commit LSN and commit time as its Begin message announced them.
	part bool
	// parted: the transaction was handed over in parts before this, its
	// last one, or written in parts before a restart.
	parted bool
}

// inTransaction reports whether a transaction has begun and not committed.
func (a *assembler) inTransaction() bool { return a.open }

// add feeds one pgoutput message. It returns the transaction when msg was
// its commit.
func (a *assembler) add(ctx context.Context, msg pglogrepl.Message) (*committed, error) {
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel := &pgcourier.Relation{Schema: m.Namespace, Name: m.RelationName, Columns: make([]pgcourier.Column, len(m.Columns))}
		for i, c := range m.Columns {
			typ, err := a.typeName(ctx, c.DataType, c.TypeModifier)
			if err != nil {
				return nil, err
			}
			rel.Columns[i] = pgcourier.Column{Name: c.Name, Type: typ, Key: c.Flags&1 != 0}
		}
		a.relations[m.RelationID] = rel
	case *pglogrepl.BeginMessage:
		if a.open {
			return nil, fmt.Errorf("begin of a transaction inside another")
		}
		a.open, a.skip, a.marker, a.txBytes = true, false, "", 0
		a.tx = pgcourier.Transaction{CommitLSN: pgcourier.LSN(m.FinalLSN), CommitTime: m.CommitTime}
		a.drop, a.dropN = false, 0
		if a.written != nil {
			a.drop, a.dropN = a.written(a.tx.CommitLSN)
		}
		a.parted = a.dropN > 0
	case *pglogrepl.OriginMessage:
		a.skip = true
	case *pglogrepl.LogicalDecodingMessage:
		if m.Transactional && m.Prefix == snapshotPrefix {
			a.marker = string(m.Content)
		}
	case *pglogrepl.InsertMessage:
		part := a.cut()
		return part, a.change(m.RelationID, pgcourier.OpInsert, m.Tuple, nil)
	case *pglogrepl.UpdateMessage:
		part := a.cut()
		return part, a.change(m.RelationID, pgcourier.OpUpdate, m.NewTuple, m.OldTuple)
	case *pglogrepl.DeleteMessage:
		part := a.cut()
		return part, a.change(m.RelationID, pgcourier.OpDelete, nil, m.OldTuple)
	case *pglogrepl.TruncateMessage:
		// The changes of one message stay in one part.
		part := a.cut()
		for _, id := range m.RelationIDs {
			if err := a.change(id, pgcourier.OpTruncate, nil, nil); err != nil {
				return nil, err
			}
		}
		return part, nil
	case *pglogrepl.CommitMessage:
		if !a.open {
			return nil, fmt.Errorf("commit without a transaction")
		}
		a.open = false
		c := &committed{tx: a.tx, endLSN: pgcourier.LSN(m.TransactionEndLSN), skipped: a.skip, marker: a.marker, bytes: a.txBytes, parted: a.parted}
		c.tx.CommitLSN = pgcourier.LSN(m.CommitLSN)
		c.tx.CommitTime = m.CommitTime
		a.tx = pgcourier.Transaction{}
		return c, nil
	case *pglogrepl.TypeMessage:
		// Type names are resolved from the catalog with each Relation message.
	}
	return nil, nil
}

// cut hands over the changes of the open transaction as a part when it
// holds a part's worth and another change arrives, before that change is
// added. So a part never splits the changes of one message, and the last
// part, the one the commit brings, is never empty. A transaction with a
// snapshot watermark is never cut: the snapshot handles it whole at its
// commit (such a transaction is pgcourier's own, with no changes).
func (a *assembler) cut() *committed {
	if !a.open || a.marker != "" || len(a.tx.Changes) == 0 ||
		len(a.tx.Changes) < a.partRows && a.txBytes < a.partBytes {
		return nil
	}
	part := &committed{tx: a.tx, skipped: a.skip, bytes: a.txBytes, part: true}
	a.tx.Changes = make([]pgcourier.Change, 0, len(part.tx.Changes))
	a.txBytes = 0
	a.parted = true
	return part
}

// change adds one change to the open transaction, unless the outbox holds
// it already.
func (a *assembler) change(relID uint32, op pgcourier.Op, newTuple, oldTuple *pglogrepl.TupleData) error {
	if !a.open {
		return fmt.Errorf("%s outside a transaction", op)
	}
	rel, ok := a.relations[relID]
	if !ok {
		return fmt.Errorf("%s of relation %d before its Relation message", op, relID)
	}
	if a.drop {
		return nil
	}
	if a.dropN > 0 {
		a.dropN--
		return nil
	}
	// The changes of a skipped transaction are kept until its commit, or
	// its next part: a snapshot chunk in flight needs to know which rows
	// they touched.
	ch := pgcourier.Change{Rel: rel, Op: op}
	var err error
	if newTuple != nil {
		if ch.New, err = a.values(rel, newTuple); err != nil {
			return err
		}
	}
	if oldTuple != nil {
		if ch.Old, err = a.values(rel, oldTuple); err != nil {
			return err
		}
		// A value an update left unchanged is the old row's. Under
		// REPLICA IDENTITY FULL the old row comes whole, and with its
		// values the update can recreate a row upstream does not have;
		// an old key alone has nulls in the other columns, not values.
		for i, v := range ch.New {
			if v.Kind == pgcourier.Unchanged && ch.Old[i].Kind == pgcourier.Text {
				ch.New[i] = ch.Old[i]
				a.txBytes += len(ch.Old[i].Text)
			}
		}
	}
	a.tx.Changes = append(a.tx.Changes, ch)
	return nil
}

// values converts a tuple; its columns are those of rel, in order.
func (a *assembler) values(rel *pgcourier.Relation, t *pglogrepl.TupleData) ([]pgcourier.Value, error) {
	if len(t.Columns) != len(rel.Columns) {
		return nil, fmt.Errorf("row of %s.%s has %d columns, its relation %d", rel.Schema, rel.Name, len(t.Columns), len(rel.Columns))
	}
	vs := make([]pgcourier.Value, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			vs[i] = pgcourier.Value{Kind: pgcourier.Null}
		case pglogrepl.TupleDataTypeToast:
			vs[i] = pgcourier.Value{Kind: pgcourier.Unchanged}
		case pglogrepl.TupleDataTypeText:
			vs[i] = pgcourier.TextValue(string(c.Data))
			a.txBytes += len(c.Data)
		default:
			return nil, fmt.Errorf("column %s of %s.%s: unexpected tuple data type %q", rel.Columns[i].Name, rel.Schema, rel.Name, c.DataType)
		}
		a.txBytes += 2
	}
	return vs, nil
}
