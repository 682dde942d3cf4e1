package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SourceState is how a source's stream stands on an applying node, for
// status.
type SourceState struct {
	Source        string     `json:"source"`
	Epoch         int64      `json:"epoch"`
	AppliedSeq    uint64     `json:"applied_seq"`
	LastAppliedAt time.Time  `json:"last_applied_at"`
	LastCommit    *time.Time `json:"last_commit_time,omitempty"` // the source's commit time of the last transaction applied
	Batches       int64      `json:"batches"`
	Rows          int64      `json:"rows"`
	Conflicts     int64      `json:"conflicts"` // unresolved conflicts recorded for the source
	Blocked       *Stuck     `json:"blocked,omitempty"`
	// Staged is the large transaction whose parts are arriving: the parts
	// received of it, not applied until its last part is.
	Staged *Staged `json:"staged,omitempty"`
	// Abandoned counts the parts kept of transactions whose epoch a newer
	// one replaced before their last part came: they are never applied
	// (the new epoch's snapshot carries the rows) and stay in
	// pgcourier.staged for an operator.
	Abandoned int64 `json:"abandoned_parts,omitempty"`
}

// Staged is the parts of a source transaction received so far.
type Staged struct {
	Parts int64     `json:"parts"`
	Rows  int64     `json:"rows"`
	Since time.Time `json:"since"`
}

// Stuck is the batch a source's stream waits on and why.
type Stuck struct {
	Epoch    int64      `json:"epoch"`
	Seq      uint64     `json:"seq"`
	Error    string     `json:"error"`
	Hint     string     `json:"hint,omitempty"`
	Since    time.Time  `json:"since"`
	Attempts int        `json:"attempts"`
	RetryAt  *time.Time `json:"retry_at,omitempty"`
}

// ListSources returns the state of every source this node has applied
// batches from or is blocked on, by source id.
func ListSources(ctx context.Context, conn *pgx.Conn) ([]SourceState, error) {
	rows, err := conn.Query(ctx, `
		WITH ids AS (
		    SELECT source FROM pgcourier.source_progress
		    UNION SELECT source FROM pgcourier.blocked
		), staged AS (
		    SELECT s.source,
		           count(*) FILTER (WHERE s.epoch = p.epoch) AS parts,
		           coalesce(sum(s.rows) FILTER (WHERE s.epoch = p.epoch), 0) AS rows,
		           min(s.staged_at) FILTER (WHERE s.epoch = p.epoch) AS since,
		           count(*) FILTER (WHERE s.epoch IS DISTINCT FROM p.epoch) AS abandoned
		      FROM pgcourier.staged s LEFT JOIN pgcourier.source_progress p ON p.source = s.source
		     GROUP BY s.source
		)
		SELECT ids.source, coalesce(p.epoch, b.epoch), coalesce(p.applied_seq, 0),
		       coalesce(p.applied_at, 'epoch'::timestamptz), p.last_commit_time,
		       coalesce(p.batches, 0), coalesce(p.rows, 0),
		       (SELECT count(*) FROM pgcourier.conflicts c WHERE c.source = ids.source AND c.resolved_at IS NULL),
		       b.epoch, b.seq, b.error, coalesce(b.hint, ''), b.first_at, b.attempts, b.retry_at,
		       coalesce(st.parts, 0), coalesce(st.rows, 0), st.since, coalesce(st.abandoned, 0)
		  FROM ids
		  LEFT JOIN pgcourier.source_progress p ON p.source = ids.source
		  LEFT JOIN pgcourier.blocked b ON b.source = ids.source
		  LEFT JOIN staged st ON st.source = ids.source
		 ORDER BY ids.source`)
	if err != nil {
		return nil, fmt.Errorf("list sources: %w", err)
	}
	defer rows.Close()
	var out []SourceState
	for rows.Next() {
		var s SourceState
		var applied int64
		var bepoch, bseq *int64
		var berr *string
		var hint string
		var since *time.Time
		var attempts *int
		var retryAt, stagedSince *time.Time
		var parts, partRows int64
		if err := rows.Scan(&s.Source, &s.Epoch, &applied, &s.LastAppliedAt, &s.LastCommit,
			&s.Batches, &s.Rows, &s.Conflicts, &bepoch, &bseq, &berr, &hint, &since, &attempts, &retryAt,
			&parts, &partRows, &stagedSince, &s.Abandoned); err != nil {
			return nil, fmt.Errorf("list sources: %w", err)
		}
		if parts > 0 && stagedSince != nil {
			s.Staged = &Staged{Parts: parts, Rows: partRows, Since: *stagedSince}
		}
		s.AppliedSeq = uint64(applied)
		if bepoch != nil && bseq != nil && berr != nil {
			s.Blocked = &Stuck{Epoch: *bepoch, Seq: uint64(*bseq), Error: *berr, Hint: hint, RetryAt: retryAt}
			if since != nil {
				s.Blocked.Since = *since
			}
			if attempts != nil {
				s.Blocked.Attempts = *attempts
			}
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sources: %w", err)
	}
	return out, nil
}

// BlockedBatch returns the batch source's stream is blocked on, as the
// applier last received it (nil when it was not kept), and where it stands;
// ok is false when the source is not blocked.
func BlockedBatch(ctx context.Context, conn *pgx.Conn, source string) (stuck Stuck, payload []byte, ok bool, err error) {
	var seq int64
	var hint *string
	err = conn.QueryRow(ctx, `
		SELECT epoch, seq, error, hint, first_at, attempts, retry_at, payload
		  FROM pgcourier.blocked WHERE source = $1`, source).
		Scan(&stuck.Epoch, &seq, &stuck.Error, &hint, &stuck.Since, &stuck.Attempts, &stuck.RetryAt, &payload)
	if errors.Is(err, pgx.ErrNoRows) {
		return Stuck{}, nil, false, nil
	}
	if err != nil {
		return Stuck{}, nil, false, fmt.Errorf("read the blocked batch of %s: %w", source, err)
	}
	stuck.Seq = uint64(seq)
	if hint != nil {
		stuck.Hint = *hint
	}
	return stuck, payload, true, nil
}
