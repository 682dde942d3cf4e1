package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/capture"
	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/schema"
)

// runInit prepares the node's database. It is idempotent: a second run
// changes nothing and says so.
func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, _, code := configFlags("init", args, stderr, nil)
	if cfg == nil {
		return code
	}
	conn, err := connect(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier init: %v\n", err)
		return exitFail
	}
	defer conn.Close(context.WithoutCancel(ctx))

	applied, err := schema.Migrate(ctx, conn)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier init: %v\n", err)
		return exitFail
	}
	if err := schema.Register(ctx, conn, cfg.Node, cfg.Role); err != nil {
		fmt.Fprintf(stderr, "pgcourier init: %v\n", err)
		return exitFail
	}
	if cfg.Role.Applies() {
		if err := schema.RecordPolicy(ctx, conn, cfg.Apply.Conflict); err != nil {
			fmt.Fprintf(stderr, "pgcourier init: %v\n", err)
			return exitFail
		}
	}
	if cfg.Capture != nil {
		if code := initCapture(ctx, conn, cfg, stdout, stderr); code != exitOK {
			return code
		}
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "%s: pgcourier schema already at version %d\n", cfg.Node, schema.Latest())
	}
	for _, m := range applied {
		fmt.Fprintf(stdout, "%s: applied migration %s\n", cfg.Node, m.Name)
	}
	fmt.Fprintf(stdout, "%s: ready as %s; run \"pgcourier doctor -c %s\" to check the database settings\n", cfg.Node, cfg.Role, cfg.File())
	return exitOK
}

// initCapture creates or updates the publication and the replication slot.
func initCapture(ctx context.Context, conn *pgx.Conn, cfg *config.Config, stdout, stderr io.Writer) int {
	res, err := capture.Setup(ctx, conn, capture.SetupOptions{
		Slot:        cfg.Capture.Slot,
		Publication: cfg.Capture.Publication,
		Tables:      pgcourier.TableFilter{Include: cfg.Capture.Tables, Exclude: cfg.Capture.Exclude},
	})
	for _, t := range res.Added {
		fmt.Fprintf(stdout, "%s: capturing %s\n", cfg.Node, t.Ident())
	}
	for _, t := range res.Removed {
		fmt.Fprintf(stdout, "%s: no longer capturing %s\n", cfg.Node, t)
	}
	for _, t := range res.Snapshots {
		fmt.Fprintf(stdout, "%s: the rows %s holds now will be copied when capture starts\n", cfg.Node, t.Ident())
	}
	if res.SlotCreated {
		fmt.Fprintf(stdout, "%s: created replication slot %s (epoch %d)\n", cfg.Node, cfg.Capture.Slot, res.Epoch)
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier init: %v\n", err)
		if errors.Is(err, capture.ErrNoIdentity) {
			fmt.Fprintf(stderr, "pgcourier init: the other %d tables are set up; run init again after the fix\n", len(res.Published))
		}
		return exitFail
	}
	fmt.Fprintf(stdout, "%s: %d tables captured through publication %s\n", cfg.Node, len(res.Published), cfg.Capture.Publication)
	return exitOK
}
