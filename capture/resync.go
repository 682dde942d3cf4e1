package capture

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrSlotHealthy is returned by Resync, without force, for a slot that
// capture can still read: a resync would copy every row again for nothing.
var ErrSlotHealthy = errors.New("the replication slot is healthy")

// ErrCaptureRunning is returned by Resync while a capturer streams the
// slot.
var ErrCaptureRunning = errors.New("capture is running")

// Resync starts a new epoch of the node's stream after its slot was lost or
// invalidated: it drops what is left of the slot, creates it again, records
// a new epoch (later than the old one, whatever the clock says) and
// schedules a snapshot of every published table, then runs Setup. Changes
// made while no slot was read are recovered by the snapshot, except
// deletions. The outbox keeps the old epoch's batches, which are shipped
// first. A healthy slot is refused with ErrSlotHealthy unless force is set;
// a slot in use with ErrCaptureRunning.
func Resync(ctx context.Context, conn *pgx.Conn, opts SetupOptions, force bool) (SetupResult, error) {
	var res SetupResult
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, setupLockKey); err != nil {
		return res, fmt.Errorf("resync: lock: %w", err)
	}
	locked := true
	unlock := func() {
		if locked {
			conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, setupLockKey) //nolint:errcheck // released with the session anyway
			locked = false
		}
	}
	defer unlock()

	st, err := readSlot(ctx, conn, opts.Slot)
	if err != nil {
		return res, err
	}
	var old int64
	err = conn.QueryRow(ctx, `SELECT epoch FROM pgcourier.capture_state WHERE slot = $1`, opts.Slot).Scan(&old)
	known := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return res, fmt.Errorf("resync: read capture state: %w", err)
	}
	if !force && st.exists && known && st.walStatus != "lost" {
		return res, fmt.Errorf("%w: %s can still be read, and a resync would copy every captured row again; pass --force if that is what you want", ErrSlotHealthy, opts.Slot)
	}
	var pid *int32
	if st.exists {
		if err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, opts.Slot).Scan(&pid); err != nil {
			return res, fmt.Errorf("resync: read slot %s: %w", opts.Slot, err)
		}
		if pid != nil {
			return res, fmt.Errorf("%w: process %d streams slot %s; stop pgcourier on this node first", ErrCaptureRunning, *pid, opts.Slot)
		}
	}
	// The new epoch first: if resync stops before the slot is made again,
	// capture finds no slot for a known epoch and asks for resync again;
	// it never goes on in the old epoch without a snapshot.
	var newest int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(epoch), 0) FROM pgcourier.outbox`).Scan(&newest); err != nil {
		return res, fmt.Errorf("resync: read the outbox's epochs: %w", err)
	}
	epoch := max(time.Now().UnixMicro(), old+1, newest+1)
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgcourier.capture_state WHERE slot = $1`, opts.Slot); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM pgcourier.snapshot_progress WHERE slot = $1`, opts.Slot); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO pgcourier.capture_state (slot, epoch) VALUES ($1, $2)`, opts.Slot, epoch)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("resync: record epoch %d: %w", epoch, err)
	}
	if st.exists {
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, opts.Slot); err != nil {
			return res, fmt.Errorf("resync: drop slot %s: %w", opts.Slot, err)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, opts.Slot); err != nil {
		return res, fmt.Errorf("resync: create slot %s: %w", opts.Slot, err)
	}
	unlock()
	// Every published table lacks a snapshot record now, and the slot is
	// not new to Setup: it schedules a snapshot of each.
	return Setup(ctx, conn, opts)
}
