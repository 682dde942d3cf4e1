package apply

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	pgcourier "github.com/pgcourier/pgcourier"
)

// BlockedError says why a batch cannot be applied as the upstream database
// stands. It is the Err of a Blocked result.
type BlockedError struct {
	Table     string        // schema.table the error concerns, if known
	Column    string        // the column, if known
	Op        pgcourier.Op  // the operation being applied, if known
	CommitLSN pgcourier.LSN // the source transaction of the first change involved, if known
	SQLState  string        // the Postgres error code, such as 23505
	Message   string
	Detail    string
	Hint      string // what an operator can do about it
	Err       error  // the underlying error, if any

	server bool // raised by a statement, not found before running any
}

// catalogRace reports whether err is the server finding a table or column
// missing that the catalog, read moments before, had: a schema change
// under the batch, which applying it again with a fresh catalog resolves.
func catalogRace(err error) bool {
	var be *BlockedError
	return errors.As(err, &be) && be.server && (be.SQLState == "42P01" || be.SQLState == "42703")
}

// Error returns the message with the table and column it concerns, such as
// `table public.visit, column weight: invalid input syntax for type
// integer: "abc" (SQLSTATE 22P02)`.
func (e *BlockedError) Error() string {
	var sb strings.Builder
	if e.Table != "" {
		sb.WriteString("table " + e.Table)
		if e.Column != "" {
			sb.WriteString(", column " + e.Column)
		}
		sb.WriteString(": ")
	}
	sb.WriteString(e.Message)
	if e.SQLState != "" {
		sb.WriteString(" (SQLSTATE " + e.SQLState + ")")
	}
	if e.Detail != "" {
		sb.WriteString(": " + e.Detail)
	}
	return sb.String()
}

// Unwrap returns the underlying error.
func (e *BlockedError) Unwrap() error { return e.Err }

const parkHint = "or park the batch (pgcourier park) to let the source's later batches through"

func missingTable(rel *pgcourier.Relation, op pgcourier.Op) *BlockedError {
	t := rel.Schema + "." + rel.Name
	var cols, key []string
	for _, c := range rel.Columns {
		cols = append(cols, ident(c.Name)+" "+c.Type)
		if c.Key {
			key = append(key, ident(c.Name))
		}
	}
	if len(key) > 0 && len(key) < len(cols) {
		cols = append(cols, "PRIMARY KEY ("+strings.Join(key, ", ")+")")
	}
	create := ""
	if len(cols) > 0 {
		create = fmt.Sprintf(" (CREATE TABLE %s (%s);)", pgx.Identifier{rel.Schema, rel.Name}.Sanitize(), strings.Join(cols, ", "))
	}
	return &BlockedError{
		Table: t, Op: op, SQLState: "42P01",
		Message: "the table does not exist upstream",
		Hint:    fmt.Sprintf("create %s upstream with the columns it has on the source%s, %s", t, create, parkHint),
	}
}

func missingColumn(t *table, c pgcourier.Column) *BlockedError {
	return &BlockedError{
		Table: t.Schema + "." + t.Name, Column: c.Name, SQLState: "42703",
		Message: "the column does not exist upstream",
		Hint:    fmt.Sprintf("add it upstream (ALTER TABLE %s ADD COLUMN %s %s;), %s", t.ident, ident(c.Name), c.Type, parkHint),
	}
}

// infrastructure reports whether err is a failure of the link or the server
// rather than of the batch: the caller should retry it as it is.
func infrastructure(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return true
	}
	switch pe.Code[:2] {
	case "08", // connection exception
		"25", // invalid transaction state
		"40", // transaction rollback: serialization failure, deadlock
		"57", // operator intervention: shutdown, cancel
		"58", // system error
		"XX", // internal error
		"0A": // feature not supported: e.g. a cached plan whose result changed
		return true
	case "53": // insufficient resources, except a configuration limit
		return pe.Code != "53400"
	case "55":
		// lock_not_available, object_in_use (the origin is still held by a
		// session that is going away)
		return pe.Code == "55P03" || pe.Code == "55006"
	}
	return false
}

// transient reports whether err is a lost deadlock or serialization check,
// which running the batch again normally resolves.
func transient(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// blockedFrom turns a server error about the batch into a BlockedError,
// naming the table and column from the error or from the run r (may be nil).
func blockedFrom(err error, r *run) *BlockedError {
	var pe *pgconn.PgError
	errors.As(err, &pe)
	be := &BlockedError{Err: err}
	if pe != nil {
		be.SQLState, be.Message, be.Detail, be.Column = pe.Code, pe.Message, pe.Detail, pe.ColumnName
		if pe.TableName != "" {
			be.Table = pe.TableName
			if pe.SchemaName != "" {
				be.Table = pe.SchemaName + "." + pe.TableName
			}
		}
	} else {
		be.Message = err.Error()
	}
	if r != nil {
		if be.Table == "" {
			be.Table = r.table()
		}
		be.Op = r.op
		if len(r.items) > 0 {
			be.CommitLSN = r.items[0].lsn
		}
	}
	be.Hint = hintFor(be, pe)
	return be
}

// hintFor suggests what an operator can do about a blocked batch.
func hintFor(be *BlockedError, pe *pgconn.PgError) string {
	var h string
	switch code := be.SQLState; {
	case code == "23505" || code == "23P01":
		h = "an upstream row already holds the value (see the detail): change or remove that row upstream, " + parkHint
	case code == "23503":
		h = "the row a foreign key refers to is missing upstream (see the detail): add it, or relax the constraint, " + parkHint
	case code == "23502":
		h = "the source sent no value for a column that is NOT NULL upstream: give the column a default or allow NULL upstream, " + parkHint
	case code == "23514":
		h = "the value breaks a CHECK constraint upstream: align the constraint with the source's, " + parkHint
	case strings.HasPrefix(code, "23"):
		h = "the change breaks a constraint upstream: fix the upstream row or the constraint, " + parkHint
	case strings.HasPrefix(code, "22"), code == "42804":
		h = "the value does not fit the upstream column's type: make the column's type match the source's, " + parkHint
	case code == "42P01" || code == "42703":
		h = "make the upstream table match the source's (same tables and columns), " + parkHint
	case code == "42501":
		h = "grant the role pgcourier connects as SELECT, INSERT, UPDATE and DELETE on the table, and EXECUTE on the pg_replication_origin functions"
	case code == "53400":
		h = "every source needs a replication origin slot: raise max_replication_slots upstream (one per source, plus capture slots) and restart Postgres"
	case code == "55000" && pe == nil:
		h = "set track_commit_timestamp = on upstream (ALTER SYSTEM SET track_commit_timestamp = on;) and restart Postgres"
	default:
		h = "fix the cause upstream, " + parkHint
	}
	if pe != nil && pe.Hint != "" {
		h = pe.Hint + "; " + h
	}
	return h
}
