package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// nativeSub names the subscription on the target and, as Postgres does by
// default, its slot on the source.
const nativeSub = "bench_native"

// native is Postgres's own logical replication: a subscription on the
// target to the source's publication. Its CPU is that of the source's
// walsender and the target's apply worker, its wire bytes those of the
// replication connection between them.
//
// With offline set, the subscription meets the link pgcourier's routes
// meet (native-offline): it is enabled throughout, the source refuses the
// role it connects as while the link is down, and its apply worker retries
// as Postgres does by default, every wal_retrieve_retry_interval.
type native struct {
	e       *env
	meter   meter
	offline bool
}

var _ contender = (*native)(nil)

// linkRole is the role native-offline's subscription connects as: the link
// is down while the role may not log in.
const linkRole = "bench_link"

// live reports whether the contender replicates live workloads:
// native-offline replicates backlogs only, as with its link up it is
// native.
func (c *native) live() bool { return !c.offline }

// prepare creates the subscription: the slot exists on the source from now
// on, so every later change waits for it. Native's is disabled, so no
// worker runs; native-offline's is enabled, its link down.
func (c *native) prepare(ctx context.Context, e *env) error {
	c.e = e
	info := conninfo(e.src.Host(), e.src.Port())
	var src *pgx.Conn
	if c.offline {
		var err error
		if src, err = pgx.Connect(ctx, e.srcURL); err != nil {
			return fmt.Errorf("create subscription: %w", err)
		}
		defer src.Close(context.WithoutCancel(ctx))
		if _, err := src.Exec(ctx, "CREATE ROLE "+linkRole+" LOGIN SUPERUSER"); err != nil {
			return fmt.Errorf("create role %s: %w", linkRole, err)
		}
		info = conninfoAs(e.src.Host(), e.src.Port(), linkRole)
	}
	conn, err := pgx.Connect(ctx, e.dstURL)
	if err != nil {
		return fmt.Errorf("create subscription: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION '%s' PUBLICATION %s WITH (copy_data = false, enabled = false)",
		nativeSub, info, pubName))
	if err != nil {
		return fmt.Errorf("create subscription: %w", err)
	}
	if c.offline {
		if _, err := src.Exec(ctx, "ALTER ROLE "+linkRole+" NOLOGIN"); err != nil {
			return fmt.Errorf("take the link down: %w", err)
		}
		if _, err := conn.Exec(ctx, "ALTER SUBSCRIPTION "+nativeSub+" ENABLE"); err != nil {
			return fmt.Errorf("enable subscription: %w", err)
		}
	}
	return nil
}

// start brings the link up — enables native's subscription, lets
// native-offline's role log in again — and returns once the apply worker
// streams from the walsender.
func (c *native) start(ctx context.Context) error {
	dst, err := pgx.Connect(ctx, c.e.dstURL)
	if err != nil {
		return fmt.Errorf("enable subscription: %w", err)
	}
	defer dst.Close(context.WithoutCancel(ctx))
	src, err := pgx.Connect(ctx, c.e.srcURL)
	if err != nil {
		return fmt.Errorf("connect to the source: %w", err)
	}
	defer src.Close(context.WithoutCancel(ctx))
	if c.offline {
		if _, err := src.Exec(ctx, "ALTER ROLE "+linkRole+" LOGIN"); err != nil {
			return fmt.Errorf("bring the link up: %w", err)
		}
	} else if _, err := dst.Exec(ctx, "ALTER SUBSCRIPTION "+nativeSub+" ENABLE"); err != nil {
		return fmt.Errorf("enable subscription: %w", err)
	}
	err = poll(ctx, 2*time.Millisecond, func() (bool, error) {
		var worker *int32
		if err := dst.QueryRow(ctx, "SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL", nativeSub).Scan(&worker); err != nil &&
			!errors.Is(err, pgx.ErrNoRows) {
			return false, err
		}
		if worker == nil {
			return false, nil
		}
		ok, err := trackWalsender(ctx, src, nativeSub, c.e.src.Port(), &c.meter)
		if !ok || err != nil {
			return false, err
		}
		return true, c.meter.addProc(int(*worker), "apply worker", false)
	})
	if err != nil {
		return fmt.Errorf("wait for the subscription to stream: %w", err)
	}
	return nil
}

func (c *native) wait(ctx context.Context, s stretch) (arrival, error) {
	at, err := c.e.waitMarker(ctx, s.marker, nil)
	if err != nil {
		return arrival{}, err
	}
	return c.e.arrived(ctx, s, at)
}

func (c *native) usage() (usage, error) { return c.meter.sample() }

func (c *native) check(ctx context.Context) error { return c.e.check(ctx) }

// close drops the subscription and with it the slot on the source. Should
// the source be out of reach, it detaches the slot and drops it on the
// source directly.
func (c *native) close(ctx context.Context) error {
	if c.e == nil {
		return nil
	}
	dst, err := pgx.Connect(ctx, c.e.dstURL)
	if err != nil {
		return fmt.Errorf("drop subscription: %w", err)
	}
	defer dst.Close(ctx)
	var exists bool
	if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_subscription WHERE subname = $1)", nativeSub).Scan(&exists); err != nil || !exists {
		return err
	}
	if _, err := dst.Exec(ctx, "DROP SUBSCRIPTION "+nativeSub); err == nil {
		return nil
	}
	for _, q := range []string{
		"ALTER SUBSCRIPTION " + nativeSub + " DISABLE",
		"ALTER SUBSCRIPTION " + nativeSub + " SET (slot_name = NONE)",
		"DROP SUBSCRIPTION " + nativeSub,
	} {
		if _, err := dst.Exec(ctx, q); err != nil {
			return fmt.Errorf("drop subscription: %w", err)
		}
	}
	return dropSlot(ctx, c.e.srcURL, nativeSub)
}

// trackWalsender finds the walsender streaming from slot and, once it
// streams, adds it and its connection (to the server at port) to m and
// reports true.
func trackWalsender(ctx context.Context, conn *pgx.Conn, slot string, port int, m *meter) (bool, error) {
	var pid, clientPort *int32
	err := conn.QueryRow(ctx, `SELECT s.active_pid, r.client_port
FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.slot_name = $1`, slot).Scan(&pid, &clientPort)
	if err != nil || pid == nil || clientPort == nil {
		return false, err
	}
	if err := m.addProc(int(*pid), "walsender", false); err != nil {
		return false, err
	}
	m.addConn(port, int(*clientPort))
	return true, nil
}

// dropSlot drops slot on the server at url once no process holds it any
// more, waiting a few seconds for its walsender to exit. A missing slot is
// not an error.
func dropSlot(ctx context.Context, url, slot string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", slot, err)
	}
	defer conn.Close(ctx)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = poll(ctx, 20*time.Millisecond, func() (bool, error) {
		var active *bool
		err := conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return true, nil
		}
		if err != nil || *active {
			return false, err
		}
		_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "55006" {
			return false, nil // taken again by a walsender on its way out
		}
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", slot, err)
	}
	return nil
}
