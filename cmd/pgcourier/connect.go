package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcourier/pgcourier/config"
)

// connectTimeout bounds how long a command waits for the node's database.
const connectTimeout = 10 * time.Second

// connect opens a connection to the node's database. Its error is one
// sentence for the operator: where it tried, what went wrong, what to check.
func connect(ctx context.Context, cfg *config.Config) (*pgx.Conn, error) {
	dsn, err := cfg.Database.ConnString()
	if err != nil {
		return nil, err
	}
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", err)
	}
	if pc.ConnectTimeout == 0 || pc.ConnectTimeout > connectTimeout {
		pc.ConnectTimeout = connectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, pc)
	if err != nil {
		where := net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
		return nil, fmt.Errorf("cannot connect to the database at %s (user %s, database %s): %s; check that Postgres is running and [database] url in %s",
			where, pc.User, pc.Database, connectReason(err), cfg.File())
	}
	return conn, nil
}

// connectReason reduces a connection error to its cause, without the
// driver's wrapping.
func connectReason(err error) string {
	var pgErr *pgconn.PgError
	var dnsErr *net.DNSError
	var errno syscall.Errno
	switch {
	case errors.As(err, &pgErr):
		return pgErr.Message
	case errors.As(err, &dnsErr):
		return "no such host " + dnsErr.Name
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return "timed out"
	}
	return err.Error()
}
