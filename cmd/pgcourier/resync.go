package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	pgcourier "github.com/pgcourier/pgcourier"
	"github.com/pgcourier/pgcourier/capture"
)

// runResync starts a new epoch of the node's stream after its replication
// slot was lost, with a fresh snapshot of every captured table.
func runResync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var force bool
	cfg, _, code := configFlags("resync", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&force, "force", false, "resync even though the slot can still be read (copies every captured row again)")
	})
	if cfg == nil {
		return code
	}
	if cfg.Capture == nil {
		fmt.Fprintf(stderr, "pgcourier resync: %s captures nothing (no [capture] in %s)\n", cfg.Node, cfg.File())
		return exitUsage
	}
	conn, err := connect(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier resync: %v\n", err)
		return exitFail
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := checkSchema(ctx, conn, cfg); err != nil {
		fmt.Fprintf(stderr, "pgcourier resync: %v\n", err)
		return exitFail
	}
	res, err := capture.Resync(ctx, conn, capture.SetupOptions{
		Slot:        cfg.Capture.Slot,
		Publication: cfg.Capture.Publication,
		Tables:      pgcourier.TableFilter{Include: cfg.Capture.Tables, Exclude: cfg.Capture.Exclude},
	}, force)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier resync: %v\n", err)
		return exitFail
	}
	fmt.Fprintf(stdout, "%s: new epoch %d on replication slot %s\n", cfg.Node, res.Epoch, cfg.Capture.Slot)
	for _, t := range res.Snapshots {
		fmt.Fprintf(stdout, "%s: every row of %s will be copied again when capture starts\n", cfg.Node, t.Ident())
	}
	fmt.Fprintf(stdout, "%s: the outbox keeps the old epoch's batches and ships them first; rows deleted while no slot was read are not deleted upstream\n", cfg.Node)
	fmt.Fprintf(stdout, "%s: start pgcourier again (pgcourier run -c %s)\n", cfg.Node, cfg.File())
	return exitOK
}
