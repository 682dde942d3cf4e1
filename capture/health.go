package capture

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// SlotHealth is what Postgres says of the node's replication slot: whether
// capture keeps up, and how much WAL the slot holds back on the laptop's
// disk.
type SlotHealth struct {
	Exists    bool
	Active    bool   // a capturer is streaming from it now
	WALStatus string // reserved, extended, unreserved or lost (see pg_replication_slots)
	// RetainedBytes is the WAL kept on disk for the slot: from its restart
	// LSN to the current WAL position.
	RetainedBytes int64
	// LagBytes is the WAL written since the last position capture confirmed.
	LagBytes int64
}

// Health reads the slot's state. A missing slot is not an error: Exists is
// false.
func Health(ctx context.Context, conn *pgx.Conn, slot string) (SlotHealth, error) {
	h := SlotHealth{Exists: true}
	var walStatus *string
	err := conn.QueryRow(ctx, `
		SELECT active, wal_status,
		       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
		       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
		  FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&h.Active, &walStatus, &h.RetainedBytes, &h.LagBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotHealth{}, nil
	}
	if err != nil {
		return h, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	if walStatus != nil {
		h.WALStatus = *walStatus
	}
	return h, nil
}

// SnapshotState is how far the initial snapshot of one table has got.
type SnapshotState struct {
	Table        string `json:"table"`
	RowsDone     int64  `json:"rows_done"`
	RowsEstimate int64  `json:"rows_estimate"` // from the planner's statistics when scheduled; 0 if unknown
}

// Snapshots returns the snapshots of slot's tables that are not done yet,
// by table name.
func Snapshots(ctx context.Context, conn *pgx.Conn, slot string) ([]SnapshotState, error) {
	rows, err := conn.Query(ctx, `
		SELECT table_name, rows_done, rows_estimate FROM pgcourier.snapshot_progress
		 WHERE slot = $1 AND NOT done ORDER BY table_name`, slot)
	if err != nil {
		return nil, fmt.Errorf("read snapshot progress: %w", err)
	}
	states, err := pgx.CollectRows(rows, pgx.RowToStructByPos[SnapshotState])
	if err != nil {
		return nil, fmt.Errorf("read snapshot progress: %w", err)
	}
	return states, nil
}
