package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Conflict is one change the applier did not apply, as pgcourier.conflicts
// keeps it: the incoming change whole, the row it met, and why.
type Conflict struct {
	ID               int64           `json:"id"`
	Source           string          `json:"source"`
	Epoch            int64           `json:"epoch"`
	Seq              uint64          `json:"seq"`
	Position         *int            `json:"position,omitempty"`
	CommitLSN        string          `json:"commit_lsn,omitempty"`
	CommitTime       *time.Time      `json:"commit_time,omitempty"`
	Table            string          `json:"table,omitempty"` // schema.table
	Op               string          `json:"op"`
	Rule             string          `json:"rule"`
	Incoming         json.RawMessage `json:"incoming,omitempty"`
	IncomingOld      json.RawMessage `json:"incoming_old,omitempty"`
	Unchanged        []string        `json:"unchanged,omitempty"`
	Stored           json.RawMessage `json:"stored,omitempty"`
	StoredSource     string          `json:"stored_source,omitempty"`
	StoredCommitTime *time.Time      `json:"stored_commit_time,omitempty"`
	Detail           string          `json:"detail,omitempty"`
	RecordedAt       time.Time       `json:"recorded_at"`
	ResolvedAt       *time.Time      `json:"resolved_at,omitempty"`
	Resolution       string          `json:"resolution,omitempty"`
}

// ListConflicts returns the recorded conflicts in the order they were
// recorded: only the unresolved ones unless all is set, at most limit of
// them (the most recent) when limit > 0.
func ListConflicts(ctx context.Context, conn *pgx.Conn, all bool, limit int) ([]Conflict, error) {
	q := `
		SELECT id, source, epoch, seq, position, commit_lsn::text, commit_time,
		       CASE WHEN table_name IS NULL THEN NULL ELSE format('%I.%I', table_schema, table_name) END,
		       op, rule, incoming, incoming_old, unchanged, stored, stored_source, stored_commit_time,
		       detail, recorded_at, resolved_at, resolution
		  FROM pgcourier.conflicts
		 WHERE $1 OR resolved_at IS NULL
		 ORDER BY id DESC`
	args := []any{all}
	if limit > 0 {
		q += ` LIMIT $2`
		args = append(args, limit)
	}
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list conflicts: %w", err)
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Conflict, error) {
		var c Conflict
		var lsn, table, storedSource, detail, resolution *string
		var incoming, incomingOld, stored []byte
		err := r.Scan(&c.ID, &c.Source, &c.Epoch, &c.Seq, &c.Position, &lsn, &c.CommitTime, &table,
			&c.Op, &c.Rule, &incoming, &incomingOld, &c.Unchanged, &stored, &storedSource, &c.StoredCommitTime,
			&detail, &c.RecordedAt, &c.ResolvedAt, &resolution)
		c.CommitLSN, c.Table, c.StoredSource, c.Detail, c.Resolution = deref(lsn), deref(table), deref(storedSource), deref(detail), deref(resolution)
		c.Incoming, c.IncomingOld, c.Stored = incoming, incomingOld, stored
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("list conflicts: %w", err)
	}
	// Oldest first reads best; the query took the most recent.
	for i, j := 0, len(cs)-1; i < j; i, j = i+1, j-1 {
		cs[i], cs[j] = cs[j], cs[i]
	}
	return cs, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
